"""The RTSP camera door: watches IP cameras, keeps frames where the scene changed, and passes
them through the gateway as photos from a `camera` source.

One thread per camera decodes the stream with PyAV (FFmpeg), samples frames at `sample_fps`,
and keeps a frame only when `SceneSampler` says the scene changed. A kept frame:
- with a model live: is recognised at the edge (the gateway's inference pool); the answer is
  published as a `camera.recognised` event, and an unsure frame is kept for labelling like a
  shopper's photo (the gateway does that);
- without a model: is spooled as an unlabelled camera photo, for the core to label.
A camera that drops or stalls (no packet for `stall_timeout_s`) is reconnected with exponential
backoff; the site's status shows its state, reconnects and last error. Credentials come from
the site's secrets (`camera_credentials`) and never appear in logs or status.
"""

from __future__ import annotations

import io
import json
import threading
import time
import uuid
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import av
import numpy as np

from edge2core.common.events import CaptureMeta, Source
from edge2core.common.logging import get_logger
from edge2core.common.metrics import PHOTOS_REJECTED
from edge2core.config import CameraSettings
from edge2core.edge.doors.plugin import Door, DoorContext, EventPublisher
from edge2core.edge.doors.scene import THUMB_H, THUMB_W, SceneSampler
from edge2core.edge.gateway import CAPTURE_ERRORS, Gateway, error_reason
from edge2core.edge.inference import Answer, NoModel
from edge2core.edge.inference_pool import Overloaded
from edge2core.edge.spool import SpoolFull

log = get_logger(__name__)

DOOR = "rtsp"
BACKOFF_MIN_S, BACKOFF_MAX_S = 0.5, 30.0
JPEG_QUALITY = 92


def with_credentials(url: str, credentials: str | None) -> str:
    """`url` with `user:password` put in (each part URL-quoted); unchanged without any."""
    if not credentials:
        return url
    user, _, password = credentials.partition(":")
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{host}"
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


class CameraDoor:
    """One camera (see module doc)."""

    def __init__(self, camera: CameraSettings, site: str, gateway: Gateway,
                 publish_event: EventPublisher, credentials: str | None = None, *,
                 open_timeout_s: float = 10.0) -> None:
        self.name = f"rtsp:{camera.name}"
        self._camera = camera
        self._site = site
        self._gateway = gateway
        self._publish_event = publish_event
        self._url = with_credentials(camera.url, credentials)
        self._timeouts = (open_timeout_s, camera.stall_timeout_s)
        self.sampler = SceneSampler(camera.sample_fps, camera.min_interval_s, camera.change_threshold)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._state = "stopped"
        self._reconnects = 0
        self._last_error: str | None = None
        self._last_frame_at: float | None = None
        self._outcomes: dict[str, int] = {}
        self._outcomes_lock = threading.Lock()  # counted from the inference pool's threads too

    # --- the Door interface -----------------------------------------------------------------

    def start(self) -> None:
        """Returns at once: the camera is reached in the background (it may be down now)."""
        self._state = "connecting"
        self._thread = threading.Thread(target=self._run, name=f"e2c-{self.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self._timeouts[1] + 5)
        self._state = "stopped"

    def status(self) -> dict[str, Any]:
        counts = self.sampler.counts
        return {"name": self.name, "state": self._state, "url": self._camera.url,
                "reconnects": self._reconnects, "last_error": self._last_error,
                "last_frame_at": self._last_frame_at, "frames_decoded": counts.decoded,
                "frames_sampled": counts.sampled, "frames_kept": counts.kept,
                "outcomes": self._outcome_counts()}

    def _outcome_counts(self) -> dict[str, int]:
        with self._outcomes_lock:
            return dict(self._outcomes)

    # --- the stream -------------------------------------------------------------------------

    def _run(self) -> None:
        backoff = BACKOFF_MIN_S
        while not self._stop.is_set():
            try:
                if self._watch():
                    backoff = BACKOFF_MIN_S  # it streamed for a while: a fresh cut, retry soon
                error = "the stream ended"
            except Exception as exc:  # FFmpeg errors, timeouts, refused connections
                error = f"{type(exc).__name__}: {exc}"[:300].replace(self._url, self._camera.url)
            if self._stop.is_set():
                break
            self._state, self._last_error = "down", error
            self._reconnects += 1
            log.warning("camera stream lost; reconnecting", camera=self._camera.name,
                        error=error, backoff_s=backoff)
            self._stop.wait(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX_S)

    def _watch(self) -> bool:
        """Decode until the stream ends or stalls; True when at least one frame came."""
        options: dict[str, str] = {"rtsp_transport": self._camera.transport}
        got_frame = False
        with av.open(self._url, options=options, timeout=self._timeouts) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            self.sampler.reset()
            for frame in container.decode(stream):
                if self._stop.is_set():
                    break
                if not got_frame:
                    got_frame, self._state, self._last_error = True, "up", None
                self._last_frame_at = time.time()
                self._look_at(frame)
        return got_frame

    def _look_at(self, frame: av.VideoFrame) -> None:
        # The first frame of a stream may carry no time yet: it counts as the stream's start.
        t = float(frame.time) if frame.time is not None else 0.0
        if not self.sampler.due(t):
            return
        thumb = frame.reformat(width=THUMB_W, height=THUMB_H, format="gray").to_ndarray()
        if self.sampler.changed(t, np.ascontiguousarray(thumb)):
            out = io.BytesIO()
            frame.to_image().save(out, format="JPEG", quality=JPEG_QUALITY)
            self._keep(out.getvalue())

    # --- a kept frame -----------------------------------------------------------------------

    def _count(self, outcome: str) -> None:
        with self._outcomes_lock:
            self._outcomes[outcome] = self._outcomes.get(outcome, 0) + 1

    def _keep(self, jpeg: bytes) -> None:
        meta = CaptureMeta(site=self._site, device=self._camera.name, source=Source.CAMERA,
                           request_id=f"frame-{uuid.uuid4().hex[:16]}")
        if self._gateway.recognizer.model is None:
            self._spool(jpeg, meta)
            return
        try:
            self._gateway.recognize_then(jpeg, meta, DOOR,
                                         lambda answer, exc: self._answered(jpeg, meta, answer, exc))
        except Overloaded:
            PHOTOS_REJECTED.labels(door=DOOR, reason="overloaded").inc()
            self._count("overloaded")  # a camera frame is not acknowledged to anyone: dropped

    def _spool(self, jpeg: bytes, meta: CaptureMeta) -> None:
        try:
            receipt = self._gateway.capture(jpeg, meta, door=DOOR)
            self._count("duplicate" if receipt.duplicate else "spooled")
        except (SpoolFull, *CAPTURE_ERRORS) as exc:
            reason = error_reason(exc)
            PHOTOS_REJECTED.labels(door=DOOR, reason=reason).inc()
            self._count(reason)

    def _answered(self, jpeg: bytes, meta: CaptureMeta, answer: Answer | None,
                  exc: BaseException | None) -> None:
        """On the inference pool's thread: an answer becomes an event (an unsure one is already
        being kept by the gateway); a model unloaded meanwhile means the frame is spooled."""
        if answer is not None:
            self._count("recognised" if answer.recognised else "unsure")
            event = {"site": self._site, "camera": self._camera.name, "at": time.time(),
                     "answer": answer.model_dump(mode="json")}
            self._publish_event("camera.recognised", json.dumps(event).encode())
        elif isinstance(exc, NoModel):
            self._spool(jpeg, meta)
        else:
            log.warning("camera frame not recognised", camera=self._camera.name, error=repr(exc)[:300])
            self._count("error")


def make_doors(context: DoorContext) -> list[Door]:
    """Entry point `rtsp`: one door per `[[edge.cameras]]`."""
    settings = context.settings
    secrets = {name: s.get_secret_value() for name, s in settings.camera_credentials.items()}
    return [CameraDoor(camera, settings.site, context.gateway, context.publish_event,
                       secrets.get(camera.name))
            for camera in settings.cameras]
