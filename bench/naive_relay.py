"""The naive relay, a baseline only: the pattern of the articles Parley's docs cite.

A FastAPI route calls `client.responses.create(stream=True)`, iterates the SDK's typed events and re-emits
each one through sse-starlette (`event.type` as the event name, `event.model_dump_json()` as the data).
Nothing is stored. Served like Parley: uvicorn with uvloop and httptools.

    python -m bench.naive_relay --port P --upstream http://127.0.0.1:S/v1
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator
from typing import Any

import openai
import uvicorn
from fastapi import FastAPI, Request
from sse_starlette import EventSourceResponse, ServerSentEvent


def create_app(upstream: str) -> FastAPI:
    app = FastAPI()
    client = openai.AsyncOpenAI(base_url=upstream, api_key="sk-bench-naive", max_retries=0)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/responses")
    async def relay(request: Request) -> EventSourceResponse:
        body: dict[str, Any] = await request.json()
        body["stream"] = True
        stream = await client.responses.create(**body)

        async def events() -> AsyncIterator[ServerSentEvent]:
            async for event in stream:
                yield ServerSentEvent(data=event.model_dump_json(), event=event.type)

        return EventSourceResponse(events())

    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    args = parser.parse_args()
    uvicorn.run(
        create_app(args.upstream),
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
    )


if __name__ == "__main__":
    main()
