"""The uvicorn server that runs Parley (and the standalone simulator), and what it does at a signal."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import ipaddress
import logging
import signal
import socket
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType

import uvicorn
from fastapi import FastAPI
from pydantic import SecretStr
from uvicorn.server import HANDLED_SIGNALS

from app.observability.logging import configure_logging
from app.server import local_admin_token
from app.settings import Settings

logger = logging.getLogger(__name__)

LOOPBACK_FOR_WILDCARD = {"0.0.0.0": "127.0.0.1", "::": "[::1]", "": "127.0.0.1"}  # noqa: S104
# The exit status of a server whose application did not start (uvicorn's own command uses 3 as well).
STARTUP_FAILURE = 3
# uvicorn waits this much longer than an event stream's shutdown grace before it cancels what is left.
UVICORN_SHUTDOWN_MARGIN_S = 10


class ParleyServer(uvicorn.Server):
    """uvicorn waits for open connections before it runs the lifespan's shutdown, and turn streams stay open
    until their turn ends: so the runner starts draining at the signal itself. A graceful shutdown exits 0."""

    def __init__(self, config: uvicorn.Config, app: FastAPI | None = None, ready_lines: Sequence[str] = ()) -> None:
        super().__init__(config)
        self.parley_app = app
        self.ready_lines = ready_lines
        self.draining: asyncio.Task[None] | None = None

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # uvicorn's own, without raising the signal again once the shutdown has finished gracefully.
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        original_handlers = {sig: signal.signal(sig, self.handle_exit) for sig in HANDLED_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in original_handlers.items():
                signal.signal(sig, handler)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            for line in self.ready_lines:
                logger.info("%s", line)
        # What the process loaded to start lives as long as it does: frozen, the cyclic garbage collector stops
        # walking it at every full collection.
        gc.freeze()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        state = getattr(self.parley_app.state, "parley", None) if self.parley_app is not None else None
        if state is not None and not self.should_exit:
            state.runner.begin_shutdown()
            loop = asyncio.get_event_loop()

            def start_draining() -> None:
                self.draining = loop.create_task(state.runner.drain(state.settings.shutdown_grace_s))

            # Signal handlers run between bytecodes; call_soon_threadsafe also wakes the loop.
            loop.call_soon_threadsafe(start_draining)
        super().handle_exit(sig, frame)


def serve_parley(host: str, port: int) -> int:
    """`parley serve`: Parley on `host:port`, with the simulator mounted when no OpenAI key is set. Returns the
    exit status: 0 after a graceful shutdown, STARTUP_FAILURE when it never started."""
    from app.main import SIMULATOR_MOUNT, create_app

    settings = Settings()
    if settings.uses_simulator and not settings.openai_base_url:
        # The simulator is mounted on this same server; Parley reaches it over loopback (while browsers reach
        # Parley at whatever address they used, so this is not the public base URL).
        loopback = LOOPBACK_FOR_WILDCARD.get(host, host)
        settings = settings.model_copy(update={"openai_base_url": f"http://{loopback}:{port}{SIMULATOR_MOUNT}/v1"})
    admin_token_file = _embedded_admin_token_file(settings)
    if admin_token_file is not None:
        token = local_admin_token.load_or_create(admin_token_file)
        settings = settings.model_copy(update={"admin_token": SecretStr(token)})
    configure_logging(settings)
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,
        proxy_headers=True,
        # Room for the runner's grace period, the terminal events and the final writes.
        timeout_graceful_shutdown=int(settings.shutdown_grace_s) + UVICORN_SHUTDOWN_MARGIN_S,
    )
    return _run(config, settings, app, ready_lines=_ready_lines(host, port, admin_token_file))


def _embedded_admin_token_file(settings: Settings) -> Path | None:
    """Where the embedded default keeps a generated admin token; None when one is configured, or off it."""
    if settings.admin_token is not None or not settings.uses_simulator:
        return None
    return local_admin_token.token_path(settings.database_url)


def _ready_lines(host: str, port: int, admin_token_file: Path | None) -> list[str]:
    """What a new user needs once the server is up: where to point a browser, and how to get a key."""
    base = f"http://{LOOPBACK_FOR_WILDCARD.get(host, host)}:{port}"
    lines = [
        f"parley.ready: the playground is at {base}/ and the API docs at {base}/docs",
        "parley.ready: make an API key with `python3 -m uv run parley keys create --user NAME`",
    ]
    if admin_token_file is not None:
        lines.append(
            f"parley.ready: the admin API's token is in {admin_token_file} "
            f"(export PARLEY_ADMIN_TOKEN=$(cat {admin_token_file}))"
        )
    return lines


def is_loopback(host: str) -> bool:
    """Whether only this machine can reach `host` (a name other than localhost counts as reachable)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def serve_simulator(host: str, port: int, *, control_token: str | None = None) -> None:
    """`parley simulator`: the offline OpenAI-compatible simulator alone; its control routes need
    `control_token` as a bearer token when one is given, and are open otherwise."""
    from app.simulator import SimulatorConfig, create_simulator_app

    settings = Settings()
    configure_logging(settings)
    app = create_simulator_app(
        prompts_path=settings.simulator_prompts_file,
        control_token=control_token,
        config=SimulatorConfig.at_speed(settings.simulator_speed or "instant"),
        state_database_url=settings.simulator_database_url,
    )
    _run(uvicorn.Config(app, host=host, port=port, log_config=None), settings, None)


def _run(config: uvicorn.Config, settings: Settings, app: FastAPI | None, *, ready_lines: Sequence[str] = ()) -> int:
    # Set here, not in create_app: only a serving process keeps the many objects of open streams (or, in the
    # simulator, stored responses) that every full collection walks; tests build many apps in one process.
    gc.set_threshold(*settings.gc_thresholds)
    server = ParleyServer(config, app, ready_lines)
    server.run()
    # Not started: uvicorn itself exits with STARTUP_FAILURE when the application's start fails; this covers a
    # uvicorn that returns instead.
    return 0 if server.started else STARTUP_FAILURE
