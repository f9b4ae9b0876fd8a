"""The edge's HTTP door against what the field sent it (cases 9 and 10 of field-2026-11 and the
findings beside them): RFC 7578 multipart, body limits applied while reading (and before, from
Content-Length and `Expect: 100-continue`), ids checked by the one rule, clean error bodies,
500 only for bugs (logged with their traceback), near-duplicates answered with the kept size.
"""

from __future__ import annotations

import io
import json
import logging
import re
import socket
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image

from edge2core.common.events import CaptureMeta, Source
from edge2core.common.logging import configure_logging
from edge2core.edge.api import MULTIPART_OVERHEAD, create_edge_app
from edge2core.edge.dedup import NearDuplicateWindow
from edge2core.edge.devices import DeviceRegistry, DeviceRole
from edge2core.edge.intake import Intake
from edge2core.edge.prepare import PreparePolicy
from edge2core.edge.service import EdgeParts, status_report
from edge2core.edge.spool import Spool
from edge2core.sim.synthetic import render_photo
from tests.edge.test_edge_http import MAX_BYTES, SITE, build_edge, photo
from tests.support.backends import CoreServer
from tests.support.paths import CASES

CASE_9 = CASES / "9-multipart-no-filename.bin"
MULTIPART_9 = "multipart/form-data; boundary=XbOuNdArYx"
LEAKS = re.compile(r'File "|\.py\b|line \d+|Traceback|/work/|site-packages', re.IGNORECASE)


@dataclass
class Door:
    app: FastAPI
    client: TestClient
    parts: EdgeParts
    token: str | None


@pytest.fixture
def make_door(tmp_path: Path) -> Iterator[Callable[..., Door]]:
    opened: list[Door] = []

    def make(*, identity: bool = False) -> Door:
        root = tmp_path / f"edge{len(opened)}"
        parts, settings = build_edge(root, None)
        registry = DeviceRegistry(root / "devices.json") if identity else None
        token = registry.add("kiosk-1", DeviceRole.KIOSK) if registry else None
        app = create_edge_app(parts.gateway, SITE, lambda: status_report(settings, parts),
                              MAX_BYTES, devices=registry)
        client = TestClient(app)  # raise_server_exceptions: nothing may escape the app
        client.__enter__()
        door = Door(app, client, parts, token)
        opened.append(door)
        return door

    yield make
    for door in opened:
        door.client.__exit__(None, None, None)
        door.parts.gateway.close()
        door.parts.spool.close()


@pytest.fixture
def door(make_door: Callable[..., Door]) -> Door:
    return make_door()


def assert_clean_refusal(response: Any, status: int | None = None,
                         error: str | None = None) -> None:
    if status is not None:
        assert response.status_code == status, response.text
    assert 400 <= response.status_code < 500, response.text
    body = response.json()
    assert set(body) == {"error", "detail"}, body
    assert isinstance(body["detail"], str) and body["detail"]
    if error is not None:
        assert body["error"] == error, body
    assert not LEAKS.search(response.text), response.text


def multipart(parts: list[tuple[str, bytes]], boundary: str = "XbOuNdArYx") -> bytes:
    """A multipart body from (raw part headers, data) pairs, exactly as given."""
    out = b""
    for headers, data in parts:
        out += f"--{boundary}\r\n{headers}\r\n\r\n".encode() + data + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


def post_raw_body(client: TestClient, body: bytes, content_type: str, **params: str) -> Any:
    query = {"device": "kiosk-1", "sku": "SKU-0002", **params}
    return client.post("/v1/photos", params=query, content=body,
                       headers={"Content-Type": content_type})


# --------------------------------------------------------------------------- case 9: RFC 7578


def case_9_bytes() -> tuple[bytes, bytes]:
    """The same shape as the field's capture: part `file`, no filename, image/jpeg."""
    jpeg = render_photo(2, 5)
    part = 'Content-Disposition: form-data; name="file"\r\nContent-Type: image/jpeg'
    return multipart([(part, jpeg)]), jpeg


def test_case_9_field_capture_is_accepted(door: Door) -> None:
    if not CASE_9.is_file():
        pytest.skip(f"field cases not found at {CASES}")
    body = CASE_9.read_bytes()
    response = post_raw_body(door.client, body, "multipart/form-data; boundary=XbOuNdArYx")
    assert response.status_code == 201, response.text
    # The part's bytes were the photo, exactly: the same JPEG sent raw is a duplicate of it.
    jpeg = body.split(b"\r\n\r\n", 1)[1].rsplit(b"\r\n--XbOuNdArYx--", 1)[0]
    again = post_raw_body(door.client, jpeg, "image/jpeg")
    assert again.status_code == 200 and again.json()["sha256"] == response.json()["sha256"]


@pytest.mark.parametrize("content_type,part_headers", [
    ("multipart/form-data; boundary=XbOuNdArYx",
     'Content-Disposition: form-data; name="file"\r\nContent-Type: image/jpeg'),
    ("Multipart/Form-Data; Boundary=XbOuNdArYx",  # media types and parameter names: any case
     'content-disposition: Form-Data; NAME="file"\r\nContent-Type: IMAGE/JPEG'),
    ('MULTIPART/FORM-DATA; charset=utf-8; boundary="XbOuNdArYx"',
     'Content-Disposition: form-data; name=file'),  # no type: text/plain by RFC 7578, still it
    ("multipart/form-data; boundary=XbOuNdArYx",
     'Content-Disposition: form-data; name="file"; filename="shot.jpg"\r\n'
     'Content-Type: application/octet-stream'),
], ids=["no_filename", "mixed_case", "no_type_quoted_boundary", "with_filename"])
def test_multipart_part_named_file_is_the_photo(door: Door, content_type: str,
                                                part_headers: str) -> None:
    jpeg = render_photo(1, 7)
    other = ('Content-Disposition: form-data; name="note"', b"ignored")
    body = multipart([other, (part_headers, jpeg)])
    response = post_raw_body(door.client, body, content_type)
    assert response.status_code == 201, response.text
    (item,) = door.parts.spool.pending(5)
    assert (item.record.device, item.record.sku) == ("kiosk-1", "SKU-0002")
    assert post_raw_body(door.client, jpeg, "image/jpeg").json() == {**response.json(),
                                                                     "duplicate": True}


def test_case_9_built_bytes_over_recognize_too(door: Door) -> None:
    body, _jpeg = case_9_bytes()
    response = door.client.post("/v1/recognize", params={"device": "phone-1"}, content=body,
                                headers={"Content-Type": MULTIPART_9})
    # No model on this edge: the photo was found and the request reached the recogniser.
    assert response.status_code == 503 and response.json()["error"] == "no_model", response.text


@pytest.mark.parametrize("content_type,body,error", [
    ("multipart/form-data", case_9_bytes()[0], "malformed"),  # no boundary
    ("multipart/form-data; boundary=" + "b" * 71, case_9_bytes()[0], "malformed"),
    ("multipart/form-data; boundary=XbOuNdArYx", case_9_bytes()[0][:5000], "malformed"),  # cut
    ("multipart/form-data; boundary=XbOuNdArYx", b"not multipart at all", "malformed"),
    ("multipart/form-data; boundary=XbOuNdArYx",
     multipart([('Content-Disposition: form-data; name="photo"', b"x")]), "missing_photo"),
    ("multipart/form-data; boundary=XbOuNdArYx",
     multipart([('Content-Disposition: form-data; name="file"', render_photo(0, 1))] * 2),
     "malformed"),  # two photos in one request
    ("multipart/form-data; boundary=XbOuNdArYx",
     multipart([('Content-Disposition: attachment; name="file"', render_photo(0, 1))]),
     "missing_photo"),  # not form-data
    ("multipart/form-data; boundary=XbOuNdArYx",
     multipart([("X-No-Disposition: 1", render_photo(0, 1))]), "missing_photo"),
], ids=["no_boundary", "long_boundary", "truncated", "garbage", "other_field", "two_files",
        "attachment", "no_disposition"])
def test_bad_multipart_is_refused_cleanly(door: Door, content_type: str, body: bytes,
                                          error: str) -> None:
    assert_clean_refusal(post_raw_body(door.client, body, content_type), 400, error)
    assert door.parts.spool.stats().items == 0
    assert post_raw_body(door.client, render_photo(0, 2), "image/jpeg").status_code == 201


# --------------------------------------------------------------------------- case 10: limits


@dataclass
class AsgiResult:
    status: int
    headers: dict[str, str]
    body: bytes
    consumed: int  # body bytes the app took from the server
    receives: int  # times the app asked for body


async def asgi_post(app: FastAPI, path: str, query: str, headers: dict[str, str],
                    chunks: AsyncIterator[bytes] | None) -> AsgiResult:
    """One request straight through the ASGI interface, counting what the app reads."""
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": path, "raw_path": path.encode(), "root_path": "",
        "query_string": query.encode(), "server": ("127.0.0.1", 80), "client": ("127.0.0.1", 1),
        "headers": [(k.lower().encode(), v.encode("latin-1")) for k, v in headers.items()],
    }
    consumed = receives = 0
    sent: list[dict] = []

    async def receive() -> dict:
        nonlocal consumed, receives
        receives += 1
        if chunks is None:
            return {"type": "http.request", "body": b"", "more_body": False}
        try:
            chunk = await anext(chunks)
        except StopAsyncIteration:
            return {"type": "http.request", "body": b"", "more_body": False}
        consumed += len(chunk)
        return {"type": "http.request", "body": chunk, "more_body": True}

    async def send(message: dict) -> None:
        sent.append(message)

    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    response_headers = {k.decode().lower(): v.decode() for k, v in start["headers"]}
    return AsgiResult(start["status"], response_headers, body, consumed, receives)


CHUNK = 1 << 20


async def endless(prefix: bytes, total: int) -> AsyncIterator[bytes]:
    """`prefix`, then zeros up to `total` bytes, a MiB at a time, made as they are asked for."""
    yield prefix
    zeros = b"\0" * CHUNK
    for _ in range(total // CHUNK):
        yield zeros


MULTIPART_HEAD = (b'--e2cboundary1234\r\nContent-Disposition: form-data; name="file"; '
                  b'filename="x.jpg"\r\nContent-Type: image/jpeg\r\n\r\n\xff\xd8\xff')


@pytest.mark.parametrize("kind", ["multipart", "raw"])
async def test_case_10_body_over_the_limit_is_refused_while_reading(door: Door, kind: str) -> None:
    """A 64 MiB body (1 GiB in the field) sent without Content-Length: the app stops at the
    limit. The old door read the whole multipart part into a temporary file first."""
    multi = kind == "multipart"
    headers = {"authorization": "Bearer x",
               "content-type": ("multipart/form-data; boundary=e2cboundary1234" if multi
                                else "image/jpeg")}
    result = await asgi_post(door.app, "/v1/photos", "device=kiosk-1&sku=SKU-0002", headers,
                             endless(MULTIPART_HEAD if multi else b"\xff\xd8\xff", 64 * CHUNK))
    assert result.status == 413, result.body
    assert json.loads(result.body)["error"] == "too_large"
    limit = MAX_BYTES + (MULTIPART_OVERHEAD if multi else 0)
    assert result.consumed <= limit + CHUNK + len(MULTIPART_HEAD), result.consumed
    assert result.headers.get("connection") == "close"  # nothing more is taken in
    assert door.parts.spool.stats().items == 0


async def test_multipart_with_a_small_photo_and_large_other_fields_is_capped(door: Door) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield (b'--b1\r\nContent-Disposition: form-data; name="file"\r\n\r\n' + render_photo(0, 3)
               + b'\r\n--b1\r\nContent-Disposition: form-data; name="padding"\r\n\r\n')
        for _ in range(32):
            yield b"p" * CHUNK

    result = await asgi_post(door.app, "/v1/photos", "device=kiosk-1&sku=SKU-0002",
                             {"content-type": "multipart/form-data; boundary=b1"}, chunks())
    assert result.status == 413
    assert result.consumed <= MAX_BYTES + MULTIPART_OVERHEAD + 2 * CHUNK


@pytest.mark.parametrize("content_type,length", [
    ("image/jpeg", MAX_BYTES + 1),
    ("multipart/form-data; boundary=e2cboundary1234", MAX_BYTES + MULTIPART_OVERHEAD + 1),
    ("image/jpeg", 1 << 30),
])
async def test_content_length_over_the_limit_is_refused_before_reading(
    door: Door, content_type: str, length: int
) -> None:
    result = await asgi_post(door.app, "/v1/photos", "device=kiosk-1&sku=SKU-0002",
                             {"content-type": content_type, "content-length": str(length)},
                             endless(MULTIPART_HEAD, length))
    assert result.status == 413 and json.loads(result.body)["error"] == "too_large"
    assert result.receives == 0 and result.consumed == 0


def read_response(sock: socket.socket) -> tuple[str, dict[str, str], bytes]:
    """One HTTP/1.1 response (status line, headers, Content-Length body) off a socket."""
    data = b""
    while b"\r\n\r\n" not in data:
        more = sock.recv(65536)
        if not more:
            raise AssertionError(f"connection closed after {data!r}")
        data += more
    head, rest = data.split(b"\r\n\r\n", 1)
    status, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        more = sock.recv(65536)
        if not more:
            break
        rest += more
    return status, headers, rest[:length]


def request_head(length: int, *, expect: bool, token: str) -> bytes:
    lines = ["POST /v1/photos?sku=SKU-0002 HTTP/1.1", "Host: edge", "Content-Type: image/jpeg",
             f"Content-Length: {length}", f"Authorization: Bearer {token}"]
    if expect:
        lines.append("Expect: 100-continue")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def closed_by_server(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


@pytest.fixture
def served(make_door: Callable[..., Door]) -> Iterator[tuple[int, Door]]:
    """A door with device identity, on uvicorn (its real HTTP handling of 100-continue)."""
    door = make_door(identity=True)
    with CoreServer(door.app) as server:
        yield server.port, door


def test_expect_100_continue_over_the_limit_gets_413_and_no_continue(
    served: tuple[int, Door],
) -> None:
    port, door = served
    assert door.token
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request_head(1 << 30, expect=True, token=door.token))
        status, headers, body = read_response(sock)
        # uvicorn says "100 Continue" only when the app first reads the body: it never did.
        assert status.startswith("HTTP/1.1 413"), status
        assert json.loads(body)["error"] == "too_large"
        assert headers.get("connection") == "close"
        assert closed_by_server(sock)


def test_content_length_over_the_limit_is_answered_without_the_body(
    served: tuple[int, Door],
) -> None:
    port, door = served
    assert door.token
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request_head(MAX_BYTES + 1, expect=False, token=door.token))  # no body sent
        status, _headers, body = read_response(sock)
        assert status.startswith("HTTP/1.1 413") and json.loads(body)["error"] == "too_large"


def test_expect_100_continue_within_the_limit_continues(served: tuple[int, Door]) -> None:
    port, door = served
    assert door.token
    jpeg = render_photo(0, 9)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request_head(len(jpeg), expect=True, token=door.token))
        status, _headers, _body = read_response(sock)
        assert status.startswith("HTTP/1.1 100"), status
        sock.sendall(jpeg)
        status, _headers, body = read_response(sock)
        assert status.startswith("HTTP/1.1 201"), (status, body)
    assert door.parts.spool.stats().items == 1


def test_refused_token_with_expect_closes_without_reading(served: tuple[int, Door]) -> None:
    port, _door = served
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request_head(1000, expect=True, token="forged"))
        status, headers, body = read_response(sock)
        assert status.startswith("HTTP/1.1 401"), status
        assert json.loads(body)["error"] == "unknown_device"
        assert headers.get("www-authenticate") == "Bearer"
        # The client held its body back: the connection cannot carry another request.
        assert headers.get("connection") == "close" and closed_by_server(sock)


# --------------------------------------------------------------------------- ids


BAD_IDS = ["Käse-01", "../../e2c-escape", "kiosk.1", "kiosk/1", "", "-lead", "k" * 65,
           "kiosk-1\n", "a b", "%00"]


ID_CASES = [(route, name, value)
            for route, name in [("/v1/photos", "device"), ("/v1/photos", "sku"),
                                ("/v1/recognize", "device"), ("/v1/recognize", "request_id")]
            for value in BAD_IDS
            if not (name == "sku" and value == "kiosk.1")]  # a dot inside is fine in a SKU


@pytest.mark.parametrize("route,name,value", ID_CASES,
                         ids=[f"{r}-{n}-{v!r}" for r, n, v in ID_CASES])
def test_invalid_ids_are_refused_before_anything_is_stored(
    door: Door, route: str, name: str, value: str
) -> None:
    params = {"device": "kiosk-1", "sku": "SKU-0001", name: value}
    if route == "/v1/recognize":
        params.pop("sku")
    response = door.client.post(route, params=params, content=photo(),
                                headers={"Content-Type": "image/jpeg"})
    assert_clean_refusal(response, 400, "invalid_id")
    assert door.parts.spool.stats().items == 0


def test_invalid_device_id_is_refused_with_identity_on(make_door: Callable[..., Door]) -> None:
    door = make_door(identity=True)
    response = door.client.post("/v1/photos", params={"device": "kiosk/1", "sku": "SKU-0001"},
                                content=photo(), headers={"Authorization": f"Bearer {door.token}"})
    assert_clean_refusal(response, 400, "invalid_id")


def test_sku_with_a_dot_inside_is_accepted(door: Door) -> None:
    response = post_raw_body(door.client, photo(), "image/jpeg", sku="milk-1.5l")
    assert response.status_code == 201, response.text


# --------------------------------------------------------------------------- error bodies


HOSTILE_QUERIES = [
    ("source=robot", "malformed"),
    ("captured_at=yesterday", "malformed"),
    ("captured_at=2026-11-24T10:00:00", "malformed"),  # no time zone
    ("captured_at=1700000000", "malformed"),
    ("captured_at=0001-01-01T00:00:00%2B23:59", "malformed"),  # not representable in UTC
    ("captured_at=2026-02-30T10:00:00Z", "malformed"),
    ("sku=%ff%fe", "invalid_id"),
    ("sku=" + "%E2%80%AE" * 30, "invalid_id"),
    ("device=%00", "invalid_id"),
    ("source=kiosk&source=shopper&sku=" + "x" * 5000, "invalid_id"),
]


@pytest.mark.parametrize("query,error", HOSTILE_QUERIES, ids=[q[:40] for q, _ in HOSTILE_QUERIES])
@pytest.mark.parametrize("identity", [False, True], ids=["open", "identity"])
def test_error_bodies_never_carry_paths_or_tracebacks(
    make_door: Callable[..., Door], query: str, error: str, identity: bool
) -> None:
    """Refused before any token is looked at, and without the server's file names or lines."""
    door = make_door(identity=identity)
    base = "device=kiosk-1&sku=SKU-0001&" if "sku=" not in query else "device=kiosk-1&"
    if "device=" in query:
        base = "sku=SKU-0001&"
    response = door.client.post(f"/v1/photos?{base}{query}", content=photo(),
                                headers={"Content-Type": "image/jpeg"})
    assert_clean_refusal(response, 400, error)


def test_unknown_routes_and_methods_answer_the_error_shape(door: Door) -> None:
    missing = door.client.get("/v1/nothing-here")
    assert_clean_refusal(missing, 404, "not_found")
    wrong = door.client.delete("/v1/photos")
    assert_clean_refusal(wrong, 405, "method_not_allowed")
    assert wrong.headers["allow"] == "POST"


def test_odd_requests_get_4xx(door: Door) -> None:
    client = door.client
    odd = [
        client.post("/v1/photos?device=kiosk-1&sku=SKU-0001", content=b""),
        client.post("/v1/photos?device=kiosk-1&sku=SKU-0001", content=b"\0" * 10,
                    headers={"Content-Type": b"text/plain; charset=\xff"}),
        client.post("/v1/photos?device=kiosk-1&sku=SKU-0001", content=b"x",
                    headers={"Content-Type": "multipart/form-data; boundary=a; boundary=b"}),
        client.post("/v1/photos?device=kiosk-1&sku=S", content=b"GIF89a" + b"\0" * 40),
        client.post("/v1/recognize", content=render_photo(0, 1)),  # no device: anonymous
    ]
    for response in odd[:-1]:
        assert_clean_refusal(response)
    assert odd[-1].status_code == 503  # the anonymous request was fine; no model yet


async def test_unreadable_content_length_is_refused(door: Door) -> None:
    result = await asgi_post(door.app, "/v1/photos", "device=kiosk-1&sku=SKU-0001",
                             {"content-type": "image/jpeg", "content-length": "many"}, None)
    assert result.status == 400 and json.loads(result.body)["error"] == "malformed"


# --------------------------------------------------------------------------- bugs: 500


class Kaboom(RuntimeError):
    """Not anything the door knows: a bug."""


@pytest.fixture
def json_log(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    import structlog

    root = logging.getLogger()
    saved = (root.handlers[:], root.level, structlog.get_config())
    buffer = io.StringIO()
    monkeypatch.setattr(sys, "stderr", buffer)
    configure_logging(json=True)
    yield buffer
    root.handlers[:], level, config = saved
    root.setLevel(level)
    structlog.configure(**config)


def logged(buffer: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in buffer.getvalue().splitlines() if line.startswith("{")]


@pytest.mark.parametrize("route", ["/v1/photos", "/v1/recognize", "/v1/status"])
def test_a_bug_is_a_clean_500_logged_with_its_traceback_and_the_door_keeps_serving(
    make_door: Callable[..., Door], monkeypatch: pytest.MonkeyPatch, json_log: io.StringIO,
    route: str
) -> None:
    door = make_door()

    def explode(*_args: object, **_kwargs: object) -> Any:
        raise Kaboom("the gateway fell over at /srv/secret/path.py line 7")

    async def explode_async(*args: object, **kwargs: object) -> Any:
        explode()

    monkeypatch.setattr(door.parts.gateway, "capture", explode)
    monkeypatch.setattr(door.parts.gateway, "recognize_async", explode_async)
    monkeypatch.setattr(door.parts.spool, "stats", explode)  # what /v1/status reads
    if route == "/v1/status":
        response = door.client.get(route)
    else:
        response = door.client.post(route, params={"device": "kiosk-1", "sku": "SKU-0001"},
                                    content=photo(), headers={"Content-Type": "image/jpeg"})
    assert response.status_code == 500, response.text
    body = response.json()
    assert set(body) == {"error", "detail"} and body["error"] == "internal_error"
    assert "Kaboom" not in response.text and "secret" not in response.text
    assert not LEAKS.search(response.text)

    (entry,) = [e for e in logged(json_log) if e.get("event") == "request failed"]
    assert entry["level"] == "error" and entry["path"] == route
    assert entry["exception"]["type"].endswith("Kaboom")
    assert "the gateway fell over" in entry["exception"]["message"]
    assert "Traceback" in entry["exception"]["traceback"]
    assert entry["incident"] in body["detail"]

    monkeypatch.undo()  # the bug is fixed; the same app goes on
    assert door.client.get("/healthz").json() == {"status": "ok"}
    assert post_raw_body(door.client, photo(), "image/jpeg").status_code == 201


# --------------------------------------------------------------------------- near-duplicates


def test_near_duplicate_answer_names_the_kept_photo_with_its_size(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", 10**9)
    intake = Intake("s1", PreparePolicy(), spool, near_duplicates=NearDuplicateWindow(10, 4))
    meta = CaptureMeta(site="s1", device="kiosk-1", source=Source.KIOSK, sku="SKU-3")
    with Image.open(io.BytesIO(render_photo(1, 4))) as im:
        base = im.convert("RGB")

    def jpeg(quality: int) -> bytes:
        out = io.BytesIO()
        base.save(out, format="JPEG", quality=quality)
        return out.getvalue()

    first = intake.accept(jpeg(95), meta, door="test")
    second_prepared = intake.prepare(jpeg(40))
    assert len(second_prepared.data) != first.size  # the two photos' sizes differ
    second = intake.accept(jpeg(40), meta, door="test")
    assert second.duplicate and second.sha256 == first.sha256
    assert second.size == first.size == len(spool.read(first.sha256))
    spool.close()
