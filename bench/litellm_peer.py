"""LiteLLM's proxy as a peer: its own virtual environment (never Parley's), created on first use with
`python3 -m venv` and `pip install 'litellm[proxy]'`, pointed at the simulator's /v1/responses.

LiteLLM logs spend to Postgres only through Prisma, whose CLI downloads its query engine at run time; the
harness tries that (bounded) and reports why it ran without a database when it cannot.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
DEFAULT_VENV = BENCH_DIR / ".venv-litellm"
MASTER_KEY = "sk-parley-bench-" + "0" * 32
MODEL = "gpt-4.1-mini"


@dataclass
class Install:
    ok: bool
    venv: Path
    version: str | None
    seconds: float
    note: str


def _pip_log(log_dir: Path) -> Path:
    return log_dir / "litellm-install.log"


def ensure_venv(log_dir: Path, venv: Path = DEFAULT_VENV, timeout: float = 900.0) -> Install:
    """The venv with LiteLLM's proxy; created (and LiteLLM installed) when missing."""
    started = time.monotonic()
    executable = venv / "bin" / "litellm"
    python = venv / "bin" / "python"
    note = "reused the existing virtual environment"
    if not executable.exists():
        python3 = shutil.which("python3")
        if python3 is None:
            return Install(False, venv, None, 0.0, "no python3 on PATH to create LiteLLM's virtual environment")
        with _pip_log(log_dir).open("ab") as log:
            try:
                subprocess.run([python3, "-m", "venv", str(venv)], check=True, stdout=log, stderr=log, timeout=120)
                subprocess.run(
                    [str(python), "-m", "pip", "install", "--disable-pip-version-check", "litellm[proxy]"],
                    check=True,
                    stdout=log,
                    stderr=log,
                    timeout=timeout,
                )
            except (subprocess.SubprocessError, OSError) as error:
                return Install(
                    False,
                    venv,
                    None,
                    time.monotonic() - started,
                    f"pip install 'litellm[proxy]' failed ({type(error).__name__}); see {_pip_log(log_dir).name}",
                )
        note = "created the virtual environment and installed litellm[proxy]"
    version = subprocess.run(
        [str(python), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    ).stdout.strip()
    if not version:
        return Install(False, venv, None, time.monotonic() - started, "litellm is not importable in its venv")
    return Install(True, venv, version, time.monotonic() - started, note)


def probe_prisma(venv: Path, log_dir: Path, timeout: float = 120.0) -> tuple[bool, str]:
    """Can LiteLLM reach Postgres here? It needs the `prisma` package and Prisma's engines."""
    python = venv / "bin" / "python"
    prisma = venv / "bin" / "prisma"
    with (log_dir / "litellm-prisma.log").open("ab") as log:
        try:
            if not prisma.exists():
                subprocess.run(
                    [str(python), "-m", "pip", "install", "--disable-pip-version-check", "prisma"],
                    check=True,
                    stdout=log,
                    stderr=log,
                    timeout=600,
                )
            result = subprocess.run(
                [str(prisma), "--version"], capture_output=True, text=True, timeout=timeout, check=False
            )
        except (subprocess.SubprocessError, OSError) as error:
            return False, f"installing or running Prisma failed ({type(error).__name__})"
        log.write((result.stdout + result.stderr).encode())
    if result.returncode != 0:
        lines = [line for line in (result.stdout + result.stderr).splitlines() if "rror" in line]
        reason = lines[-1].strip() if lines else f"prisma --version exited {result.returncode}"
        return False, f"Prisma could not fetch its query engine (no network beyond package registries): {reason[:200]}"
    return True, "Prisma works"


def write_config(path: Path, simulator_url: str, database_url: str | None) -> None:
    lines = [
        "model_list:",
        f"  - model_name: {MODEL}",
        "    litellm_params:",
        f"      model: openai/{MODEL}",
        f"      api_base: {simulator_url}/v1",
        "      api_key: sk-bench-litellm",
        "litellm_settings:",
        "  telemetry: false",
        "general_settings:",
        f"  master_key: {MASTER_KEY}",
    ]
    if database_url:
        lines.append(f"  database_url: {database_url}")
    path.write_text("\n".join(lines) + "\n")


def environment() -> dict[str, str]:
    return {
        # The cost map is bundled; without this LiteLLM first tries to download it (no network here).
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "LITELLM_TELEMETRY": "False",
        "LITELLM_LOG": "ERROR",
        "PATH": os.environ.get("PATH", ""),
    }
