"""The README's shell examples run as written: its walkthrough, in order, in a fresh shell against `parley serve`.

Every shell block in the README says what it is (```sh walkthrough, setup, server, container, dev); the
walkthrough blocks are run as one script against a live server on the embedded default, in a fresh
directory, with only `PARLEY=` pointed at the test's port. curl and httpie fail on any HTTP error here, so an
example that answers 4xx fails the test.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_cli import parley_serve

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
SHELL_BLOCK = re.compile(r"^```(?:sh|bash|shell)(?P<kind>[^\n]*)\n(?P<body>.*?)^```$", re.MULTILINE | re.DOTALL)
KINDS = {"walkthrough", "setup", "server", "container", "dev"}
PORT_LINE = re.compile(r"^PARLEY=http://127\.0\.0\.1:8000\b.*$", re.MULTILINE)
MARKER = "### README block "
# Any HTTP error fails the example (curl and httpie otherwise exit 0 on a 4xx). A terminal's stdin is a tty;
# this script's is not, and httpie would read it as the request body.
PREAMBLE = """
curl() { command curl --fail-with-body "$@"; }
http() { command http --check-status --ignore-stdin "$@"; }
"""


def shell_blocks() -> list[tuple[str, str]]:
    text = README.read_text(encoding="utf-8")
    return [(match["kind"].strip(), match["body"]) for match in SHELL_BLOCK.finditer(text)]


def test_every_shell_block_says_what_it_is() -> None:
    kinds = [kind for kind, _ in shell_blocks()]
    assert kinds, "the README has no shell examples"
    assert set(kinds) <= KINDS, f"unmarked or unknown shell blocks: {[k for k in kinds if k not in KINDS]}"
    assert kinds.count("walkthrough") >= 5


def test_examples_use_no_unset_variables_or_missing_tools() -> None:
    walkthrough = "\n".join(body for kind, body in shell_blocks() if kind == "walkthrough")
    assert "uuidgen" not in walkthrough
    used = set(re.findall(r"\$\{?([A-Z][A-Z_]*)", walkthrough))
    assigned = set(re.findall(r"(?:^|\s|export )([A-Z][A-Z_]*)=", walkthrough, re.MULTILINE))
    assert used <= assigned, f"used but never set: {sorted(used - assigned)}"
    assert len(PORT_LINE.findall(walkthrough)) == 1, "the port is set in one variable, once"


def _shell_env(cwd: Path) -> dict[str, str]:
    """A fresh shell's environment: the machine's python3 first (where the README installs uv), the project
    found from the test's own directory, no Parley or OpenAI settings."""
    venv_bin = str(Path(sys.executable).parent)
    path = [entry for entry in os.environ.get("PATH", "").split(os.pathsep) if entry != venv_bin]
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PARLEY_", "OPENAI_")) and k not in ("VIRTUAL_ENV", "PATH")
    }
    # httpie is a dev dependency: found in the project's environment, after everything else.
    env["PATH"] = os.pathsep.join([*path, venv_bin])
    env["UV_PROJECT"] = str(ROOT)
    env["HOME"] = os.environ.get("HOME", str(cwd))
    return env


def test_the_walkthrough_runs_as_written(tmp_path: Path) -> None:
    shell_env = _shell_env(tmp_path)
    probe = subprocess.run(["python3", "-m", "uv", "--version"], env=shell_env, capture_output=True, text=True)
    if probe.returncode != 0:
        if os.environ.get("CI") == "true":
            pytest.fail(f"python3 -m uv does not run outside the project's environment: {probe.stderr}")
        pytest.skip("python3 -m uv is not installed for the machine's python3 (python3 -m pip install uv)")
    assert shutil.which("curl", path=shell_env["PATH"]), "curl is needed"

    server_env = {k: v for k, v in shell_env.items() if k != "UV_PROJECT"}
    server_env["PARLEY_SIMULATOR_SPEED"] = "instant"  # the suite stays fast; the pace has tests of its own
    blocks = [body for kind, body in shell_blocks() if kind == "walkthrough"]
    with parley_serve(tmp_path, server_env) as served:
        script = PREAMBLE + "\n".join(
            f"printf '\\n{MARKER}{number}\\n'\n" + PORT_LINE.sub(f"PARLEY={served.base_url}", body)
            for number, body in enumerate(blocks, start=1)
        )
        result = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script],
            cwd=tmp_path,
            env=shell_env,
            capture_output=True,
            text=True,
            timeout=240,
        )
    outputs = dict(_split_by_block(result.stdout))
    failed_in = max(outputs, default=0)
    assert result.returncode == 0, (
        f"walkthrough block {failed_in} failed:\n{blocks[failed_in - 1] if failed_in else ''}\n"
        f"--- its output:\n{outputs.get(failed_in, '')[-3000:]}\n--- stderr:\n{result.stderr[-3000:]}"
    )
    assert len(outputs) == len(blocks)
    everything = result.stdout
    # The streamed answers ended as a user expects: completed, the tool turn too (after its tool output).
    assert everything.count("event: turn.completed") >= 3
    assert "event: turn.requires_action" not in everything  # the tool turn was answered with stream: false
    first, second = outputs[_block_using("Idempotency-Key", blocks)].split()
    assert first.startswith("turn_")
    assert first == second, "the same Idempotency-Key gave two turns"
    revoked = outputs[_block_using("/revoke", blocks)].replace(" ", "")
    assert '"revoked_at":"' in revoked, "the revoked key does not say when it was revoked"


def _block_using(text: str, blocks: list[str]) -> int:
    return next(number for number, body in enumerate(blocks, start=1) if text in body)


def _split_by_block(stdout: str) -> list[tuple[int, str]]:
    parts = re.split(rf"^{re.escape(MARKER)}(\d+)$", stdout, flags=re.MULTILINE)
    return [(int(parts[i]), parts[i + 1]) for i in range(1, len(parts) - 1, 2)]


def test_every_setting_is_in_the_configuration_table() -> None:
    from app.settings import Settings

    table = README.read_text(encoding="utf-8").split("## Configuration", 1)[1].split("\n## ", 1)[0]
    missing = []
    for name, field in Settings.model_fields.items():
        choices = getattr(field.validation_alias, "choices", None) or [f"PARLEY_{name.upper()}"]
        if not any(f"`{choice}`" in table for choice in choices):
            missing.append(choices[0])
    assert not missing, f"settings missing from the README's configuration table: {missing}"
