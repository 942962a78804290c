"""Files: uploads judged by content and bounded by size and quota, each user's own, named in messages by their
Parley id and sent upstream as the upstream copy's, and deleted upstream once no live session names them."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import ApiUser, RunningParley, create_api_user, run_parley
from tests.turns.helpers import Simulator, new_session, simulator_for

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + bytes(range(256))
PDF = b"%PDF-1.7\n1 0 obj\n<< /Type /Catalog >>\nendobj\n%%EOF\n"
UPSTREAM_KEY = {"Authorization": "Bearer sk-test"}  # the simulator wants a key, any key
TEXT = b"Packing list: sandals, a jumper, sun cream.\n"


@pytest.fixture
async def sim(parley: RunningParley, client: httpx.AsyncClient) -> Simulator:
    return simulator_for(parley, client)


async def _upload(
    client: httpx.AsyncClient, user: ApiUser, filename: str, data: bytes, *, expect: int = 201
) -> dict[str, Any]:
    response = await client.post("/v1/files", files={"file": (filename, data)}, headers=user.headers)
    assert response.status_code == expect, response.text
    body: dict[str, Any] = response.json()
    return body


def _unique(name: str) -> str:
    stem, _, suffix = name.rpartition(".")
    return f"{stem}-{uuid.uuid4().hex[:8]}.{suffix}"


async def _upstream_copy(client: httpx.AsyncClient, parley: RunningParley, filename: str) -> dict[str, Any] | None:
    """The simulator's copy of the file uploaded under `filename`, if it still has one."""
    response = await client.get(f"{parley.simulator_url}/v1/files", headers=UPSTREAM_KEY)
    assert response.status_code == 200, response.text
    return next((f for f in response.json()["data"] if f["filename"] == filename), None)


def _message_with(file_id: str, kind: str = "input_image", text: str = "What is this?") -> dict[str, Any]:
    return {
        "input": [
            {"role": "user", "content": [{"type": "input_text", "text": text}, {"type": kind, "file_id": file_id}]}
        ],
        "stream": False,
    }


@pytest.mark.parametrize(
    ("filename", "data", "content_type"),
    [
        ("holiday.png", PNG, "image/png"),
        ("notes.pdf", PDF, "application/pdf"),
        ("list.txt", TEXT, "text/plain"),
        ("readme.md", b"# Title\n\nWords.\n", "text/markdown"),
        ("data.csv", b"a,b\n1,2\n", "text/csv"),
        ("data.json", b'{"a": [1, 2]}', "application/json"),
    ],
)
async def test_an_upload_is_read_back_byte_for_byte(
    client: httpx.AsyncClient, user: ApiUser, filename: str, data: bytes, content_type: str
) -> None:
    created = await _upload(client, user, filename, data)
    assert created["id"].startswith("pfile_")
    assert created["object"] == "file"
    assert (created["filename"], created["bytes"], created["content_type"]) == (filename, len(data), content_type)

    got = await client.get(f"/v1/files/{created['id']}", headers=user.headers)
    assert got.status_code == 200
    assert got.json() == created
    content = await client.get(f"/v1/files/{created['id']}/content", headers=user.headers)
    assert content.status_code == 200
    assert content.content == data
    assert content.headers["content-type"].split(";")[0] == content_type
    assert content.headers["x-content-type-options"] == "nosniff"
    assert filename in content.headers["content-disposition"]

    listed = await client.get("/v1/files", headers=user.headers)
    assert listed.status_code == 200
    assert [f["id"] for f in listed.json()["data"]] == [created["id"]]


@pytest.mark.parametrize(
    ("filename", "data"),
    [
        ("cat.png", b"just some text, not a picture"),
        ("setup.exe", b"MZ\x90\x00\x03\x00\x00\x00\x04\x00\x00\x00\xff\xff"),
        ("page.txt", b"\xff\xfe\x00<\x00h\x00t\x00m\x00l"),
        ("broken.json", b'{"a": '),
    ],
)
async def test_a_type_outside_the_allowlist_judged_by_content_is_415(
    client: httpx.AsyncClient, user: ApiUser, filename: str, data: bytes
) -> None:
    error = (await _upload(client, user, filename, data, expect=415))["error"]
    assert error["code"] == "unsupported_file_type"
    listed = await client.get("/v1/files", headers=user.headers)
    assert listed.json()["data"] == []


async def test_an_upload_must_be_multipart(client: httpx.AsyncClient, user: ApiUser) -> None:
    response = await client.post("/v1/files", content=PNG, headers=user.headers | {"Content-Type": "image/png"})
    assert response.status_code == 415


@pytest.fixture(scope="module")
def small(database_url: str, backend: str) -> Iterator[RunningParley]:
    with run_parley(database_url, backend, max_upload_bytes=4096, max_user_file_bytes=10_000) as running:
        yield running


@pytest.fixture
async def small_client(small: RunningParley) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=small.base_url, timeout=30) as http:
        yield http


async def test_a_file_over_the_upload_limit_is_413_even_beyond_the_json_body_limit(
    small_client: httpx.AsyncClient,
) -> None:
    user = await create_api_user(small_client)
    await _upload(small_client, user, "fits.txt", b"a" * 4096)
    error = (await _upload(small_client, user, "big.txt", b"a" * 4097, expect=413))["error"]
    assert "4,096" in error["message"]

    async def chunks() -> AsyncIterator[bytes]:
        # Streamed without a Content-Length: the limit counts what arrives.
        boundary = b"--xyz"
        yield boundary + b'\r\nContent-Disposition: form-data; name="file"; filename="big.txt"\r\n\r\n'
        for _ in range(100):
            yield b"a" * 1024
        yield b"\r\n" + boundary + b"--\r\n"

    streamed = await small_client.post(
        "/v1/files",
        content=chunks(),
        headers=user.headers | {"Content-Type": "multipart/form-data; boundary=xyz"},
    )
    assert streamed.status_code == 413


async def test_the_default_upload_limit_is_not_the_json_body_limit(client: httpx.AsyncClient, user: ApiUser) -> None:
    data = b"x" * (1_048_576 + 10)
    created = await _upload(client, user, "long.txt", data)
    assert created["bytes"] == len(data)
    # Read back in more than one chunk.
    content = await client.get(f"/v1/files/{created['id']}/content", headers=user.headers)
    assert content.content == data


async def test_over_the_quota_is_413_with_the_numbers(small_client: httpx.AsyncClient) -> None:
    user = await create_api_user(small_client)
    await _upload(small_client, user, "a.txt", b"a" * 4000)
    await _upload(small_client, user, "b.txt", b"b" * 4000)
    error = (await _upload(small_client, user, "c.txt", b"c" * 4000, expect=413))["error"]
    assert error["code"] == "file_quota_exceeded"
    assert "8,000" in error["message"]
    assert "10,000" in error["message"]
    # A deleted file no longer counts.
    listed = await small_client.get("/v1/files", headers=user.headers)
    first = listed.json()["data"][0]["id"]
    assert (await small_client.delete(f"/v1/files/{first}", headers=user.headers)).status_code == 200
    await _upload(small_client, user, "c.txt", b"c" * 4000)


async def test_another_users_file_is_404_everywhere(
    client: httpx.AsyncClient, user: ApiUser, other_user: ApiUser, sim: Simulator
) -> None:
    theirs = (await _upload(client, other_user, "private.png", PNG))["id"]
    for method, path in [
        ("GET", f"/v1/files/{theirs}"),
        ("GET", f"/v1/files/{theirs}/content"),
        ("DELETE", f"/v1/files/{theirs}"),
        ("GET", "/v1/files/pfile_nothing"),
    ]:
        response = await client.request(method, path, headers=user.headers)
        assert response.status_code == 404, (method, path)
        assert response.json()["error"]["code"] == "file_not_found"
    assert (await client.get("/v1/files", headers=user.headers)).json()["data"] == []

    session_id = await new_session(client, user)
    response = await client.post(
        f"/v1/sessions/{session_id}/messages", json=_message_with(theirs), headers=user.headers
    )
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "file_not_found"
    assert response.json()["error"]["param"] == "input.0.content.1.file_id"
    # Still theirs, untouched.
    assert (await client.get(f"/v1/files/{theirs}", headers=other_user.headers)).status_code == 200


async def test_an_attachment_goes_upstream_as_the_upstream_copy_and_is_acknowledged(
    client: httpx.AsyncClient, parley: RunningParley, user: ApiUser, sim: Simulator
) -> None:
    image_name, doc_name = _unique("holiday.png"), _unique("notes.pdf")
    image = await _upload(client, user, image_name, PNG)
    doc = await _upload(client, user, doc_name, PDF)
    session_id = await new_session(client, user)
    body = _message_with(image["id"])
    body["input"][0]["content"].append({"type": "input_file", "file_id": doc["id"]})
    response = await client.post(f"/v1/sessions/{session_id}/messages", json=body, headers=user.headers)
    assert response.status_code == 200, response.text
    turn = response.json()
    assert turn["status"] == "completed"
    assert f"I see the image {image_name}" in turn["output_text"]
    assert f"I read the file {doc_name}" in turn["output_text"]

    upstream_image = await _upstream_copy(client, parley, image_name)
    upstream_doc = await _upstream_copy(client, parley, doc_name)
    assert upstream_image is not None
    assert upstream_doc is not None
    assert upstream_image["purpose"] == "user_data"
    assert upstream_image["bytes"] == len(PNG)
    sent = [r["body"] for r in await sim.requests() if r["method"] == "POST" and r["path"] == "/v1/responses"]
    sent_text = json.dumps(sent[-1]["input"])
    assert upstream_image["id"] in sent_text
    assert upstream_doc["id"] in sent_text
    assert image["id"] not in sent_text

    messages = await client.get(f"/v1/sessions/{session_id}/messages", headers=user.headers)
    first = messages.json()["data"][0]
    assert first["role"] == "user"
    attached = [part for part in first["items"] if part.get("file_id")]
    assert attached == [
        {
            "type": "input_image",
            "file_id": image["id"],
            "detail": "auto",
            "filename": image_name,
            "content_type": "image/png",
            "bytes": len(PNG),
        },
        {
            "type": "input_file",
            "file_id": doc["id"],
            "filename": doc_name,
            "content_type": "application/pdf",
            "bytes": len(PDF),
        },
    ]


async def test_a_raw_upstream_id_is_404_and_never_sent(
    client: httpx.AsyncClient, parley: RunningParley, user: ApiUser, sim: Simulator
) -> None:
    name = _unique("mine.png")
    await _upload(client, user, name, PNG)
    upstream = await _upstream_copy(client, parley, name)
    assert upstream is not None
    session_id = await new_session(client, user)
    response = await client.post(
        f"/v1/sessions/{session_id}/messages", json=_message_with(upstream["id"]), headers=user.headers
    )
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "file_not_found"


async def test_the_simulator_refuses_a_file_it_does_not_know(client: httpx.AsyncClient, parley: RunningParley) -> None:
    response = await client.post(
        f"{parley.simulator_url}/v1/responses",
        headers=UPSTREAM_KEY,
        json={
            "model": "gpt-4.1-mini",
            "input": [{"role": "user", "content": [{"type": "input_image", "file_id": "file-doesnotexist"}]}],
        },
    )
    assert response.status_code == 400
    assert "file-doesnotexist" in response.json()["error"]["message"]


async def test_delete_hides_at_once_and_the_upstream_copy_goes_when_no_live_session_names_it(
    client: httpx.AsyncClient, parley: RunningParley, user: ApiUser
) -> None:
    loose_name, used_name = _unique("loose.txt"), _unique("used.png")
    loose = await _upload(client, user, loose_name, TEXT)
    used = await _upload(client, user, used_name, PNG)
    session_id = await new_session(client, user)
    sent = await client.post(
        f"/v1/sessions/{session_id}/messages", json=_message_with(used["id"]), headers=user.headers
    )
    assert sent.status_code == 200, sent.text

    # Not named anywhere: gone here and upstream.
    deleted = await client.delete(f"/v1/files/{loose['id']}", headers=user.headers)
    assert deleted.status_code == 200
    assert deleted.json() == {"id": loose["id"], "object": "file.deleted", "deleted": True}
    assert (await client.get(f"/v1/files/{loose['id']}", headers=user.headers)).status_code == 404
    assert await _upstream_copy(client, parley, loose_name) is None

    # Named by a live session: hidden at once, kept upstream for the session's history.
    assert (await client.delete(f"/v1/files/{used['id']}", headers=user.headers)).status_code == 200
    assert (await client.get(f"/v1/files/{used['id']}/content", headers=user.headers)).status_code == 404
    assert [f["id"] for f in (await client.get("/v1/files", headers=user.headers)).json()["data"]] == []
    assert await _upstream_copy(client, parley, used_name) is not None
    again = await client.post(
        f"/v1/sessions/{session_id}/messages", json=_message_with(used["id"]), headers=user.headers
    )
    assert again.status_code == 404

    # The last session naming it goes: so does the upstream copy.
    assert (await client.delete(f"/v1/sessions/{session_id}", headers=user.headers)).status_code == 200
    assert await _upstream_copy(client, parley, used_name) is None


async def test_a_branch_conversation_names_the_upstream_copy(
    client: httpx.AsyncClient, parley: RunningParley, user: ApiUser, sim: Simulator
) -> None:
    name = _unique("photo.png")
    image = await _upload(client, user, name, PNG)
    session_id = await new_session(client, user)
    first = await client.post(
        f"/v1/sessions/{session_id}/messages", json=_message_with(image["id"]), headers=user.headers
    )
    assert first.status_code == 200, first.text
    second = await client.post(
        f"/v1/sessions/{session_id}/messages", json={"input": "And now?", "stream": False}, headers=user.headers
    )
    assert second.status_code == 200, second.text
    edited = await client.post(
        f"/v1/sessions/{session_id}/messages/{second.json()['message_id']}/edit",
        json={"input": "And then?", "stream": False},
        headers=user.headers,
    )
    assert edited.status_code == 200, edited.text
    upstream = await _upstream_copy(client, parley, name)
    assert upstream is not None
    created = [r["body"] for r in await sim.requests() if r["method"] == "POST" and r["path"] == "/v1/conversations"]
    history = json.dumps(created[-1]["items"])
    assert upstream["id"] in history
    assert image["id"] not in history
