"""Every finding of the fuzzers, kept: the input, and the clear refusal it now gets (each
input is also a file in `fuzz/corpus/<target>/crash-*`, replayed by `test_corpus.py`)."""

from __future__ import annotations

import pytest

from edge2core.common import envelope
from edge2core.common.errors import Invalid
from edge2core.common.events import SiteModelReport
from edge2core.common.signing import SignatureError, Signer, verify_artifact
from edge2core.core.api.tus import parse_count
from edge2core.core.deliver.site_reports import report_trusted


def test_an_image_starting_with_a_brace_survives_an_empty_header() -> None:
    """atheris, mqtt_envelope: `{}\\n{` decoded to an image `{` whose re-encoding was
    undecodable (a bare payload starting with '{' reads as a header)."""
    for header in ({}, None):
        assert envelope.decode(envelope.encode(b"{", header)) == envelope.Envelope({}, b"{")
    assert envelope.decode(b"{}\n{") == envelope.Envelope({}, b"{")


@pytest.mark.parametrize("value", ["0\x1f", "7\x1c", "\x1e12", "1\x0b", "\u00a012"])
def test_a_count_with_control_characters_is_a_400_not_a_500(value: str) -> None:
    """atheris, tus_offset: str.strip() took '\\x1f' that int() then refused (ValueError: a
    500 at the tus door)."""
    with pytest.raises(Invalid) as refused:
        parse_count(value, "Upload-Offset", "offset")
    assert refused.value.code == "bad_offset"
    assert parse_count(" \t12\t ", "Upload-Offset", "offset") == 12  # HTTP's own whitespace


def test_a_site_report_with_a_non_ascii_mac_is_untrusted_not_a_crash() -> None:
    """hypothesis/atheris, site_report: hmac.compare_digest raised TypeError on a non-ASCII
    str, in the core's handler of reports arriving over the leaf link."""
    report = SiteModelReport(site="store-1", version=1, sha256="a" * 64, state="live",
                             mac="\u00e9" * 64)
    assert report_trusted(report, "e2c.sites.store-1.model", {"store-1": "tok-1"}) is False
    good = report.model_copy(update={"mac": ""}).signed("tok-1")
    assert report_trusted(good, "e2c.sites.store-1.model", {"store-1": "tok-1"}) is True


@pytest.mark.parametrize("manifest", [
    {"artifacts": {"full": [1]}},
    {"artifacts": [1]},
    {"artifacts": "abc"},
    {"artifacts": {"full": {"sha256": "x", "size": "abc"}}},
    [],
])
def test_a_signed_manifest_of_the_wrong_shape_is_refused(manifest: object) -> None:
    """atheris, model_signature: a correctly signed manifest whose artefacts were not objects
    raised AttributeError in the edge's model trust instead of SignatureError."""
    signer = Signer.generate()
    with pytest.raises(SignatureError):
        verify_artifact(b"model", signer.sign(manifest), signer.public_key)  # type: ignore[arg-type]
