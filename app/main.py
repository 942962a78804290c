"""The application factory."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware
from starlette.routing import Mount
from starlette.types import ASGIApp

from app.api.error_handlers import install_error_handlers
from app.api.routes import (
    admin,
    api_docs,
    client_config,
    export,
    files,
    health,
    metrics,
    search,
    sessions,
    turns,
    usage,
    web,
)
from app.db.engine import build_engine, build_sessionmaker
from app.db.migrate import SchemaWatch, head_revision, upgrade
from app.observability.loop_lag import LoopLagWatch
from app.observability.metrics import Metrics
from app.observability.request_id import RequestIdMiddleware
from app.server.middleware import RequestGuardMiddleware, SecurityHeadersMiddleware
from app.services.auth import Authenticator
from app.services.pricing import Pricer
from app.services.replicas import UnsharedLogWatch
from app.services.reservations import RoundCosts
from app.services.revocations import RevocationListener, RevocationPoller
from app.services.server_tools import ServerTools
from app.services.spool import Spool
from app.services.stream_tokens import StreamTokens
from app.services.titles import TitleMaker
from app.services.turn_service import TurnService
from app.services.turn_store import SqlTurnStore
from app.settings import Settings
from app.state import AppState
from app.streaming.event_log import EventLogRegistry
from app.streaming.redis_log import RedisEventLogs, connect
from app.streaming.turn_runner import RunnerConfig, TurnRunner
from app.tools.registry import check_prompt_tools, load_tools
from app.upstream.client import build_openai_client
from app.upstream.response_stream import StreamPolicy
from app.version import package_version

logger = logging.getLogger(__name__)

SIMULATOR_MOUNT = "/simulator"
API_DESCRIPTION = """
Sessions map 1:1 to OpenAI Conversations; each message goes upstream through `responses.create` with the
session's dashboard prompt and streams back as Server-Sent Events.

**Auth.** Every `/v1` route takes `Authorization: Bearer <credential>`: a Parley API key (`pk_…`) or a JWT
from the deployment's identity provider. `/v1/admin/…` takes the admin token. Another user's objects answer
404, like ids that do not exist.

**Errors.** Every error body is `{"error": {"type", "code", "message", "param"}}`.

**Streams.** `POST /v1/sessions/{id}/messages` and `GET …/turns/{turn_id}/events` answer `text/event-stream`:
`turn.created`, every upstream Responses event verbatim (event name = its `type`), then one terminal
`turn.completed` | `turn.incomplete` | `turn.failed` | `turn.cancelled` | `turn.requires_action`. Ids count
from 1 per turn; resume with `Last-Event-ID`. `: ping` comments keep the connection alive.

**Money** is a decimal string in USD; unknown cost is `null`, never `"0"`.
"""
DEFAULT_LOCAL_BASE_URL = "http://127.0.0.1:8000"


def upstream_base_url(settings: Settings) -> str:
    """The OpenAI base URL: configured, api.openai.com, or the simulator mounted on this server."""
    if settings.openai_base_url:
        return settings.openai_base_url.rstrip("/")
    if settings.uses_simulator:
        local = (settings.public_base_url or DEFAULT_LOCAL_BASE_URL).rstrip("/")
        return f"{local}{SIMULATOR_MOUNT}/v1"
    return "https://api.openai.com/v1"


def server_tools(settings: Settings) -> ServerTools:
    """Parley's own tools, loaded (and checked) at startup: a bad PARLEY_TOOLS entry stops the server here."""
    loaded = load_tools(settings.tools)
    check_prompt_tools(settings.prompt_tools, loaded)
    return ServerTools(loaded, timeout_s=settings.tool_timeout_s, prompt_tools=settings.prompt_tools)


def runner_config(settings: Settings) -> RunnerConfig:
    return RunnerConfig(
        stream_policy=StreamPolicy(
            read_timeout_s=settings.upstream_stall_timeout_s,
            connect_timeout_s=settings.upstream_connect_timeout_s,
            max_attempts=settings.upstream_max_attempts,
            max_retry_wait_s=settings.upstream_max_retry_wait_s,
        ),
        lease_s=settings.turn_lease_s,
        cancel_poll_interval_s=settings.runner_cancel_poll_interval_s,
        recovery_timeout_s=settings.upstream_recovery_timeout_s,
        max_tool_steps=settings.max_tool_rounds,
    )


class ParleyAPI(FastAPI):
    """FastAPI with the request id outside everything, Starlette's ServerErrorMiddleware included (which
    `add_middleware` cannot reach): so an unhandled error's 500 carries X-Request-ID and its log line the id."""

    def build_middleware_stack(self) -> ASGIApp:
        return RequestIdMiddleware(super().build_middleware_stack(), exclude_prefixes=(SIMULATOR_MOUNT,))


def embedded_simulator(settings: Settings) -> FastAPI:
    """The simulator mounted on Parley when no OpenAI key is set: at a model's pace unless told otherwise, and
    with its state in Parley's own database, so that sessions go on after a restart."""
    from app.simulator import SimulatorConfig, create_simulator_app

    # Its control routes read every user's messages and can break every session: the admin's only, and
    # not there at all without an admin token.
    admin_token = (settings.admin_token.get_secret_value() if settings.admin_token is not None else "") or None
    return create_simulator_app(
        prompts_path=settings.simulator_prompts_file,
        control_routes=admin_token is not None,
        control_token=admin_token,
        config=SimulatorConfig.at_speed(settings.simulator_speed or "model"),
        state_database_url=settings.simulator_database_url or settings.database_url,
    )


def create_app(settings: Settings) -> FastAPI:
    base_url = upstream_base_url(settings)
    simulator = embedded_simulator(settings) if settings.uses_simulator else None
    tools = server_tools(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = build_engine(
            settings.database_url,
            pool_size=settings.database_pool_size,
            pool_timeout=settings.database_pool_timeout_s,
        )
        if settings.is_sqlite:
            # The embedded database migrates itself; Postgres deployments run `parley migrate`.
            await upgrade(engine, directory=settings.migrations_dir)
        head = head_revision(settings.migrations_dir)
        schema = SchemaWatch(engine, head)
        if not settings.is_sqlite:
            # Postgres is migrated by `parley migrate`, not here: say so once if it has not been.
            await schema.check()
        sessionmaker = build_sessionmaker(engine)
        upstream = build_openai_client(settings, base_url=base_url)
        spool = Spool(settings.spool_dir)
        pricer = Pricer(settings.pricing_file)
        pricer.warm()
        costs = RoundCosts(settings, pricer)
        app_metrics = Metrics(spool_depth=lambda: spool.depth, event_log_usage=lambda: (logs.bytes_held, logs.evicted))
        shared_logs = (
            RedisEventLogs(connect(settings.redis_url), metrics=app_metrics, resume_window_s=settings.resume_window_s)
            if settings.redis_url
            else None
        )
        logs = EventLogRegistry(
            retention_s=settings.resume_window_s, max_bytes=settings.resume_max_bytes, sink=shared_logs
        )
        titles = TitleMaker(settings=settings, sessionmaker=sessionmaker, upstream=upstream, pricer=pricer)
        runner = TurnRunner(
            upstream=upstream,
            store=SqlTurnStore(sessionmaker, pricer=pricer, spool=spool, costs=costs),
            logs=logs,
            config=runner_config(settings),
            metrics=app_metrics,
            tools=tools,
            on_turn_ended=titles.turn_ended,
        )
        authenticator = Authenticator(settings, sessionmaker)
        # Postgres tells every replica of a revoke as it commits: cached keys can be trusted for longer. SQLite's
        # one server reads the revokes other processes made (`parley keys revoke`).
        revocations: RevocationPoller | RevocationListener = (
            RevocationPoller(engine, authenticator)
            if settings.is_sqlite
            else RevocationListener(engine, authenticator, app_metrics)
        )
        stream_tokens = StreamTokens(settings)
        turns = TurnService(
            settings=settings,
            sessionmaker=sessionmaker,
            runner=runner,
            logs=logs,
            stream_tokens=stream_tokens,
            server_tools=tools,
            upstream=upstream,
            costs=costs,
            shared_logs=shared_logs,
        )
        app.state.parley = AppState(
            settings=settings,
            engine=engine,
            sessionmaker=sessionmaker,
            upstream=upstream,
            authenticator=authenticator,
            upstream_base_url=base_url,
            head_revision=head,
            runner=runner,
            logs=logs,
            stream_tokens=stream_tokens,
            tools=tools,
            metrics=app_metrics,
            turns=turns,
            schema=schema,
        )
        if settings.uses_simulator:
            logger.warning(
                "parley.embedded_default: no OPENAI_API_KEY set, so the built-in simulator at %s is the "
                "upstream (offline, deterministic replies); database %s",
                base_url,
                engine.url.render_as_string(hide_password=True),
            )
        else:
            logger.info("parley.upstream: %s", base_url)
        simulator_lifespan = AsyncExitStack()
        if simulator is not None:
            # A mounted app's lifespan does not run by itself: the simulator's state database opens here, after
            # the migrations and before the runner (whose recovery may ask it for responses), and closes after.
            await simulator_lifespan.enter_async_context(simulator.router.lifespan_context(simulator))
        if shared_logs is not None:
            shared_logs.start()
            logger.info("parley.event_log: shared by every replica on Redis")
        unshared = (
            UnsharedLogWatch(sessionmaker, interval_s=settings.turn_lease_s / 4, alive_within_s=settings.turn_lease_s)
            if shared_logs is None
            else None
        )
        if unshared is not None:
            unshared.start()
        await runner.start()
        revocations.start()
        loop_lag = LoopLagWatch(app_metrics)
        loop_lag.start()
        try:
            yield
        finally:
            await loop_lag.stop()
            await revocations.stop()
            await runner.shutdown(settings.shutdown_grace_s)
            # After the runner (its last turns may start titles), before the upstream client and the engine close.
            await titles.aclose()
            if shared_logs is not None:
                # After the runner: the frames of turns it ended go to Redis before the client closes.
                await shared_logs.aclose()
            if unshared is not None:
                await unshared.stop()
            await simulator_lifespan.aclose()
            await upstream.close()
            await engine.dispose()

    app = ParleyAPI(
        title="Parley",
        version=package_version(),
        summary="A stateful chat backend for the OpenAI Responses API.",
        description=API_DESCRIPTION,
        lifespan=lifespan,
        # An API answers a wrong path with 404, not a redirect a client would silently follow.
        redirect_slashes=False,
        # Served by api_docs instead: the same pages, their scripts from this server rather than a CDN.
        docs_url=None,
        redoc_url=None,
    )
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(metrics.router)
    app.include_router(sessions.router)
    app.include_router(search.router)
    app.include_router(files.router)
    app.include_router(turns.router)
    app.include_router(export.router)
    app.include_router(usage.router)
    app.include_router(client_config.router)
    app.include_router(admin.router)
    app.include_router(api_docs.router)
    app.include_router(web.router)
    app.mount("/web", web.static_files(), name="web")
    if simulator is not None:
        app.router.routes.append(Mount(SIMULATOR_MOUNT, app=simulator))
    app.add_middleware(
        RequestGuardMiddleware,
        max_body_bytes=settings.max_body_bytes,
        upload_path="/v1/files",
        max_upload_bytes=settings.max_upload_bytes,
    )
    app.add_middleware(SecurityHeadersMiddleware)
    if settings.cors_origins:
        # Off unless origins are listed; never "*" with credentials (bearer tokens travel in a header,
        # so no cookies are allowed at all).
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PATCH", "PUT", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key", "Last-Event-ID", "X-Request-ID"],
            expose_headers=["Retry-After", "X-Request-ID"],
            allow_credentials=False,
            max_age=600,
        )
    document_server_tool_names(app, tools.names())
    return app


def document_server_tool_names(app: FastAPI, names: list[str]) -> None:
    """The OpenAPI document names this deployment's own tools where a session lists them (`server_tools`): the
    names come from PARLEY_TOOLS, which no static schema knows (FastAPI's documented way to extend the schema)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = generate()
        for model in ("SessionCreate", "SessionUpdate"):
            field = schema["components"]["schemas"][model]["properties"]["server_tools"]
            for option in field.get("anyOf", [field]):
                if option.get("type") == "array":
                    if names:
                        option["items"]["enum"] = sorted(names)
                    else:
                        option["maxItems"] = 0
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
