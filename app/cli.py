"""`parley serve | migrate | keys create | simulator`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import socket
import sys
from collections.abc import Iterator, Sequence
from types import FrameType
from typing import cast

import uvicorn
from fastapi import FastAPI

from app.batch_accept import accepts_one_per_iteration, take_over_listening
from app.observability.logging import configure_logging
from app.settings import Settings

LOOPBACK_FOR_WILDCARD = {"0.0.0.0": "127.0.0.1", "::": "[::1]", "": "127.0.0.1"}  # noqa: S104


class ParleyServer(uvicorn.Server):
    """uvicorn waits for open connections before it runs the lifespan's shutdown, and turn streams stay
    open until their turn ends: so the runner starts draining at the signal itself."""

    def __init__(self, config: uvicorn.Config, app: FastAPI) -> None:
        super().__init__(config)
        self._app = app
        self._drain: asyncio.Task[None] | None = None

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        with super().capture_signals():
            yield
            # The shutdown finished gracefully: exit 0 instead of uvicorn re-raising the signal at itself.
            self._captured_signals.clear()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        loop = asyncio.get_running_loop()
        if accepts_one_per_iteration(loop) and self.config.ssl is None and not self.should_exit:
            # A new connection is otherwise accepted one per loop iteration (see app/batch_accept.py).
            config = self.config

            def create_protocol() -> asyncio.Protocol:
                # What uvicorn's own `startup` hands the loop's server.
                return config.http_protocol_class(  # type: ignore[call-arg]
                    config=config, server_state=self.server_state, app_state=self.lifespan.state
                )

            acceptors = [
                acceptor
                for server in self.servers
                for acceptor in take_over_listening(loop, server, create_protocol, batch=config.backlog)
            ]
            # uvicorn types these as asyncio's servers; its shutdown asks `close` and `wait_closed` of them.
            self.servers = cast("list[asyncio.base_events.Server]", acceptors)
        # What the process loaded to start (modules, the app, price data, the SDK's resources) lives as long as
        # it does: frozen, the cyclic garbage collector stops walking it at every full collection (2-3.5% of the
        # CPU of a busy relay, measured with py-spy).
        gc.freeze()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        state = getattr(self._app.state, "parley", None)
        if state is not None and not self.should_exit:
            state.runner.begin_shutdown()
            loop = asyncio.get_event_loop()

            def start_draining() -> None:
                self._drain = loop.create_task(state.runner.drain(state.settings.shutdown_grace_s))

            # Signal handlers run between bytecodes; call_soon_threadsafe also wakes the loop.
            loop.call_soon_threadsafe(start_draining)
        super().handle_exit(sig, frame)


def _serve(args: argparse.Namespace) -> int:
    from app.main import SIMULATOR_MOUNT, create_app

    settings = Settings()
    if settings.uses_simulator and not settings.openai_base_url:
        # The simulator is mounted on this same server; Parley reaches it over loopback (while browsers reach
        # Parley at whatever address they used, so this is not the public base URL).
        host = LOOPBACK_FOR_WILDCARD.get(args.host, args.host)
        settings = settings.model_copy(update={"openai_base_url": f"http://{host}:{args.port}{SIMULATOR_MOUNT}/v1"})
    configure_logging(settings)
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_config=None,
        proxy_headers=True,
        # Room for the runner's grace period, the terminal events and the final writes.
        timeout_graceful_shutdown=int(settings.shutdown_grace_s + 5),
    )
    # Set here, not in create_app: only a serving process has the streams whose objects a full collection walks
    # (tests build many apps in one process).
    gc.set_threshold(*settings.gc_thresholds)
    ParleyServer(config, app).run()
    return 0


def _migrate(_: argparse.Namespace) -> int:
    from app.db.engine import build_engine
    from app.db.migrate import current_revision, upgrade

    settings = Settings()
    configure_logging(settings)

    async def run() -> str | None:
        engine = build_engine(settings.database_url)
        try:
            await upgrade(engine, directory=settings.migrations_dir)
            return await current_revision(engine)
        finally:
            await engine.dispose()

    revision = asyncio.run(run())
    print(f"database migrated to {revision}")
    return 0


def _keys_create(args: argparse.Namespace) -> int:
    from app.db.engine import build_engine, build_sessionmaker
    from app.db.migrate import upgrade
    from app.services.api_keys import issue_key_for_name

    settings = Settings()

    async def run() -> tuple[str, str, str]:
        engine = build_engine(settings.database_url)
        try:
            if settings.is_sqlite:
                await upgrade(engine, directory=settings.migrations_dir)
            async with build_sessionmaker(engine)() as db, db.begin():
                issued = await issue_key_for_name(db, user_name=args.user, key_name=args.name)
                return issued.user.id, issued.record.id, issued.secret
        finally:
            await engine.dispose()

    if not args.user.strip() or "\x00" in args.user or len(args.user) > 255:
        print("error: --user must be a non-empty name of at most 255 characters", file=sys.stderr)
        return 2
    user_id, key_id, secret = asyncio.run(run())
    print(f"Created API key {key_id} for user '{args.user}' ({user_id}). It is shown only once:")
    print(secret)
    return 0


def _simulator(args: argparse.Namespace) -> int:
    from app.simulator import create_simulator_app

    settings = Settings()
    configure_logging(settings)
    app = create_simulator_app(prompts_path=settings.simulator_prompts_file)
    config = uvicorn.Config(app, host=args.host, port=args.port, log_config=None)
    # As `parley serve` does: the simulator keeps every stored response and conversation, and each full
    # collection walks them all (112 ms after 6,000 stored 300-token responses, measured), stalling every
    # stream it is sending; with these thresholds full collections are rarer, and what it loaded to start is
    # frozen out of them.
    gc.set_threshold(*settings.gc_thresholds)
    ParleyServer(config, app).run()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="parley", description="A stateful chat backend for the OpenAI Responses API.")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the HTTP server")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.set_defaults(handler=_serve)

    migrate = commands.add_parser("migrate", help="upgrade the database to the latest schema")
    migrate.set_defaults(handler=_migrate)

    keys = commands.add_parser("keys", help="manage API keys")
    keys_commands = keys.add_subparsers(dest="keys_command", required=True)
    create = keys_commands.add_parser("create", help="create an API key (and the user, if new)")
    create.add_argument("--user", required=True, help="the user's name")
    create.add_argument("--name", default=None, help="a label for the key")
    create.set_defaults(handler=_keys_create)

    simulator = commands.add_parser("simulator", help="run the offline OpenAI-compatible simulator alone")
    simulator.add_argument("--host", default="127.0.0.1")
    simulator.add_argument("--port", type=int, default=8001)
    simulator.set_defaults(handler=_simulator)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.handler(args)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
