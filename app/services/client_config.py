"""What a caller may choose and the limits that apply to them (`GET /v1/config`), for a client's pickers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.services import users
from app.services.auth import Principal
from app.services.server_tools import ServerTools
from app.settings import Settings


@dataclass(frozen=True, slots=True)
class ClientConfig:
    # `default` is what a session gets without choosing; `allowed` is what it may pick (["*"]: anything).
    models: dict[str, Any]
    prompts: dict[str, Any]
    options: list[str]
    builtin_tools: list[str]
    server_tools: list[dict[str, Any]]
    limits: dict[str, Any]


def _choices(allowed: list[str], default: str | None, settings: Settings) -> dict[str, Any]:
    # The same rule as `policy`: nothing listed allows only the default, except on the simulator (anything).
    choices = list(allowed) if allowed else (["*"] if settings.uses_simulator else [])
    if default is not None and "*" not in choices and default not in choices:
        choices.insert(0, default)
    return {"default": default, "allowed": choices}


async def client_config(
    db: AsyncSession, *, settings: Settings, principal: Principal, tools: ServerTools
) -> ClientConfig:
    budget = await users.get_budget(db, settings=settings, user_id=principal.user_id)
    return ClientConfig(
        models=_choices(settings.allowed_models, settings.default_model, settings),
        prompts=_choices(settings.allowed_prompts, settings.effective_default_prompt_id, settings),
        options=list(settings.allowed_options),
        builtin_tools=list(settings.allowed_builtin_tools),
        server_tools=tools.describe(),
        limits={
            "max_message_chars": settings.max_message_chars,
            "max_body_bytes": settings.max_body_bytes,
            "turns_per_minute": settings.rate_limit_turns_per_minute or None,
            "concurrent_turns": settings.rate_limit_concurrent_turns or None,
            "monthly_budget_usd": budget.monthly_budget_usd,
            "spent_this_month_usd": budget.spent_usd,
        },
    )
