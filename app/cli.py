"""`parley serve | migrate | keys create | keys list | keys revoke | simulator`, and `parley --version`.

A problem the user can fix (a database that cannot be reached or is not migrated, a directory that cannot be
written, an unknown user or key, a bad setting) ends the command with one line on stderr and exit status 1,
not a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from pydantic import ValidationError
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from app.errors import ParleyError
from app.observability.logging import configure_logging
from app.server import preflight
from app.server.process import is_loopback, serve_parley, serve_simulator
from app.settings import Settings
from app.tools.registry import ToolConfigError, check_prompt_tools, load_tools
from app.version import package_version

T = TypeVar("T")


class CommandFailed(Exception):
    """Ends the command: its message, alone on a line of stderr, and exit status 1."""


def _settings() -> Settings:
    try:
        return Settings()
    except ValidationError as error:
        problems = "; ".join(
            f"{_variable(e['loc'][0])}: {e['msg'].removeprefix('Value error, ')}"
            if e["loc"]
            else e["msg"].removeprefix("Value error, ")
            for e in error.errors()
        )
        raise CommandFailed(f"invalid configuration: {problems}") from error


def _variable(field: int | str) -> str:
    """The environment variable of a setting (an alias such as OPENAI_API_KEY is one already)."""
    name = str(field)
    return name if name.isupper() else f"PARLEY_{name.upper()}"


def _sentence(message: str) -> str:
    """A service's message ("No API key with id …") as the rest of "error: …"."""
    return message[:1].lower() + message[1:]


def _on_database(settings: Settings, work: Callable[[AsyncEngine], Awaitable[T]], *, migrate_sqlite: bool = True) -> T:
    """Runs `work` against the configured database (SQLite migrated first, as `parley serve` does), and turns
    what a user can fix into CommandFailed."""
    from app.db.engine import build_engine
    from app.db.migrate import NOT_MIGRATED, schema_missing, upgrade

    problem = preflight.database_problem(settings)
    if problem is not None:
        raise CommandFailed(problem)

    async def run() -> T:
        engine = build_engine(settings.database_url)
        try:
            if settings.is_sqlite and migrate_sqlite:
                await upgrade(engine, directory=settings.migrations_dir)
            return await work(engine)
        finally:
            await engine.dispose()

    database = make_url(settings.database_url).render_as_string(hide_password=True)
    try:
        return asyncio.run(run())
    except ParleyError as error:
        raise CommandFailed(_sentence(error.message)) from error
    except Exception as error:
        if schema_missing(error):
            raise CommandFailed(_sentence(NOT_MIGRATED)) from error
        if isinstance(error, OSError | TimeoutError | DBAPIError):
            reason = error.orig if isinstance(error, DBAPIError) else error
            words = str(reason).strip().splitlines()[0] if str(reason).strip() else type(reason).__name__
            raise CommandFailed(
                f"cannot use the database {database}: {words} (check PARLEY_DATABASE_URL, and that the database "
                "server is running)"
            ) from error
        raise


def _serve(args: argparse.Namespace) -> int:
    settings = _settings()
    for problem in (preflight.database_problem(settings), preflight.spool_problem(settings)):
        if problem is not None:
            raise CommandFailed(problem)
    try:
        check_prompt_tools(settings.prompt_tools, load_tools(settings.tools))
    except ToolConfigError as error:
        raise CommandFailed(str(error)) from error
    return serve_parley(args.host, args.port)


def _migrate(_: argparse.Namespace) -> int:
    from app.db.migrate import current_revision, upgrade

    settings = _settings()
    configure_logging(settings)

    async def run(engine: AsyncEngine) -> str | None:
        await upgrade(engine, directory=settings.migrations_dir)
        return await current_revision(engine)

    revision = _on_database(settings, run, migrate_sqlite=False)
    print(f"database migrated to {revision}")
    return 0


def _keys_create(args: argparse.Namespace) -> int:
    from app.db.engine import build_sessionmaker
    from app.services.api_keys import issue_key_for_name

    if not args.user.strip() or "\x00" in args.user or len(args.user) > 255:
        print("error: --user must be a non-empty name of at most 255 characters", file=sys.stderr)
        return 2

    async def run(engine: AsyncEngine) -> tuple[str, str, str]:
        async with build_sessionmaker(engine)() as db, db.begin():
            issued = await issue_key_for_name(db, user_name=args.user, key_name=args.name)
            return issued.user.id, issued.record.id, issued.secret

    user_id, key_id, secret = _on_database(_settings(), run)
    print(f"Created API key {key_id} for user '{args.user}' ({user_id}). It is shown only once:")
    print(secret)
    return 0


def _one_line(text: str | None) -> str:
    return " ".join(text.split()) if text else "-"


def _keys_list(args: argparse.Namespace) -> int:
    from app.db.engine import build_sessionmaker
    from app.services.users import keys_of_user_named

    async def run(engine: AsyncEngine) -> list[list[str]]:
        async with build_sessionmaker(engine)() as db, db.begin():
            _, keys = await keys_of_user_named(db, name=args.user)
            return [
                [
                    key.id,
                    _one_line(key.name),
                    key.prefix + "…",
                    key.created_at.isoformat(timespec="seconds"),
                    key.revoked_at.isoformat(timespec="seconds") if key.revoked_at else "no",
                ]
                for key in keys
            ]

    rows = _on_database(_settings(), run)
    if not rows:
        print(f"User '{args.user}' has no API keys.")
        return 0
    # Never the key itself, nor its hash: the first characters only, to tell keys apart.
    table = [["KEY ID", "NAME", "STARTS WITH", "CREATED", "REVOKED"], *rows]
    widths = [max(len(row[column]) for row in table) for column in range(len(table[0]))]
    for row in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    return 0


def _keys_revoke(args: argparse.Namespace) -> int:
    from app.db.base import utcnow
    from app.db.engine import build_sessionmaker
    from app.services.users import revoke_key

    async def run(engine: AsyncEngine) -> tuple[str, str, bool]:
        before = utcnow()
        # The admin API's revoke: on Postgres every server hears of it as it commits (NOTIFY); a SQLite server
        # reads it within a second or two. Either way requests with the key answer 401 and its streams end.
        async with build_sessionmaker(engine)() as db, db.begin():
            key = await revoke_key(db, authenticator=None, key_id=args.key_id)
            revoked_at = key.revoked_at or before
            return key.user_id, revoked_at.isoformat(timespec="seconds"), revoked_at < before

    user_id, revoked_at, already = _on_database(_settings(), run)
    if already:
        print(f"API key {args.key_id} (user {user_id}) was already revoked at {revoked_at}.")
    else:
        print(f"Revoked API key {args.key_id} (user {user_id}): requests with it now answer 401.")
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


class _Parser(argparse.ArgumentParser):
    """Every subcommand's parser: its epilog (the settings it reads) printed as written."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]


def _environment(*names: str, note: str = "") -> str:
    """An epilog: the settings a command reads, with their defaults (from Settings itself)."""
    lines = ["environment (also read from a .env file in the working directory):"]
    for name in names:
        field = Settings.model_fields.get(name)
        variable = name.upper() if name.startswith("openai_") else f"PARLEY_{name.upper()}"
        default = field.default if field is not None else None
        shown = "unset" if default is None or default == [] else str(default)
        lines.append(f"  {variable:<30} (default: {shown})")
    if note:
        lines.append(note)
    return "\n".join(lines)


SERVE_NOTE = """
With no OPENAI_API_KEY, Parley runs on the embedded default: the SQLite file above (migrated at start) and
the built-in simulator as the upstream. A Postgres database is migrated with `parley migrate`.
Without PARLEY_ADMIN_TOKEN the admin API (/v1/admin) is off (on the embedded default, `parley serve`
makes a token and says where it keeps it).
Every setting is listed in the README."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="parley", description="A stateful chat backend for the OpenAI Responses API.")
    parser.add_argument("--version", action="version", version=f"parley {package_version()}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    database = ("database_url",)
    serve = commands.add_parser(
        "serve",
        help="run the HTTP server",
        description="Run Parley's HTTP API (and, on the embedded default, the simulator at /simulator).",
        epilog=_environment(
            "database_url",
            "openai_api_key",
            "openai_base_url",
            "admin_token",
            "spool_dir",
            "default_prompt_id",
            "default_model",
            "log_level",
            "log_format",
            note=SERVE_NOTE,
        ),
    )
    serve.add_argument("--host", default="127.0.0.1", help="the address to listen on (default: %(default)s)")
    serve.add_argument("--port", type=int, default=8000, help="the port to listen on (default: %(default)s)")
    serve.set_defaults(handler=_serve)

    migrate = commands.add_parser(
        "migrate",
        help="upgrade the database to the latest schema",
        description="Upgrade the database to the latest schema (a SQLite database also upgrades itself at start).",
        epilog=_environment(*database, "migrations_dir"),
    )
    migrate.set_defaults(handler=_migrate)

    keys = commands.add_parser(
        "keys", help="manage API keys", description="Create, list and revoke API keys.", epilog=_environment(*database)
    )
    keys_commands = keys.add_subparsers(dest="keys_command", required=True, parser_class=_Parser)
    create = keys_commands.add_parser(
        "create",
        help="create an API key (and the user, if new)",
        description="Create an API key (and the user, if new). The key is printed alone on the last line.",
        epilog=_environment(*database),
    )
    create.add_argument("--user", required=True, help="the user's name")
    create.add_argument("--name", default=None, help="a label for the key (default: none)")
    create.set_defaults(handler=_keys_create)
    listing = keys_commands.add_parser(
        "list",
        help="list a user's API keys",
        description="List a user's API keys, revoked ones too: id, label, first characters, created, revoked.",
        epilog=_environment(*database),
    )
    listing.add_argument("--user", required=True, help="the user's name")
    listing.set_defaults(handler=_keys_list)
    revoke = keys_commands.add_parser(
        "revoke",
        help="revoke an API key",
        description="Revoke an API key, as the admin API does: requests with it answer 401 from then on,\n"
        "and the streams it opened end, on every running server.",
        epilog=_environment(*database),
    )
    revoke.add_argument("key_id", metavar="KEY_ID", help="the key's id (key_…), as `parley keys list` shows it")
    revoke.set_defaults(handler=_keys_revoke)

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
    try:
        code: int = args.handler(args)
    except CommandFailed as failure:
        print(f"error: {failure}", file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":
    raise SystemExit(main())
