"""tus 1.0 headers, read and written for `/v1/uploads`: lengths, offsets, Upload-Metadata and
the photo record an upload declares, and the headers every answer carries.

Headers are parsed here (never by the framework's validation) so that no input reaches a 500:
what does not parse is a 400 with a stable code (`no_length`, `bad_offset`, `bad_metadata`,
...), and details never echo the input or name files or code.
"""

from __future__ import annotations

import base64
import json
import re
from email.utils import format_datetime

from pydantic import ValidationError

from edge2core.common.errors import Invalid, Unsupported
from edge2core.common.events import META_HEADER, SHA256_PATTERN, PhotoRecord
from edge2core.core.ingest.uploads import TUS_VERSION, UploadState

OFFSET_CONTENT_TYPE = "application/offset+octet-stream"
# tus lengths and offsets: non-negative decimal integers. Digits only (int() would also take
# "+5", " 5" and "5_0"); the cap keeps int() far from its digit limit, and any value this
# long is out of range anyway (refused as too large or a mismatch, never parsed as garbage).
_COUNT = re.compile(r"[0-9]{1,64}")
_SHA256 = re.compile(SHA256_PATTERN)
# Upload-Metadata keys a stock client may send instead of `record`: the record's own fields.
_RECORD_FIELDS = frozenset(PhotoRecord.model_fields)
_JSON_FIELDS = frozenset({"top_guesses", "redaction", "quality"})
_NEEDS_RECORD = (
    "Upload-Metadata needs `record` (the photo record as JSON) or the record's fields: "
    "`sha256`, `site`, `device`, `source`, `width`, `height` and any others"
)


class WrongTusVersion(Unsupported):
    """A request without `Tus-Resumable: 1.0.0` (answered 412 with the version we speak)."""

    code = "tus_version"
    headers = {"Tus-Version": TUS_VERSION}


def bad_metadata(detail: str) -> Invalid:
    return Invalid(detail, code="bad_metadata")


def check_tus(version: str | None) -> None:
    if version != TUS_VERSION:
        raise WrongTusVersion(f"Tus-Resumable must be {TUS_VERSION}")


def check_id(sha256: str) -> None:
    if not _SHA256.fullmatch(sha256):
        raise Invalid("an upload id is the photo's sha256 (64 hex digits)", code="bad_id")


def check_content_type(content_type: str) -> None:
    if content_type.split(";")[0].strip().lower() != OFFSET_CONTENT_TYPE:
        raise Unsupported(f"PATCH bodies are {OFFSET_CONTENT_TYPE}", code="content_type")


def parse_upload_metadata(value: str) -> dict[str, str]:
    """tus Upload-Metadata: comma-separated `key base64(value)` pairs; keys are unique."""
    pairs: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in value.split(","))):
        key, _, encoded = item.partition(" ")
        encoded = encoded.strip()
        if key in pairs:
            raise bad_metadata(f"Upload-Metadata gives {key[:64]!r} twice")
        try:
            pairs[key] = base64.b64decode(encoded, validate=True).decode() if encoded else ""
        except ValueError as exc:  # not base64, not ASCII, or not UTF-8 once decoded
            raise bad_metadata(
                f"Upload-Metadata {key[:64]!r} is not base64 of UTF-8 text") from exc
    return pairs


def parse_count(value: str | None, header: str, what: str) -> int:
    """A tus length or offset header; refuses (400 `no_<what>`, `bad_<what>`) what is missing
    or not a plain integer."""
    if value is None:
        raise Invalid(f"{header} is required", code=f"no_{what}")
    # HTTP's optional whitespace is space and tab; str.strip() would also take control
    # characters that int() then refuses (a 500, found by fuzzing).
    digits = value.strip(" \t")
    if not _COUNT.fullmatch(digits):
        raise Invalid(f"{header} must be a non-negative integer in decimal digits",
                      code=f"bad_{what}")
    return int(digits)


def positive_length(value: str | None) -> int:
    """Upload-Length: a photo has at least one byte (no deferred lengths here)."""
    length = parse_count(value, "Upload-Length", "length")
    if length < 1:
        raise Invalid("Upload-Length must be a positive integer", code="bad_length")
    return length


def upload_record(
    upload_metadata: str, meta: str | None, length: int, sha256: str | None = None
) -> PhotoRecord:
    """The photo record an upload declares: `X-E2C-Meta`, else Upload-Metadata `record` (the
    JSON, as the edge sends it), else one Upload-Metadata key per record field (stock
    clients). `size` defaults to Upload-Length; `sha256` to the URL's id."""
    pairs = parse_upload_metadata(upload_metadata)
    raw = meta or pairs.get("record")
    try:
        if raw:
            record = PhotoRecord.model_validate_json(raw)
        else:
            record = PhotoRecord.model_validate(_record_fields(pairs, length, sha256))
    except ValidationError as exc:
        raise bad_metadata(f"the photo record is invalid: {validation_summary(exc)}") from exc
    if sha256 is not None and record.sha256 != sha256:
        raise bad_metadata("the URL and the record name different ids")
    return record


def _record_fields(pairs: dict[str, str], length: int, sha256: str | None) -> dict[str, object]:
    fields: dict[str, object] = {k: v for k, v in pairs.items() if k in _RECORD_FIELDS and v}
    if not fields:
        raise bad_metadata(_NEEDS_RECORD)
    if sha256 is not None:
        fields.setdefault("sha256", sha256)
    fields.setdefault("size", length)
    for name in _JSON_FIELDS & fields.keys():
        try:
            fields[name] = json.loads(str(fields[name]))
        except (ValueError, RecursionError) as exc:  # deep nesting: RecursionError
            raise bad_metadata(f"Upload-Metadata {name!r} is not JSON") from exc
    return fields


def validation_summary(exc: ValidationError) -> str:
    """Which fields are wrong and why, without echoing the input or pointing anywhere."""
    problems = []
    for error in exc.errors(include_url=False, include_input=False, include_context=False)[:5]:
        if error["type"] == "json_invalid":
            return "not valid JSON"
        where = ".".join(str(part) for part in error["loc"]) or "record"
        problems.append(f"{where}: {error['msg']}")
    return "; ".join(problems)


def tus_headers(state: UploadState | None = None) -> dict[str, str]:
    """The headers of every tus answer, with the upload's offset, length and proof if known."""
    headers = {"Tus-Resumable": TUS_VERSION, "Cache-Control": "no-store"}
    if state is not None:
        headers["Upload-Offset"] = str(state.offset)
        headers["Upload-Length"] = str(state.length)
        if state.done is None:
            headers["Upload-Expires"] = format_datetime(state.expires_at, usegmt=True)
        else:
            headers["X-E2C-Key"] = state.done.key
            headers["X-E2C-Created"] = "true" if state.done.created else "false"
            if state.done.erased:
                headers["X-E2C-Erased"] = "true"
    return headers


# --- the OpenAPI document of the tus routes ----------------------------------------------------
# The routes read their headers themselves (above), so the framework cannot describe them: these
# are the header parameters, bodies and answer headers the routes really take and give.

_COUNT_SCHEMA = {"type": "integer", "minimum": 0, "maximum": 2**63 - 1}


def _header(name: str, description: str, schema: dict[str, object],
            required: bool = True) -> dict[str, object]:
    return {"name": name, "in": "header", "required": required, "description": description,
            "schema": schema}


TUS_RESUMABLE_PARAMETER = _header(
    "Tus-Resumable", f"the tus version the client speaks; another (or none) is refused 412 "
    f"`tus_version`, with `Tus-Version: {TUS_VERSION}`", {"type": "string", "enum": [TUS_VERSION]})
UPLOAD_LENGTH_PARAMETER = _header(
    "Upload-Length", "the photo's size in bytes (decimal digits; no deferred length): missing "
    "or malformed is 400 `no_length`/`bad_length`, over the core's limit (`Tus-Max-Size`, "
    "OPTIONS) 413, another than the record's `size` 422 `size_mismatch`",
    {**_COUNT_SCHEMA, "minimum": 1})
UPLOAD_OFFSET_PARAMETER = _header(
    "Upload-Offset", "where this body goes (decimal digits): the upload's offset, else 409 "
    "`offset_mismatch` with the offset it is at", _COUNT_SCHEMA)
UPLOAD_METADATA_PARAMETER = _header(
    "Upload-Metadata", "tus metadata, comma-separated `key base64(value)` pairs: `record` (the "
    "photo record as JSON) or one key per record field (`sha256`, `site`, `device`, `source`, "
    "`width`, `height`, ...; `size` defaults to Upload-Length). Needed unless X-E2C-Meta "
    "gives the record; what does not parse, or is not a valid record, is 400 `bad_metadata`",
    {"type": "string"}, required=False)
META_PARAMETER = _header(
    META_HEADER, "the photo record as JSON (the edge's way; wins over Upload-Metadata)",
    {"type": "string"}, required=False)

_DIGITS = {"type": "integer", "minimum": 0}
TUS_VERSION_HEADER = {"required": True, "description": "the tus version this server speaks",
                      "schema": {"type": "string", "enum": [TUS_VERSION]}}
UPLOAD_HEADERS: dict[str, dict[str, object]] = {
    "Tus-Resumable": TUS_VERSION_HEADER,
    "Upload-Offset": {"description": "how many bytes the core holds durably",
                      "schema": _DIGITS},
    "Upload-Length": {"description": "the upload's declared length", "schema": _DIGITS},
    "Upload-Expires": {"description": "when an unfinished upload is dropped (RFC 9110 date)",
                       "schema": {"type": "string"}},
    "X-E2C-Key": {"description": "the stored photo's key: the only proof of storage",
                  "schema": {"type": "string"}},
    "X-E2C-Created": {"description": "whether this upload stored the photo (else a replay)",
                      "schema": {"type": "string", "enum": ["true", "false"]}},
    "X-E2C-Erased": {"description": "the photo was erased (privacy); nothing is stored",
                     "schema": {"type": "string", "enum": ["true"]}},
}
LOCATION_HEADER = {"required": True, "description": "the upload's URL",
                   "schema": {"type": "string"}}
OFFSET_BODY = {"requestBody": {
    "required": True, "description": "the bytes from Upload-Offset on",
    "content": {OFFSET_CONTENT_TYPE: {"schema": {"type": "string", "format": "binary"}}}}}
