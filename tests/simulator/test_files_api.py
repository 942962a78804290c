"""The simulator's Files API, through the SDK: its shapes, its errors, files named in a response (acknowledged by
name, unknown ones refused), and files outliving the process with a state database."""

from __future__ import annotations

from pathlib import Path

import openai
import pytest

from app.simulator import create_simulator_app
from tests.databases import BACKENDS, database
from tests.servers import serve
from tests.simulator.test_persistence import sdk_for, simulator_on

PNG = b"\x89PNG\r\n\x1a\n" + bytes(64)


async def test_files_in_the_real_services_shapes() -> None:
    with serve(create_simulator_app()) as base_url:
        async with sdk_for(base_url) as sdk:
            created = await sdk.files.create(file=("holiday.png", PNG, "image/png"), purpose="user_data")
            assert created.id.startswith("file-")
            assert (created.object, created.filename, created.bytes, created.purpose) == (
                "file",
                "holiday.png",
                len(PNG),
                "user_data",
            )
            assert (await sdk.files.retrieve(created.id)).model_dump() == created.model_dump()
            assert (await sdk.files.content(created.id)).content == PNG
            assert [f.id async for f in sdk.files.list()] == [created.id]

            answer = await sdk.responses.create(
                model="gpt-4.1-mini",
                input=[
                    {
                        "role": "user",
                        "content": [
                            {"type": "input_text", "text": "What is this?"},
                            {"type": "input_image", "file_id": created.id, "detail": "auto"},
                        ],
                    }
                ],
            )
            assert answer.output_text.startswith("I see the image holiday.png.")

            deleted = await sdk.files.delete(created.id)
            assert (deleted.id, deleted.deleted) == (created.id, True)
            with pytest.raises(openai.NotFoundError):
                await sdk.files.retrieve(created.id)
            with pytest.raises(openai.BadRequestError, match=created.id):
                await sdk.responses.create(
                    model="gpt-4.1-mini",
                    input=[{"role": "user", "content": [{"type": "input_file", "file_id": created.id}]}],
                )
            with pytest.raises(openai.BadRequestError):
                await sdk.files.create(file=("a.txt", b"a"), purpose="nonsense")  # type: ignore[arg-type]


@pytest.mark.parametrize("backend", BACKENDS)
async def test_files_outlive_the_process(backend: str, tmp_path: Path) -> None:
    async with database(backend, tmp_path, migrate=False) as url:
        with simulator_on(url) as base_url:
            async with sdk_for(base_url) as sdk:
                kept = await sdk.files.create(file=("notes.pdf", b"%PDF-1.7\n", "application/pdf"), purpose="user_data")
                gone = await sdk.files.create(file=("gone.txt", b"bye", "text/plain"), purpose="user_data")
                await sdk.files.delete(gone.id)
        with simulator_on(url) as base_url:
            async with sdk_for(base_url) as sdk:
                assert (await sdk.files.retrieve(kept.id)).filename == "notes.pdf"
                assert (await sdk.files.content(kept.id)).content == b"%PDF-1.7\n"
                with pytest.raises(openai.NotFoundError):
                    await sdk.files.retrieve(gone.id)
