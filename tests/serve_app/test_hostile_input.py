"""Hostile and malformed requests against the real ingress (in-process, no Ray): each gets a
clear 4xx JSON answer naming the field, or a timeout, and none of them holds up other clients.
The cases the fuzzer found are kept here as regular tests."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from tests.serve_app.ingress_harness import IngressApp, build_ingress, ingress_client

ITEM = {"user_id": "u1", "device_id": "d1", "entity_type": "task", "entity_id": "e1", "changed_fields": ["title"]}
LIMIT = 8192


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    with ingress_client(tmp_path, max_request_bytes=LIMIT) as (c, _, _):
        yield c


def error_of(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body["field"] and body["problem"], body
    return body


def test_a_valid_prediction_still_answers(client: TestClient) -> None:
    response = client.post("/v1/predict", json=ITEM)
    assert response.status_code == 200, response.text
    assert response.json()["model_version"] == "heuristic_v1"


def padded(size: int) -> bytes:
    """A valid predict body of exactly ``size`` bytes (padding inside a string field)."""
    base = json.dumps({**ITEM, "device_id": ""}).encode()
    return json.dumps({**ITEM, "device_id": "x" * (size - len(base))}).encode()


def test_a_body_at_the_limit_is_read_and_one_byte_over_is_413(client: TestClient) -> None:
    at_limit = padded(LIMIT)
    assert len(at_limit) == LIMIT
    # The padding makes device_id longer than its 128 characters: the body was read and validated.
    assert error_of(client.post("/v1/predict", content=at_limit), 422)["field"] == "device_id"
    over = padded(LIMIT + 1)
    assert error_of(client.post("/v1/predict", content=over), 413)["field"] == "body"


def test_an_undeclared_oversized_body_is_cut_off_at_the_limit(client: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(100):
            yield b" " * 1024

    assert error_of(client.post("/v1/predict", content=chunks()), 413)["field"] == "body"


@pytest.mark.parametrize("depth", [50, 10_000, 100_000])
def test_deeply_nested_json_is_a_4xx(tmp_path: Path, depth: int) -> None:
    with ingress_client(tmp_path, max_request_bytes=1_000_000) as (c, _, _):
        body = b"[" * depth + b"]" * depth
        response = c.post("/v1/predict", content=body)
        assert response.status_code in (400, 422), response.text
        assert response.json()["field"]
        nested_field = json.dumps({**ITEM, "entity_id": json.loads("[" * 50 + "]" * 50)})
        assert error_of(c.post("/v1/predict", content=nested_field), 422)["field"] == "entity_id"


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ('"user_id": 1e999', "user_id"),  # parses to infinity
        ('"user_id": ' + "9" * 4400, "body"),  # past Python's integer digit limit
        ('"at": "9999999999-01-01T00:00:00Z"', "at"),
        ('"changed_fields": [1e308]', "changed_fields[0]"),
    ],
)
def test_huge_numbers_are_a_4xx_naming_the_field(client: TestClient, raw: str, field: str) -> None:
    members = {k: v for k, v in ITEM.items() if not raw.startswith(f'"{k}"')}
    body = "{" + json.dumps(members)[1:-1] + ", " + raw + "}"
    response = client.post("/v1/predict", content=body.encode())
    assert response.status_code in (400, 422), response.text
    assert response.json()["field"] == field


def test_huge_numbers_in_sync_events_are_a_422(client: TestClient) -> None:
    event = {
        **ITEM,
        "event_id": "e-1",
        "synced_at": "2026-01-01T00:00:00Z",
        "conflict": False,
        "base_version": 10**30,
    }
    assert error_of(client.post("/v1/sync-events", json=[event]), 422)["field"].startswith("events[0]")


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "image/png"]
)
def test_a_body_declared_as_something_else_than_json_is_415(client: TestClient, content_type: str) -> None:
    response = client.post("/v1/predict", content=json.dumps(ITEM).encode(), headers={"content-type": content_type})
    assert error_of(response, 415)["field"] == "content-type"


@pytest.mark.parametrize(
    "content_type", [None, "application/json", "application/json; charset=utf-8", "application/vnd.x+json"]
)
def test_json_content_types_and_none_are_accepted(client: TestClient, content_type: str | None) -> None:
    headers = {} if content_type is None else {"content-type": content_type}
    response = client.post("/v1/predict", content=json.dumps(ITEM).encode(), headers=headers)
    assert response.status_code == 200, response.text


def test_a_repeated_key_is_refused_rather_than_the_last_value_winning(client: TestClient) -> None:
    body = json.dumps(ITEM)[:-1] + ', "user_id": "someone-else"}'
    assert error_of(client.post("/v1/predict", content=body.encode()), 400)["field"] == "user_id"
    nested = '{"items": [' + body + "]}"
    assert error_of(client.post("/v1/predict", content=nested.encode()), 400)["field"] == "user_id"


def test_an_unknown_empty_key_beside_items_names_the_body(client: TestClient) -> None:
    # Found by the fuzzer: the unknown key "" gave an empty field name.
    response = client.post("/v1/predict", json={"items": [ITEM], "": 0})
    assert error_of(response, 422)["field"] == "body"


def test_an_empty_key_in_an_item_names_a_field(client: TestClient) -> None:
    response = client.post("/v1/predict", json={**ITEM, "": 0})
    assert error_of(response, 422)["field"]


# --------------------------------------------------------------------------- slow clients


async def _asgi_request(
    app: IngressApp, body_parts: list[bytes], pause_s: float, complete: bool = True
) -> tuple[int, bytes, float]:
    """One request straight into the ASGI app: the body in ``body_parts`` with ``pause_s`` between
    them; with ``complete=False`` the declared body's rest never comes."""
    path = "/v1/predict"
    started = time.perf_counter()
    total = sum(len(p) for p in body_parts)
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(total + (not complete)).encode())],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 8000),
    }
    parts = list(body_parts)
    sent: dict[str, Any] = {}

    async def receive() -> dict[str, Any]:
        if not parts:
            await asyncio.sleep(3600)  # the rest of the declared body never comes
        part = parts.pop(0)
        if pause_s:
            await asyncio.sleep(pause_s)
        return {"type": "http.request", "body": part, "more_body": bool(parts) or not complete}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            sent["status"] = message["status"]
        elif message["type"] == "http.response.body":
            sent["body"] = sent.get("body", b"") + message.get("body", b"")

    await app(scope, receive, send)
    return sent["status"], sent["body"], time.perf_counter() - started


def test_slow_clients_get_408_and_do_not_slow_the_others(tmp_path: Path) -> None:
    body = json.dumps(ITEM).encode()

    async def scenario(ingress: Any) -> tuple[list[tuple[int, bytes, float]], list[float]]:
        app = IngressApp(ingress)
        # 200 slowloris clients: a few bytes, then a byte every 0.2 s of a body that never completes.
        slow = [
            asyncio.create_task(_asgi_request(app, [body[:5]] + [b" "] * 1000, pause_s=0.2, complete=False))
            for _ in range(200)
        ]
        await asyncio.sleep(0.1)
        normal = []
        for _ in range(20):
            status, answer, took = await _asgi_request(app, [body], pause_s=0.0)
            assert status == 200, answer
            normal.append(took)
        slow_results = await asyncio.gather(*slow)
        await ingress.writer.close()
        return slow_results, normal

    ingress, lookup, _ = build_ingress(tmp_path)
    ingress.body_timeout_s = 1.0
    slow_results, normal = asyncio.run(scenario(ingress))
    lookup.core.close()
    assert {status for status, _, _ in slow_results} == {408}
    assert all(json.loads(answer)["field"] == "body" for _, answer, _ in slow_results)
    assert max(took for _, _, took in slow_results) < 3.0
    normal.sort()
    assert normal[int(len(normal) * 0.95) - 1] < 0.5, normal  # the other clients' p95 stays well under a second
