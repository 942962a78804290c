"""Subprocesses of the harness: start pinned to a set of cores, wait for health, read CPU time and RSS
from /proc, and stop (always, from `finally`)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# Added to the nice value of every process the harness starts (see `python -m bench --nice`).
PRIORITY = {"nice": 0}


def raise_priority() -> None:
    """Lower the nice value of the calling process by PRIORITY["nice"] (root only; ignored otherwise)."""
    if PRIORITY["nice"]:
        with contextlib.suppress(OSError):
            os.nice(PRIORITY["nice"])


def pin_to(cpus: set[int]) -> Callable[[], None]:
    def setup() -> None:
        os.sched_setaffinity(0, cpus)
        raise_priority()

    return setup


def replica_cores(cores: Sequence[int], driver: set[int], count: int) -> list[set[int]]:
    """A core for each of `count` replicas: the cores the driver (simulator, load generator) does not use,
    the last first, one replica each; where there are fewer of those than replicas, the rest go round all
    the cores from the last, so some replica shares a core (with another replica or with the driver)."""
    own = [core for core in sorted(cores) if core not in driver]
    if len(own) >= count:
        return [{own[-1 - index]} for index in range(count)]
    every = sorted(cores)
    return [{own[-1 - index]} if index < len(own) else {every[-1 - index % len(every)]} for index in range(count)]


def _pinned(cpus: set[int]) -> Callable[[], None]:
    def setup() -> None:
        # Its own process group (so the whole tree can be stopped), on its cores.
        os.setpgrp()
        os.sched_setaffinity(0, cpus)
        raise_priority()

    return setup


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: split after its closing parenthesis.
    return raw[raw.rfind(")") + 2 :].split()


def descendants(pid: int) -> list[int]:
    """pid and every process below it."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(entry))
    found, queue = [], [pid]
    while queue:
        current = queue.pop()
        found.append(current)
        queue.extend(children.get(current, []))
    return found


def cpu_seconds(pids: Sequence[int]) -> float:
    total = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLOCK_TICKS


def rss_kib(pids: Sequence[int]) -> int:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/statm") as handle:
                total += int(handle.read().split()[1]) * PAGE_KIB
        except OSError:
            continue
    return total


def socket_count(pids: Sequence[int]) -> int:
    """Open sockets of these processes (an open relayed stream holds two: the client's and the upstream's)."""
    count = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for entry in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{pid}/fd/{entry}").startswith("socket:"):
                        count += 1
    return count


def _busy_and_total(values: list[str]) -> tuple[int, int]:
    """(busy, total) clock ticks from one /proc/stat cpu line's numbers (iowait counts as idle)."""
    user, nice, system, idle, iowait, irq, softirq, steal = ([int(value) for value in values] + [0] * 8)[:8]
    busy = user + nice + system + irq + softirq + steal
    return busy, busy + idle + iowait


def machine_jiffies() -> tuple[int, int]:
    """(busy, total) clock ticks of all cores since boot, from /proc/stat."""
    return _busy_and_total(Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:])


def core_jiffies(cpus: set[int]) -> tuple[int, int]:
    """(busy, total) clock ticks of the cores in `cpus` since boot, from /proc/stat's per-core lines."""
    busy = total = 0
    for line in Path("/proc/stat").read_text().splitlines()[1:]:
        name, *values = line.split()
        if not name.startswith("cpu"):
            break
        if int(name[3:]) in cpus:
            core_busy, core_total = _busy_and_total(values)
            busy += core_busy
            total += core_total
    return busy, total


def busy_share(before: tuple[int, int], after: tuple[int, int]) -> float:
    """The share of the ticks between two `core_jiffies` readings that were busy."""
    total = after[1] - before[1]
    return (after[0] - before[0]) / total if total > 0 else 0.0


def busy_cores(before: tuple[int, int], after: tuple[int, int]) -> float:
    """Cores busy on average between two `machine_jiffies` readings."""
    return busy_share(before, after) * (os.cpu_count() or 1)


class ProcessGroupCpu:
    """CPU time of a changing set of processes (e.g. Postgres backends): processes that appear meanwhile
    count from zero; processes that exit meanwhile are lost (rare: the peers keep pooled connections)."""

    def __init__(self, command: str) -> None:
        self.command = command
        self.start = {pid: cpu_seconds([pid]) for pid in pids_named(command)}

    def elapsed(self) -> float:
        return sum(cpu_seconds([pid]) - self.start.get(pid, 0.0) for pid in pids_named(self.command))


def pids_named(command: str) -> list[int]:
    """Processes whose command name is `command` (read only, e.g. the Postgres server's, to report its CPU)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if Path(f"/proc/{entry}/comm").read_text().strip() == command:
                    found.append(int(entry))
    return found


@dataclass
class Server:
    name: str
    process: subprocess.Popen[bytes]
    port: int
    cpus: set[int]
    log_path: Path
    argv: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def tree(self) -> list[int]:
        return descendants(self.pid)

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.tree())

    def rss_kib(self) -> int:
        return rss_kib(self.tree())

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 20.0) -> None:
        if self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)
            self.process.wait(timeout=10)


def start(
    name: str,
    argv: list[str],
    *,
    port: int,
    cpus: set[int],
    log_dir: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Server:
    log_path = log_dir / f"{name}.log"
    log = log_path.open("ab")
    process = subprocess.Popen(
        argv,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
        cwd=cwd,
        preexec_fn=_pinned(cpus),
    )
    log.close()
    return Server(name=name, process=process, port=port, cpus=cpus, log_path=log_path, argv=argv)


def wait_healthy(server: Server, path: str, *, timeout: float = 60.0, headers: dict[str, str] | None = None) -> float:
    """Poll until `path` answers 200; returns the seconds it took. Raises with the log's tail if the process
    exits or the time runs out."""
    started = time.monotonic()
    deadline = started + timeout
    with httpx.Client(timeout=2.0) as client:
        while True:
            if not server.alive():
                raise RuntimeError(f"{server.name} exited with {server.process.returncode}:\n{server.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if client.get(server.base_url + path, headers=headers).status_code == 200:
                    return time.monotonic() - started
            if time.monotonic() > deadline:
                raise TimeoutError(f"{server.name} not healthy after {timeout:.0f} s:\n{server.log_tail()}")
            time.sleep(0.1)
