"""The application factory."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.routing import Mount

from app.api.error_handlers import install_error_handlers
from app.api.middleware import RequestGuardMiddleware, SecurityHeadersMiddleware
from app.api.routes import admin, health, sessions, turns, usage
from app.db.engine import build_engine, build_sessionmaker
from app.db.migrate import head_revision, upgrade
from app.services.auth import Authenticator
from app.services.pricing import Pricer
from app.services.spool import Spool
from app.services.stream_tokens import StreamTokens
from app.services.turn_store import SqlTurnStore
from app.settings import Settings
from app.state import AppState
from app.streaming.event_log import EventLogRegistry
from app.streaming.runner import RunnerConfig, TurnRunner
from app.upstream.client import build_openai_client
from app.upstream.responses import StreamPolicy

logger = logging.getLogger(__name__)

SIMULATOR_MOUNT = "/simulator"
DEFAULT_LOCAL_BASE_URL = "http://127.0.0.1:8000"


def upstream_base_url(settings: Settings) -> str:
    """The OpenAI base URL: configured, api.openai.com, or the simulator mounted on this server."""
    if settings.openai_base_url:
        return settings.openai_base_url.rstrip("/")
    if settings.uses_simulator:
        local = (settings.public_base_url or DEFAULT_LOCAL_BASE_URL).rstrip("/")
        return f"{local}{SIMULATOR_MOUNT}/v1"
    return "https://api.openai.com/v1"


def runner_config(settings: Settings) -> RunnerConfig:
    return RunnerConfig(
        stream_policy=StreamPolicy(
            read_timeout_s=settings.upstream_stall_timeout_s,
            connect_timeout_s=settings.upstream_connect_timeout_s,
            max_attempts=settings.upstream_max_attempts,
            max_retry_wait_s=settings.upstream_max_retry_wait_s,
        ),
        heartbeat_interval_s=settings.runner_heartbeat_interval_s,
        orphan_after_s=settings.runner_orphan_after_s,
        sweep_interval_s=settings.runner_sweep_interval_s,
        cancel_poll_interval_s=settings.runner_cancel_poll_interval_s,
        recovery_timeout_s=settings.upstream_recovery_timeout_s,
    )


def create_app(settings: Settings) -> FastAPI:
    base_url = upstream_base_url(settings)

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
        sessionmaker = build_sessionmaker(engine)
        upstream = build_openai_client(settings, base_url=base_url)
        logs = EventLogRegistry(retention_s=settings.resume_window_s)
        runner = TurnRunner(
            upstream=upstream,
            store=SqlTurnStore(sessionmaker, pricer=Pricer(settings.pricing_file), spool=Spool(settings.spool_dir)),
            logs=logs,
            config=runner_config(settings),
        )
        app.state.parley = AppState(
            settings=settings,
            engine=engine,
            sessionmaker=sessionmaker,
            upstream=upstream,
            authenticator=Authenticator(settings, sessionmaker),
            upstream_base_url=base_url,
            head_revision=head_revision(settings.migrations_dir),
            runner=runner,
            logs=logs,
            stream_tokens=StreamTokens(settings),
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
        await runner.start()
        try:
            yield
        finally:
            await runner.shutdown(settings.shutdown_grace_s)
            await upstream.close()
            await engine.dispose()

    app = FastAPI(
        title="Parley",
        version="0.1.0",
        summary="A stateful chat backend for the OpenAI Responses API.",
        lifespan=lifespan,
        # An API answers a wrong path with 404, not a redirect a client would silently follow.
        redirect_slashes=False,
    )
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(sessions.router)
    app.include_router(turns.router)
    app.include_router(usage.router)
    app.include_router(admin.router)
    if settings.uses_simulator:
        from app.simulator import create_simulator_app

        app.router.routes.append(
            Mount(SIMULATOR_MOUNT, app=create_simulator_app(prompts_path=settings.simulator_prompts_file))
        )
    app.add_middleware(RequestGuardMiddleware, max_body_bytes=settings.max_body_bytes)
    app.add_middleware(SecurityHeadersMiddleware)
    return app
