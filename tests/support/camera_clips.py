"""Short H.264 clips for the camera door: each photo held still for a few seconds (a scene),
encoded with PyAV (libx264, a keyframe every second), and a real RTSP server to serve them."""

from __future__ import annotations

import io
import socket
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import av
import numpy as np
from PIL import Image

from edge2core.common.net import free_port
from tests.support import waiting

SYSTEM_PYTHON = "/usr/bin/python3"
SERVER = Path(__file__).with_name("rtsp_server.py")
SIZE = (320, 240)


def frames_of(photo: bytes, size: tuple[int, int] = SIZE) -> Image.Image:
    with Image.open(io.BytesIO(photo)) as im:
        return im.convert("RGB").resize(size)


def make_clip(path: Path, photos: Sequence[bytes], seconds_each: float = 2.0, fps: int = 10,
              size: tuple[int, int] = SIZE, noise: float = 0.0) -> Path:
    """A Matroska H.264 clip: each photo shown for `seconds_each` (a hard cut between);
    `noise`: the standard deviation of sensor noise added to every frame (grey levels), which
    makes the stream as costly to decode as a real camera's rather than nearly free."""
    rng = np.random.default_rng(0)
    # A few noise fields, cycled: fresh noise for every frame costs more than the encoding.
    fields = [rng.normal(0, noise, (size[1], size[0], 3)).astype(np.float32) for _ in range(5)] if noise else []
    with av.open(str(path), "w", format="matroska") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.options = {"g": str(fps), "preset": "ultrafast", "tune": "stillimage",
                          "crf": "23"}
        n = 0
        for photo in photos:
            image = frames_of(photo, size)
            pixels = np.asarray(image, dtype=np.float32)
            for k in range(int(seconds_each * fps)):
                if fields:
                    noisy = np.clip(pixels + fields[k % len(fields)], 0, 255).astype(np.uint8)
                    frame = av.VideoFrame.from_ndarray(noisy, format="rgb24")
                else:
                    frame = av.VideoFrame.from_image(image)
                frame.pts = n
                n += 1
                for packet in stream.encode(frame):
                    container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def thumb(photo: bytes) -> np.ndarray:
    """A grey 32x24 thumbnail, to tell which scene a kept frame shows."""
    return np.asarray(frames_of(photo).convert("L").resize((32, 24)), dtype=np.float32)


def closest(photo: bytes, scenes: Sequence[bytes]) -> int:
    t = thumb(photo)
    return int(np.argmin([np.abs(t - thumb(s)).mean() for s in scenes]))


class RtspServer:
    """GStreamer's RTSP server in a child process; `cut()` kills it, `start()` starts it again
    on the same port."""

    def __init__(self, clip: Path, credentials: str | None = None) -> None:
        self.clip = clip
        self.port = free_port()
        self.credentials = credentials
        self.url = f"rtsp://127.0.0.1:{self.port}/cam"
        self._proc: subprocess.Popen[str] | None = None

    def start(self) -> None:
        args = [SYSTEM_PYTHON, str(SERVER), str(self.port), str(self.clip)]
        if self.credentials:
            args.append(self.credentials)
        self._proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        assert line.strip() == "READY", f"the RTSP server did not start: {line!r}"
        waiting.wait_until(lambda: _port_open(self.port), 15, "the RTSP port")

    def cut(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(15)

    def close(self) -> None:
        self.cut()


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@contextmanager
def rtsp_server(clip: Path, credentials: str | None = None) -> Iterator[RtspServer]:
    server = RtspServer(clip, credentials)
    server.start()
    try:
        yield server
    finally:
        server.close()


def gstreamer_rtsp_available() -> bool:
    try:
        probe = subprocess.run([SYSTEM_PYTHON, "-c", "import gi; gi.require_version('GstRtspServer', '1.0')"],
                               capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0
