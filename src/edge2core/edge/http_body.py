"""Reading a photo from an HTTP request body, never past its limit.

A `Content-Length` over the limit is refused before the body is read (so an `Expect:
100-continue` client never sends it), a body that grows past it is refused at that moment, and
multipart bodies are parsed as a stream in memory (nothing is written to disk).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from edge2core.common.images import ImageRejected, RejectReason

if TYPE_CHECKING:  # defined for type checkers only
    from python_multipart.multipart import MultipartCallbacks

# Room for a multipart body's boundaries, part headers and small fields around the photo.
MULTIPART_OVERHEAD = 64 * 1024
MAX_BOUNDARY = 70  # RFC 2046
BODY_DONE = "e2c.body_done"  # set in the ASGI scope once the request body was read to its end


class DoorRefusal(ValueError):
    """A request this door refuses before the gateway sees it."""

    reason = "malformed"


class MissingPhoto(DoorRefusal):
    reason = "missing_photo"


class MalformedBody(DoorRefusal):
    reason = "malformed"


def too_large(max_bytes: int) -> ImageRejected:
    return ImageRejected(RejectReason.TOO_LARGE, f"photos are limited to {max_bytes} bytes")


def _content_length(request: Request) -> int | None:
    value = request.headers.get("content-length")
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise MalformedBody(f"Content-Length {value[:40]!r} is not a number") from None


async def _stream(request: Request, limit: int, refusal: Exception) -> AsyncIterator[bytes]:
    """The body's chunks, refusing as soon as more than `limit` bytes arrived."""
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise refusal
        if chunk:
            yield chunk
    request.scope[BODY_DONE] = True


class _FormParts:
    """Callbacks for python-multipart's streaming parser: keeps the part named `file` (with or
    without a filename, whatever its declared type, RFC 7578) in memory, up to `max_bytes`."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.photo: bytearray | None = None
        self.ended = False
        self._in_photo = False
        self._headers: dict[str, str] = {}
        self._field = bytearray()
        self._value = bytearray()

    def callbacks(self) -> MultipartCallbacks:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": lambda data, start, end: self._field.extend(data[start:end]),
            "on_header_value": lambda data, start, end: self._value.extend(data[start:end]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
            "on_end": self._end,
        }

    def _part_begin(self) -> None:
        self._headers = {}
        self._in_photo = False

    def _header_end(self) -> None:
        name = self._field.decode("latin-1").strip().lower()
        self._headers[name] = self._value.decode("latin-1").strip()
        self._field.clear()
        self._value.clear()

    def _headers_finished(self) -> None:
        disposition, params = parse_options_header(self._headers.get("content-disposition", ""))
        names = {k.decode("latin-1").lower(): v for k, v in params.items()}
        if disposition != b"form-data" or names.get("name") != b"file":
            return
        if self.photo is not None:
            raise MalformedBody("send one photo per request: more than one part is named 'file'")
        self.photo = bytearray()
        self._in_photo = True

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if not self._in_photo:
            return  # other fields are skipped (the whole body is capped)
        assert self.photo is not None
        if len(self.photo) + (end - start) > self.max_bytes:
            raise too_large(self.max_bytes)
        self.photo.extend(data[start:end])

    def _part_end(self) -> None:
        self._in_photo = False

    def _end(self) -> None:
        self.ended = True


async def _read_multipart(request: Request, params: dict[bytes, bytes], max_bytes: int) -> bytes:
    boundary = {k.lower(): v for k, v in params.items()}.get(b"boundary", b"")
    if not 1 <= len(boundary) <= MAX_BOUNDARY:
        raise MalformedBody("multipart/form-data needs a boundary of 1-70 characters")
    parts = _FormParts(max_bytes)
    try:
        parser = MultipartParser(boundary, parts.callbacks())
        async for chunk in _stream(request, max_bytes + MULTIPART_OVERHEAD, too_large(max_bytes)):
            parser.write(chunk)
        parser.finalize()
    except FormParserError as exc:
        raise MalformedBody(f"the multipart body cannot be parsed: {str(exc)[:200]}") from None
    if parts.photo is None:
        raise MissingPhoto("multipart uploads carry the photo in a part named 'file'")
    if not parts.ended:
        raise MalformedBody("the multipart body ends before its closing boundary")
    return bytes(parts.photo)


async def read_photo(request: Request, max_bytes: int) -> bytes:
    """The raw body, or the multipart part named `file`; never reads past the limit."""
    media_type, params = parse_options_header(request.headers.get("content-type", ""))
    multipart = media_type == b"multipart/form-data"  # parse_options_header lower-cases it
    declared = _content_length(request)
    limit = max_bytes + MULTIPART_OVERHEAD if multipart else max_bytes
    if declared is not None and declared > limit:
        raise too_large(max_bytes)  # before reading: an Expect: 100-continue client sends nothing
    if multipart:
        return await _read_multipart(request, params, max_bytes)
    return b"".join([chunk async for chunk in _stream(request, max_bytes, too_large(max_bytes))])
