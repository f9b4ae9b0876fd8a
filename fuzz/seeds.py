"""Writes the seed corpus of every target (`fuzz/corpus/<target>/`): small valid and
almost-valid inputs for the fuzzers to start from. Run again after changing a format;
findings are added by hand beside these (named `crash-*`)."""

from __future__ import annotations

import base64
import io
import json
import sys
from pathlib import Path

from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

SHA = "a" * 64
RECORD = {"site": "store-1", "device": "kiosk-1", "source": "kiosk", "sku": "SKU-0001",
          "sha256": SHA, "size": 1000, "width": 64, "height": 48}


def _image(fmt: str, size: tuple[int, int] = (24, 16), **kw: object) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (200, 40, 40)).save(out, format=fmt, **kw)
    return out.getvalue()


def _b64(value: str) -> str:
    return base64.b64encode(value.encode()).decode()


def seeds() -> dict[str, dict[str, bytes]]:
    jpeg = _image("JPEG", quality=50)
    signed = {"manifest": {"version": 1, "artifacts": {"full": {"sha256": SHA, "size": 3}}},
              "signature": base64.b64encode(b"\0" * 64).decode(), "key_id": "k", "algorithm": "ed25519"}
    product = {"sku": "SKU-0001", "name": "Apple", "price": 1.5, "currency": "EUR"}
    return {
        "image": {"jpeg": jpeg, "png": _image("PNG"), "webp": _image("WEBP"),
                  "gif": _image("GIF"), "truncated-jpeg": jpeg[: len(jpeg) // 2]},
        "mqtt_envelope": {"bare": b"\xff\xd8\xff\xe0rest",
                          "header": b'{"sku":"SKU-0001","captured_at":"2026-11-24T10:00:00Z"}\n\xff\xd8',
                          "no-newline": b'{"sku":"x"', "list": b'[1,2]\nxx'},
        "http_meta": {"record": json.dumps(RECORD).encode(),
                      "bad-source": json.dumps({**RECORD, "source": "drone"}).encode()},
        "tus_metadata": {"record": f"record {_b64(json.dumps(RECORD))}".encode(),
                         "fields": ",".join(f"{k} {_b64(str(v))}" for k, v in RECORD.items()).encode(),
                         "empty-value": b"filename,sku ", "not-base64": b"sku !!!"},
        "tus_offset": {"zero": b"0", "big": b"18446744073709551616", "spaces": b" 12 ",
                       "negative": b"-1", "unicode-digits": "\u0661\u0662".encode()},
        "dataset_manifest": {"jsonl": (json.dumps({"sha256": SHA, "sku": "SKU-0001", "split": "train"})
                                       + "\n").encode(), "par1": b"PAR1\0\0\0\0PAR1"},
        "kv_deploy": {"model": json.dumps({"version": 3, "sha256": SHA, "size": 10,
                                           "classes": ["SKU-0001"]}).encode()},
        "kv_catalogue": {"list": json.dumps([product, {**product, "sku": "B b", "currency": "eur"}]).encode(),
                         "one": json.dumps(product).encode(),
                         "promos": json.dumps([{**product, "promotions": "abc"}]).encode()},
        "site_report": {"report": json.dumps({"site": "store-1", "version": 2, "sha256": SHA,
                                              "state": "live", "mac": "00"}).encode()},
        "catalogue_import": {"import": json.dumps({"products": [product], "source": "erp"}).encode()},
        "model_signature": {"signed": json.dumps(signed).encode(), "list": b"[]",
                            "no-artifacts": json.dumps({**signed, "manifest": {}}).encode()},
    }


def main() -> None:
    for target, files in seeds().items():
        folder = HERE / "corpus" / target
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            (folder / name).write_bytes(data)


if __name__ == "__main__":
    main()
