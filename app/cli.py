"""`parley serve | migrate | keys create | simulator`."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from app.observability.logging import configure_logging
from app.server.process import is_loopback, serve_parley, serve_simulator
from app.settings import Settings


def _serve(args: argparse.Namespace) -> int:
    serve_parley(args.host, args.port)
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
    # The control routes read every request and can break every session: open on loopback only. Bound to
    # an address others can reach, they take PARLEY_ADMIN_TOKEN, and without one the simulator won't start.
    if is_loopback(args.host):
        serve_simulator(args.host, args.port)
        return 0
    admin_token = Settings().admin_token
    if admin_token is None or not admin_token.get_secret_value():
        print(
            f"error: --host {args.host} is reachable from other machines; set PARLEY_ADMIN_TOKEN (the simulator's "
            "control routes then need it as a bearer token) or keep the default loopback address",
            file=sys.stderr,
        )
        return 2
    serve_simulator(args.host, args.port, control_token=admin_token.get_secret_value())
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
    simulator.add_argument(
        "--host",
        default="127.0.0.1",
        help="loopback by default; any other address needs PARLEY_ADMIN_TOKEN, which its control routes then require",
    )
    simulator.add_argument("--port", type=int, default=8001)
    simulator.set_defaults(handler=_simulator)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.handler(args)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
