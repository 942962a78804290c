"""Configuration, read only through pydantic-settings.

Every Parley setting has the `PARLEY_` prefix (environment or `.env`); the OpenAI client's own variables
(`OPENAI_API_KEY`, `OPENAI_BASE_URL`) keep their standard names so an existing deployment's environment
works unchanged. There is no module-level instance: `create_app(settings)` receives one.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, PositiveFloat, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_SQLITE_PATH = Path("var") / "parley.db"
PROJECT_ROOT = Path(__file__).resolve().parent.parent
# The id of the demo prompt shipped in app/simulator/prompts.json.
SIMULATOR_DEMO_PROMPT_ID = "pmpt_parley_demo"
# One of `gc.set_threshold`'s three values (0 as the first turns automatic collection off).
GcThreshold = Annotated[int, Field(ge=0, le=10_000_000)]
# The Responses options Parley forwards from a message or session (`PARLEY_ALLOWED_OPTIONS` picks among them).
OptionName = Literal[
    "text",
    "reasoning",
    "max_output_tokens",
    "truncation",
    "service_tier",
    "prompt_cache_key",
    "tool_choice",
    "parallel_tool_calls",
    "temperature",
    "top_p",
]
BuiltinToolType = Literal["web_search", "file_search", "code_interpreter", "image_generation"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="PARLEY_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        # An empty OPENAI_API_KEY (e.g. passed through by compose) means "not set", not a key.
        env_ignore_empty=True,
        validate_by_name=True,
    )

    database_url: str = f"sqlite+aiosqlite:///{DEFAULT_SQLITE_PATH}"
    # Connections per process at most, each kept open once made (a checkout beyond waits up to the timeout).
    # A turn checks one out at its start and one at its end, and a busy event loop resumes their holders late,
    # so bursts of turns hold many at once. Connections that opened for a burst and closed when returned
    # (SQLAlchemy's overflow: 20 kept and 20 more before) were 5.6% of Parley's CPU in the burst scenario;
    # without them burst throughput rose 17% and CPU per event fell 10%, with as many connections at most.
    # (Earlier: 32 concurrent short turns, 10 -> 20 kept cut the server's CPU per turn by a fifth.)
    database_pool_size: int = Field(default=40, ge=1)
    database_pool_timeout_s: float = Field(default=10.0, gt=0)
    migrations_dir: Path | None = None

    admin_token: SecretStr | None = None

    openai_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("OPENAI_API_KEY", "PARLEY_OPENAI_API_KEY")
    )
    openai_base_url: str | None = Field(
        default=None, validation_alias=AliasChoices("OPENAI_BASE_URL", "PARLEY_OPENAI_BASE_URL")
    )
    upstream_timeout_s: float = Field(default=600.0, gt=0)
    upstream_connect_timeout_s: float = Field(default=5.0, gt=0)
    # Upstream connections open at once: one per streaming turn for its whole length, plus conversation calls.
    # Turns beyond it wait for a connection. Each is a file descriptor, as is each browser's stream.
    upstream_max_connections: int = Field(default=10_000, ge=1)
    # A streamed response silent for this long counts as stalled (reasoning models think quietly).
    upstream_stall_timeout_s: float = Field(default=180.0, gt=0)
    upstream_max_attempts: int = Field(default=3, ge=1, le=10)
    upstream_max_retry_wait_s: float = Field(default=5.0, ge=0)
    # How long a turn whose upstream stream was cut keeps re-attaching to its background response (each attempt
    # that brings events starts the count again) before it is stored as failed.
    upstream_recovery_timeout_s: float = Field(default=15.0, ge=0)
    # Turns run upstream as background responses (`background: true, store: true`): the response goes on when
    # Parley's connection to it drops, Parley re-attaches from the last event it relayed, and cancel stops it
    # upstream (billing stops). OpenAI keeps background responses about ten minutes for this, so an organisation
    # with zero data retention must turn it off; then a cut stream ends its turn `failed` with the partial
    # answer (the response is gone upstream), and a turn cannot outlive the connection that runs it.
    upstream_background: bool = True

    # Turns and their event streams.
    secret_key: SecretStr | None = None
    stream_token_ttl_s: int = Field(default=3600, ge=60)
    resume_window_s: float = Field(default=900.0, ge=0)
    # The in-memory resume window's size in bytes: the frames of this process's turn event logs (each counted
    # with its ~41 bytes of overhead). Past it, finished turns' logs leave before their window, the one that
    # finished first first, and a resume of one gets the stored turn's terminal event (from the shared log on
    # Redis, when there is one); running turns' logs always stay. 256 MiB holds ~250 turns of 3,000 tokens
    # (~1 MB each) or ~6,000 short ones (~40 KB). 0: a finished turn's log leaves at once.
    resume_max_bytes: int = Field(default=268_435_456, ge=0)
    sse_ping_interval_s: float = Field(default=10.0, gt=0, le=15)
    sse_send_timeout_s: float = Field(default=30.0, gt=0)
    shutdown_grace_s: float = Field(default=15.0, ge=0)
    cancel_wait_s: float = Field(default=10.0, ge=0)
    # Each running turn is held by its process's lease: the process renews it (a heartbeat) every quarter of
    # this, and once its last renewal is three quarters of this old another replica (or the same one restarted)
    # takes its turns over, within this long of the process dying.
    turn_lease_s: float = Field(default=10.0, gt=0)
    runner_cancel_poll_interval_s: float = Field(default=1.0, gt=0)

    # The embedded simulator: mounted at /simulator when no OpenAI key is configured.
    public_base_url: str | None = None
    simulator_prompts_file: Path | None = None
    simulator_speed: Literal["model", "instant"] | PositiveFloat | None = Field(
        default=None,
        description=(
            "How fast the simulator answers. `model`: like a model, about 400 ms to the first token and then 50 "
            "tokens a second; `instant`: no delay at all; a number: that many times the model pace (`2` twice as "
            "fast, `0.5` half). Unset: `model` for the simulator `parley serve` mounts, `instant` for the "
            "standalone `parley simulator`. The control route POST /simulator/_control/config changes it live."
        ),
    )
    simulator_database_url: str | None = Field(
        default=None,
        description=(
            "Where the simulator keeps its conversations and finished responses, so that they outlive a restart "
            "(tables of its own, `simulator_*`, created at start; not Parley's migrations). Unset: the simulator "
            "`parley serve` mounts uses Parley's own database (PARLEY_DATABASE_URL), the standalone `parley "
            "simulator` keeps them in memory only."
        ),
    )

    default_prompt_id: str | None = None
    default_prompt_version: str | None = None
    default_model: str = "gpt-5-mini"
    default_instructions: str = "You are a helpful assistant."
    # The small model that names a session after its first turn (`services.titles`); `off`: sessions stay untitled
    # until their user names them. A reasoning model (gpt-5*, o*) is asked for low effort.
    title_model: str = Field(default="gpt-4.1-mini", min_length=1, max_length=128)
    allowed_models: Annotated[list[str], NoDecode] = []
    allowed_prompts: Annotated[list[str], NoDecode] = []
    cors_origins: Annotated[list[str], NoDecode] = []

    jwt_secret: SecretStr | None = None
    jwks_url: str | None = None
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    jwt_algorithms: Annotated[list[str], NoDecode] = ["HS256", "RS256", "ES256"]
    # How long a replica trusts a credential it has looked up without asking the database again. A revoke
    # applies at once on the replica that handled it and within this many seconds on the others; 0: no cache.
    auth_cache_ttl_s: float = Field(default=5.0, ge=0, le=300)
    # The same while the replica hears every revoke as it is made (Postgres LISTEN/NOTIFY): then a revoke
    # applies at once everywhere, and only a connection lost unnoticed (checked every 10 s) bounds it by this.
    auth_cache_notified_ttl_s: float = Field(default=60.0, ge=0, le=3600)

    # The cost ledger, budgets and limits.
    spool_dir: Path = Path("var") / "spool"
    default_monthly_budget_usd: Decimal | None = Field(default=None, ge=0)
    # Under a budget, each upstream round reserves this many output tokens (or the request's smaller
    # max_output_tokens) at the output price before it goes upstream: the part of a round not known in advance.
    budget_reserve_output_tokens: int = Field(default=4000, ge=1)
    rate_limit_turns_per_minute: int = Field(default=30, ge=0)  # 0: no limit
    rate_limit_concurrent_turns: int = Field(default=4, ge=0)  # in-flight turns per user; 0: no limit
    metrics_token: SecretStr | None = None

    # Shares every turn's event log between replicas as a Redis Stream (e.g. redis://redis:6379/0), so any replica
    # serves a resume of any turn. Unset: each process keeps its turns' logs in memory only.
    redis_url: str | None = None
    # Parley's own function tools: built-in names and `package.module:attribute` import paths (README, "Your own
    # tools"); installed packages' `parley.tools` entry points are added to them.
    tools: Annotated[list[str], NoDecode] = []
    # JSON: prompt id -> the tool names its turns may use (a prompt not listed may use all of them).
    prompt_tools: dict[str, list[str]] = {}
    # One call of a tool, unless its decorator says otherwise; the model gets "timed out" as the call's output.
    tool_timeout_s: PositiveFloat = 10.0
    # Upstream rounds answered by Parley's own tools in one turn; the turn then ends incomplete (tool_loop_limit).
    max_tool_rounds: int = Field(default=8, ge=1)
    pricing_file: Path | None = None
    # The Responses options a message or session may set, by name. Cost levers (service_tier) and cache keys
    # (prompt_cache_key) are left out unless a deployment adds them.
    allowed_options: Annotated[list[OptionName], NoDecode] = [
        "text",
        "reasoning",
        "max_output_tokens",
        "truncation",
        "temperature",
        "top_p",
        "tool_choice",
        "parallel_tool_calls",
    ]
    # `auto`: the upstream drops the oldest items of a conversation that outgrows the model's context window, so
    # a long session goes on rather than fail; `disabled`: it fails (the Responses API's own default).
    default_truncation: Literal["auto", "disabled"] = "auto"
    # The upstream's built-in tools a message or session may add, by type; none unless a deployment lists them
    # (each is billed per call, and file_search reads the account's vector stores).
    allowed_builtin_tools: Annotated[list[BuiltinToolType], NoDecode] = []
    # Ask for reasoning's encrypted content (`include: reasoning.encrypted_content`) and keep it with the answer,
    # never served: a branch's new conversation then carries the model's reasoning. Off: branches leave it out.
    keep_reasoning: bool = True

    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    # One uploaded file (`POST /v1/files`, that route's own limit), and all of a user's live files together.
    max_upload_bytes: int = Field(default=20 * 1_048_576, ge=1024)
    max_user_file_bytes: int = Field(default=200 * 1_048_576, ge=1024)
    # All the text of a message, every input form and part counted together.
    max_message_chars: int = Field(default=32_000, ge=1)
    # The JSON body of one upstream call. A legitimate one is one request body (a data: URL of almost
    # PARLEY_MAX_BODY_BYTES included) plus the session's stored prompt (from another body of at most that
    # size) and the tool definitions: 4 MiB holds that at the default body limit, and it may never be below
    # the body limit itself, or a data: URL the API accepts could never be sent.
    max_upstream_body_bytes: int = Field(default=4_194_304, ge=1024)

    # The cyclic garbage collector's thresholds in `parley serve` (`gc.set_threshold`), as "700,10,100".
    # Python's third value, 10, makes a full collection several times a minute under load, each a pause of
    # 100-165 ms with a few hundred streams open; 100 makes it about once a minute (docs/benchmarks.md).
    # "700,10,10" is Python's own.
    gc_thresholds: Annotated[tuple[GcThreshold, GcThreshold, GcThreshold], NoDecode] = (700, 10, 100)

    log_level: str = "INFO"
    log_format: Literal["text", "json"] = "text"

    @field_validator(
        "allowed_models",
        "allowed_prompts",
        "cors_origins",
        "tools",
        "jwt_algorithms",
        "gc_thresholds",
        "allowed_options",
        "allowed_builtin_tools",
        mode="before",
    )
    @classmethod
    def _split_comma_list(cls, value: object) -> object:
        # Lists come from the environment as "a,b,c", which reads better in a compose file than JSON.
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("secret_key", "jwt_secret")
    @classmethod
    def _long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        # RFC 7518 §3.2: an HS256 key shorter than the hash output weakens the signature.
        if value is not None and len(value.get_secret_value().encode()) < 32:
            raise ValueError("must be at least 32 bytes long")
        return value

    @model_validator(mode="after")
    def _upstream_body_fits_a_request(self) -> Settings:
        if self.max_upstream_body_bytes < self.max_body_bytes:
            raise ValueError("PARLEY_MAX_UPSTREAM_BODY_BYTES must be at least PARLEY_MAX_BODY_BYTES")
        return self

    @property
    def uses_simulator(self) -> bool:
        """No OpenAI key: the embedded default, with the built-in simulator as the upstream."""
        return self.openai_api_key is None

    @property
    def auto_title_model(self) -> str | None:
        """The model that names sessions after their first turn; None when `PARLEY_TITLE_MODEL` is `off`."""
        model = self.title_model.strip()
        return None if model.lower() == "off" else model

    @property
    def effective_default_prompt_id(self) -> str | None:
        """On the embedded default the simulator's demo prompt is the default, so a first message works."""
        if self.default_prompt_id:
            return self.default_prompt_id
        return SIMULATOR_DEMO_PROMPT_ID if self.uses_simulator else None

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")
