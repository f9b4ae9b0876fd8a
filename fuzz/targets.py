"""Every parser and door that reads bytes from outside, as a fuzz target: `TARGETS[name](data)`.

A target feeds `data` to the real parsing code and returns quietly when the input was read or
refused with one of that door's documented refusals (the error families of
`edge2core.common.errors`, `ImageRejected`, `MalformedMessage`, `SignatureError`, pydantic's
`ValidationError`, ...). Anything else raised is a finding: a crash the door would answer
with a 500 or a dead loop. Used by atheris (`fuzz/run.py`, `make fuzz`), by hypothesis and by
the corpus replay (`tests/fuzz/`). Corpus seeds live in `fuzz/corpus/<target>/`, small files.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import cache
from typing import Any

from pydantic import ValidationError

from edge2core.common import envelope, topics
from edge2core.common.errors import DomainError
from edge2core.common.events import ModelPublished, PhotoRecord, SiteModelReport
from edge2core.common.images import ImageRejected
from edge2core.common.products import read_products, stored_product
from edge2core.common.signing import SignatureError, Signer, verify, verify_artifact
from edge2core.core.api.tus import parse_count, parse_upload_metadata, upload_record
from edge2core.core.deliver.site_reports import report_trusted
from edge2core.edge.prepare import PreparePolicy, prepare

# Small limits: the fuzzer explores decoding, not how long a 64-megapixel photo takes.
POLICY = PreparePolicy(max_bytes=2 * 1024 * 1024, max_pixels=4_000_000, long_side=256)
SHA = "a" * 64


def _text(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


def _json(data: bytes) -> Any:
    """The document as a door would read it; None when it is not JSON (a refusal)."""
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        return None


@cache
def _signer() -> Signer:
    return Signer.generate()


def image(data: bytes) -> None:
    """The edge's preparation (decode, orient, strip, resize, re-encode) of any payload."""
    try:
        prepared = prepare(data, POLICY)
    except ImageRejected:
        return
    assert prepared.data[:2] == b"\xff\xd8", "prepared photos are JPEG"
    assert max(prepared.width, prepared.height) <= POLICY.long_side


def mqtt_envelope(data: bytes) -> None:
    """A device's MQTT payload, then the capture topic and header fields the gateway reads."""
    try:
        env = envelope.decode(data)
    except envelope.MalformedMessage:
        return
    assert envelope.decode(envelope.encode(env.image, env.header)) == env  # a round trip
    try:
        topics.parse_topic(_text(env.image[:200]))
    except topics.BadTopic:
        pass


def http_meta(data: bytes) -> None:
    """`X-E2C-Meta`, the JSON photo record the edge sends with each upload."""
    try:
        record = upload_record("", _text(data), length=1000)
    except DomainError:
        return
    assert PhotoRecord.model_validate_json(record.model_dump_json()) == record


def tus_metadata(data: bytes) -> None:
    """tus `Upload-Metadata` as a stock client sends it (and the record built from it)."""
    value = _text(data)
    try:
        pairs = parse_upload_metadata(value)
    except DomainError:
        return
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in pairs.items())
    try:
        upload_record(value, None, length=1000, sha256=SHA)
    except DomainError:
        pass


def tus_offset(data: bytes) -> None:
    """`Upload-Offset` / `Upload-Length`: a non-negative decimal integer, or a 400."""
    value = _text(data)
    try:
        count = parse_count(value, "Upload-Offset", "offset")
    except DomainError:
        return
    assert count >= 0 and count == int(value.strip(" \t"))


def dataset_manifest(data: bytes) -> None:
    """A dataset manifest (Parquet, or the legacy JSON lines) as `datasets diff/export` read it."""
    import pyarrow as pa

    from edge2core.core.curate.datasets import read_manifest

    try:
        read_manifest(data)
    except (ValidationError, ValueError, pa.ArrowException, OSError):
        return


def kv_deploy(data: bytes) -> None:
    """A value of the `e2c-deploy` KV bucket: the model a site should run."""
    try:
        ModelPublished.model_validate_json(data)
    except ValueError:
        return


def kv_catalogue(data: bytes) -> None:
    """Values of the `e2c-catalogue` bucket (one product each), as the site replica reads them."""
    items = _json(data)
    values: list[Any] = items if isinstance(items, list) else [data]
    for product in read_products(values):
        assert product.sku


def site_report(data: bytes) -> None:
    """A site's model report on the leaf link, checked against its token as the core does."""
    try:
        report = SiteModelReport.model_validate_json(data)
    except ValueError:
        return
    report_trusted(report, f"e2c.sites.{report.site}.model", {report.site: "tok-1"})
    report_trusted(report, "e2c.sites.x.model", {})


def catalogue_import(data: bytes) -> None:
    """`POST /v1/catalogue/import`'s body, read and turned into catalogue products."""
    from edge2core.core.api.routers.catalogue import ImportRequest, plain

    try:
        request = ImportRequest.model_validate_json(data)
    except ValueError:
        return
    for product in request.products:
        stored = plain(product)
        assert stored_product(json.loads(stored.model_dump_json())).sku == stored.sku


def model_signature(data: bytes) -> None:
    """A signed model manifest as the edge's model trust checks it (signature, then artefact)."""
    signed = _json(data)
    public = _signer().public_key
    for document in (signed, _signer().sign(signed) if isinstance(signed, dict) else None):
        if document is None:
            continue
        try:
            verify(document, public)
            verify_artifact(data, document, public)
        except SignatureError:
            continue


TARGETS: dict[str, Callable[[bytes], None]] = {
    "image": image,
    "mqtt_envelope": mqtt_envelope,
    "http_meta": http_meta,
    "tus_metadata": tus_metadata,
    "tus_offset": tus_offset,
    "dataset_manifest": dataset_manifest,
    "kv_deploy": kv_deploy,
    "kv_catalogue": kv_catalogue,
    "site_report": site_report,
    "catalogue_import": catalogue_import,
    "model_signature": model_signature,
}
