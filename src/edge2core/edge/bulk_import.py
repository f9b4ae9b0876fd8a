"""Bulk import of photos people already have: a folder sent to a site's HTTP door as a kiosk.

Each photo goes through the site exactly as a kiosk's capture does (validation, colour, EXIF
stripped, faces blurred, content address, spool, forward), so an import never bypasses the
privacy step. Layouts: ImageFolder (`DIR/<sku>/*.jpg`) and the Grocery Store Dataset
(`DIR/classes.csv` plus `DIR/<split>.txt`, SKU `SKU-<class id:04d>` as the catalogue import
names them). Resumable: a state file records each photo's outcome as it goes, so a second run
skips what is done. Idempotent by content: the site answers a photo it already holds as a
duplicate (HTTP 200) and nothing is stored twice.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import httpx
from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_exponential

from edge2core.common.fsutil import write_atomic
from edge2core.common.identifiers import IdKind, is_valid

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".heic", ".heif", ".avif"}


@dataclass(frozen=True)
class LabelledPhoto:
    """One file to send: its path relative to the import root, and its label (a SKU)."""

    relative: str
    sku: str


@dataclass(frozen=True)
class Outcome:
    """`status`: stored (201), duplicate (200), refused (4xx, with the site's reason)."""

    status: str
    sha256: str | None = None
    reason: str | None = None


class SiteUnavailable(RuntimeError):
    """The site kept failing (5xx or no connection): the import stops and can be resumed."""


def detect_layout(root: Path) -> str:
    return "grocery" if (root / "classes.csv").is_file() else "imagefolder"


def imagefolder_photos(root: Path) -> list[LabelledPhoto]:
    """`root/<label>/<file>`; the label is the SKU (checked by the identifiers rule)."""
    photos = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for path in sorted(folder.rglob("*")):
            if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
                photos.append(LabelledPhoto(str(path.relative_to(root)), folder.name))
    return photos


def grocery_photos(root: Path, split: str) -> list[LabelledPhoto]:
    """Lines `train/Fruit/Apple/.../x.jpg, <class id>, <coarse id>` of `root/<split>.txt`."""
    photos = []
    for line in (root / f"{split}.txt").read_text().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) >= 2 and parts[1].isdigit():
            photos.append(LabelledPhoto(parts[0], f"SKU-{int(parts[1]):04d}"))
    return photos


def photos_in(root: Path, layout: str = "auto", split: str = "train") -> list[LabelledPhoto]:
    """Every photo under `root` with its label. Raises ValueError for an unknown layout or a
    label that is not a valid SKU (fix the folder name: labels never become ids unchecked)."""
    layout = detect_layout(root) if layout == "auto" else layout
    if layout == "grocery":
        photos = grocery_photos(root, split)
    elif layout == "imagefolder":
        photos = imagefolder_photos(root)
    else:
        raise ValueError(f"unknown layout {layout!r}: use auto, imagefolder or grocery")
    bad = sorted({p.sku for p in photos if not is_valid(IdKind.SKU, p.sku)})
    if bad:
        raise ValueError(f"these labels are not valid SKUs: {', '.join(map(repr, bad[:5]))} "
                         f"(letters, digits, '.', '_', '-'; rename the folders)")
    return photos


class ImportState:
    """What each photo's outcome was, kept in a JSON file written atomically every few photos."""

    def __init__(self, path: Path, save_every: int = 20) -> None:
        self.path = path
        self._save_every = save_every
        self._unsaved = 0
        self.done: dict[str, dict[str, str | None]] = (
            json.loads(path.read_text()) if path.is_file() else {})

    def record(self, photo: LabelledPhoto, outcome: Outcome) -> None:
        self.done[photo.relative] = {"sku": photo.sku, **outcome.__dict__}
        self._unsaved += 1
        if self._unsaved >= self._save_every:
            self.save()

    def save(self) -> None:
        write_atomic(self.path, [json.dumps(self.done, indent=1, sort_keys=True).encode()])
        self._unsaved = 0


class _Retry(Exception):
    pass


class BulkImporter:
    """Sends photos to a site's `POST /v1/photos` as a kiosk (bearer = the kiosk's token)."""

    def __init__(self, http: httpx.Client, root: Path, state: ImportState, *,
                 attempts: int = 5, pause_s: float = 0.5) -> None:
        self._http = http
        self._root = root
        self._state = state
        self._send = retry(
            retry=retry_if_exception_type(_Retry), stop=stop_after_attempt(attempts),
            wait=wait_exponential(multiplier=pause_s, max=10), reraise=True,
        )(self._send_once)

    def run(self, photos: Iterable[LabelledPhoto],
            on_progress: Callable[[LabelledPhoto, Outcome | None], None] = lambda *_: None,
            ) -> dict[str, int]:
        """Send what the state file has not recorded yet; returns counts per status.
        Raises SiteUnavailable when the site keeps failing (run again to resume)."""
        counts: dict[str, int] = {}
        try:
            for photo in photos:
                if photo.relative in self._state.done:
                    on_progress(photo, None)
                    continue
                try:
                    outcome = self._send(photo)
                except _Retry as exc:
                    raise SiteUnavailable(f"the site keeps failing ({exc}); run again to resume")\
                        from exc
                self._state.record(photo, outcome)
                counts[outcome.status] = counts.get(outcome.status, 0) + 1
                on_progress(photo, outcome)
        finally:
            self._state.save()
        return counts

    def _send_once(self, photo: LabelledPhoto) -> Outcome:
        data = (self._root / photo.relative).read_bytes()
        try:
            response = self._http.post("/v1/photos", params={"sku": photo.sku, "source": "kiosk"},
                                       content=data)
        except httpx.TransportError as exc:
            raise _Retry(repr(exc)) from exc
        if response.status_code in (200, 201):
            body = response.json()
            return Outcome("stored" if response.status_code == 201 else "duplicate",
                           sha256=body.get("sha256"))
        if response.status_code >= 500 or response.status_code == 429:
            time.sleep(float(response.headers.get("Retry-After", "0") or 0))
            raise _Retry(f"HTTP {response.status_code}")
        try:
            reason = response.json().get("error")
        except ValueError:
            reason = f"http_{response.status_code}"
        if response.status_code in (401, 403):  # the token, not the photo: stop, do not record
            raise SiteUnavailable(f"the site refused the token ({reason}): pass a kiosk's "
                                  f"token with --token")
        return Outcome("refused", reason=reason)
