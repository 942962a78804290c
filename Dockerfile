# Parley's image. The builder resolves uv.lock into /app/.venv (the project itself installed as a wheel,
# not editable); the runtime stage copies that venv and the Alembic files onto the same slim base, so the
# final image has no uv, pip cache or build backend. Needs BuildKit (the default builder since Docker 23)
# for the RUN --mount cache.
#
#   docker build -t parley .
#   docker run -p 8000:8000 -e PARLEY_DATABASE_URL=postgresql+asyncpg://… parley
#
# Runtime layout: /app is the working directory; /app/alembic.ini and /app/migrations/ sit there,
# /app/.venv holds the app (site-packages/app), /app/var is the one directory the app user may write
# (the embedded SQLite default, var/parley.db, when no PARLEY_DATABASE_URL is given).

FROM python:3.11.14-slim-bookworm AS base

FROM base AS builder

# uv comes from PyPI rather than the ghcr.io/astral-sh/uv image because PyPI is the only registry our
# build machines reach. Pinned to the uv that wrote uv.lock.
RUN pip install --no-cache-dir uv==0.13.9

ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PYTHON=/usr/local/bin/python3.11 \
    UV_PROJECT_ENVIRONMENT=/app/.venv

# Same path as in the runtime stage: the venv's console scripts carry an absolute shebang.
WORKDIR /app

# Dependencies alone first, so this layer is reused until the lock changes.
COPY pyproject.toml uv.lock ./
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-install-project --no-editable

COPY README.md ./
COPY app/ app/
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-editable


FROM base AS runtime

RUN groupadd --system --gid 10001 parley \
    && useradd --system --no-log-init --uid 10001 --gid 10001 \
        --home-dir /app --no-create-home --shell /usr/sbin/nologin parley \
    && install -d -o 10001 -g 10001 /app/var

ENV PATH="/app/.venv/bin:${PATH}" \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PARLEY_MIGRATIONS_DIR=/app/migrations

WORKDIR /app

# Root-owned and so read-only to the app user; the bytecode was compiled in the builder.
COPY --from=builder /app/.venv /app/.venv
# Straight from the build context, not via the builder: a new revision doesn't rebuild the venv layer.
COPY alembic.ini ./
COPY migrations/ migrations/

USER 10001:10001

EXPOSE 8000

# slim has no curl; urlopen raises on a refused connection or a non-2xx answer, which exits 1.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]

CMD ["parley", "serve", "--host", "0.0.0.0", "--port", "8000"]
