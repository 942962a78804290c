"""What the numbers were measured on: cores, memory, CPU model, kernel, versions of everything involved."""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

PACKAGES = (
    "parley",
    "openai",
    "httpx2",
    "fastapi",
    "starlette",
    "uvicorn",
    "uvloop",
    "httptools",
    "sse-starlette",
    "orjson",
    "sqlalchemy",
    "asyncpg",
    "pydantic",
)


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _run(argv: list[str], cwd: Path | None = None) -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        return subprocess.run(argv, capture_output=True, text=True, timeout=30, cwd=cwd, check=False).stdout.strip()
    return ""


def machine() -> dict[str, Any]:
    meminfo = {
        line.split(":")[0]: line.split(":")[1].strip() for line in _read("/proc/meminfo").splitlines() if ":" in line
    }
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in _read("/proc/cpuinfo").splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    mem_kib = int(meminfo.get("MemTotal", "0 kB").split()[0])
    return {
        "cores": os.cpu_count(),
        "usable_cores": sorted(os.sched_getaffinity(0)),
        "cpu_model": model,
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "os": _read("/etc/os-release").split('PRETTY_NAME="')[-1].split('"')[0] if _read("/etc/os-release") else "",
        "python": platform.python_version(),
    }


def versions(repo: Path) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for package in PACKAGES:
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = None
    found["git_commit"] = _run(["git", "rev-parse", "--short", "HEAD"], cwd=repo)
    found["git_dirty"] = bool(_run(["git", "status", "--porcelain", "--", "app"], cwd=repo))
    return found
