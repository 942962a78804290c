"""Sampling profiles of the server under test with py-spy, summarised: where its CPU time goes.

py-spy's raw output is one line per distinct stack, `frame;frame;…;leaf COUNT`, each frame
`function (path:line)`. Only samples of threads that were running are recorded (no `--idle`), so the
shares below are shares of the CPU time the process used.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

from bench.procs import PRIORITY

FRAME = re.compile(r"^(?P<function>.*?) \((?P<path>[^()]*?)(?::(?P<line>\d+))?\)$")

# Layers of the relay, matched against a frame's path (first match wins), innermost frame first. Parley's
# modules are named by path, old and new names both (app/ is being reorganised); a module not named here
# counts as Parley's per-turn code. Matching names only, this never imports or patches anything of app/.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    (
        "upstream SSE split (app/upstream/sse.py, event_parser.py)",
        ("app/upstream/sse.py", "app/upstream/event_parser.py"),
    ),
    ("turn state observe (app/streaming/turn_state.py)", ("app/streaming/turn_state.py",)),
    (
        "turn runner pump (app/streaming/runner.py, turn_runner.py)",
        ("app/streaming/runner.py", "app/streaming/turn_runner.py"),
    ),
    ("event log and frame encoding (app/streaming/event_log.py, sse.py)", ("app/streaming/",)),
    (
        "outgoing SSE response (sse-starlette; before it app/api/sse_response.py)",
        ("sse_starlette/", "app/api/sse_response.py"),
    ),
    ("anyio (cancel scopes, task groups)", ("anyio/",)),
    ("upstream HTTP client (aiohttp, httpx2, httpcore, h11)", ("aiohttp/", "httpx2/", "httpx/", "httpcore", "h11/")),
    ("openai SDK", ("openai/",)),
    ("HTTP server (uvicorn, httptools)", ("uvicorn/", "httptools")),
    ("database (SQLAlchemy, asyncpg, repositories)", ("sqlalchemy/", "asyncpg/", "app/repositories/", "app/db/")),
    ("Parley per-turn code (services, API, observability)", ("app/",)),
    ("framework (Starlette, FastAPI, pydantic)", ("starlette/", "fastapi/", "pydantic")),
    ("logging", ("logging/", "pythonjsonlogger")),
    ("asyncio event loop", ("asyncio/", "uvloop")),
]


# What the process was doing, by the innermost of these functions on the stack (per turn vs per event).
PHASES: list[tuple[str, tuple[str, ...]]] = [
    ("logging", ("Logger.handle", "Handler.handle", "Logger._log")),
    ("authenticate (API key lookup)", ("Authenticator.authenticate",)),
    ("start the turn (one transaction)", ("start_turn",)),
    ("open the upstream stream", ("open_stream",)),
    ("store the response ids (side transaction, group commit)", ("SqlTurnStore._write_response_ids",)),
    ("final write: turn, message, ledger, spend", ("SqlTurnStore.finish", "SqlTurnStore.apply")),
    ("relay: read upstream, split, log, observe", ("TurnRunner._pump",)),
    ("SSE response to the client", ("EventSourceResponse", "EventStreamResponse", "IteratorFrames")),
    ("background loops (heartbeat, cancels, sweep)", ("TurnRunner._every",)),
    ("rest of the request: routing, middleware, validation", ("RequestResponseCycle.run_asgi",)),
    ("HTTP server I/O (uvicorn protocol callbacks)", ("HttpToolsProtocol", "H11Protocol")),
]
# Only when none of the above is on the stack: SQLAlchemy's async layer runs queries in greenlets, whose
# stacks py-spy shows without the coroutine that called them.
FALLBACK_PHASES: list[tuple[str, tuple[str, ...]]] = [
    ("SQLAlchemy/asyncpg in a greenlet (caller not visible)", ("Session.", "greenlet_spawn", "PreparedStatement.")),
]


def phase_of(functions: list[str]) -> str:
    if not functions or not functions[-1]:
        return "no Python frame (native code, GC)"
    if functions[-1] in ("Runner.run", "asyncio_run", "run_until_complete"):
        return "event loop and socket I/O in C (uvloop), callbacks without Python frames"
    if any(function in ("WorkerThread.run", "_worker") for function in functions):
        return "worker threads (sync FastAPI dependencies via anyio, getaddrinfo)"
    for table in (PHASES, FALLBACK_PHASES):
        for function in reversed(functions):
            for name, markers in table:
                if any(function.startswith(marker) for marker in markers):
                    return name
    return "other (event loop, threads)"


def record(pid: int, output: Path, duration_s: float, rate: int = 200, cpus: set[int] | None = None) -> Any:
    """Start py-spy against `pid` (non-blocking: it does not pause the target); returns the process."""
    argv = [
        str(Path(__file__).resolve().parent.parent / ".venv" / "bin" / "py-spy"),
        "record",
        "--pid",
        str(pid),
        "--rate",
        str(rate),
        "--duration",
        str(max(int(duration_s), 1)),
        "--format",
        "raw",
        "--output",
        str(output),
        "--nonblocking",
        "--threads",
    ]

    def pin() -> None:
        if cpus:
            os.sched_setaffinity(0, cpus)
        if PRIORITY["nice"]:
            with contextlib.suppress(OSError):
                os.nice(PRIORITY["nice"])

    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=pin)


def parse_frame(frame: str) -> tuple[str, str]:
    """(function, path) of one `function (path:line)` frame."""
    match = FRAME.match(frame.strip())
    if match is None:
        return frame.strip(), ""
    return match.group("function"), match.group("path")


def short_path(path: str) -> str:
    for marker in ("site-packages/", "/work/main/", "lib/python3.11/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


def layer_of(path: str) -> str | None:
    for name, needles in LAYERS:
        if any(needle in path for needle in needles):
            return name
    return None


def summarize(raw: str, top: int = 25) -> dict[str, Any]:
    """Self time by function, inclusive time by function, and self time by layer of the relay."""
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    layers: Counter[str] = Counter()
    phases: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        raw_frames = stack.split(";")
        if raw_frames and raw_frames[0].startswith("thread ("):
            threads[raw_frames[0].split(": ", 1)[-1]] += count
            raw_frames = raw_frames[1:]
        frames = [parse_frame(frame) for frame in raw_frames]
        phases[phase_of([function for function, _ in frames])] += count
        if not frames:
            self_time["(no Python frame)"] += count
            continue
        labels = [f"{function} ({short_path(path)})" for function, path in frames]
        self_time[labels[-1]] += count
        for label in set(labels):
            inclusive[label] += count
        layer = None
        for _, path in reversed(frames):
            layer = layer_of(path)
            if layer is not None:
                break
        layers[layer or "other"] += count

    def shares(counter: Counter[str], limit: int) -> list[dict[str, Any]]:
        return [
            {"name": name, "samples": count, "share": count / total if total else 0.0}
            for name, count in counter.most_common(limit)
        ]

    return {
        "samples": total,
        "self": shares(self_time, top),
        "inclusive": shares(inclusive, top),
        "layers": shares(layers, len(LAYERS) + 1),
        "phases": shares(phases, len(PHASES) + len(FALLBACK_PHASES) + 1),
        "threads": shares(threads, 10),
    }


def summarize_file(path: Path, top: int = 25) -> dict[str, Any]:
    return summarize(path.read_text(errors="replace"), top)
