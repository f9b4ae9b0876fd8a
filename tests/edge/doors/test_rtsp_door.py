"""The camera door against a real RTSP server (GStreamer's, from Debian's packages) serving a
short H.264 clip made from grocery photos (synthetic products where the dataset is absent):
kept frames are the scene changes, not the static frames; a stream cut mid-way resumes; a
live model's answers become events."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge2core.config import CameraSettings, EdgeSettings
from edge2core.edge.doors.rtsp import CameraDoor, with_credentials
from edge2core.sim.synthetic import render_photo
from tests.support import waiting
from tests.support.camera_clips import closest, gstreamer_rtsp_available, make_clip, rtsp_server
from tests.support.door_site import DoorSite, open_site
from tests.support.helpers_model import TrainedModel, trained_model  # noqa: F401 (fixture)
from tests.support.paths import GROCERY
from tests.support.tcp_proxy import TcpProxy

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not gstreamer_rtsp_available(),
                       reason="GStreamer's RTSP server is missing: run scripts/install-system-deps.sh"),
]

WAIT = 60.0
SITE = "site-cams"


def grocery_scenes() -> list[bytes]:
    """Three photos of three different products (grocery when present)."""
    listing = GROCERY / "train.txt"
    if not listing.is_file():
        return [render_photo(i, 7) for i in (0, 3, 6)]
    by_class: dict[int, str] = {}
    for line in listing.read_text().splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) >= 2 and fields[1] in ("0", "20", "40"):
            by_class.setdefault(int(fields[1]), fields[0])
    return [(GROCERY / by_class[c]).read_bytes() for c in sorted(by_class)]


@pytest.fixture(scope="module")
def scenes() -> list[bytes]:
    return grocery_scenes()


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory, scenes: list[bytes]) -> Path:
    return make_clip(tmp_path_factory.mktemp("clip") / "scenes.mkv", scenes, seconds_each=2.0)


def camera_site(root: Path, url: str, credentials: str | None = None,
                events: list[tuple[str, bytes]] | None = None, **camera_settings: float) -> DoorSite:
    camera = CameraSettings(name="aisle-3", url=url, sample_fps=5, min_interval_s=0.5, **camera_settings)
    settings = EdgeSettings(site=SITE, data_dir=root / "site", doors=["rtsp"], cameras=[camera],
                            camera_credentials={"aisle-3": credentials} if credentials else {})
    return open_site(settings, events)


def camera(site: DoorSite) -> CameraDoor:
    [door] = site.doors.running()
    assert isinstance(door, CameraDoor)
    return door


@pytest.fixture
def served(clip: Path) -> Iterator:
    with rtsp_server(clip, credentials="cam:s3cr3t/x") as server:
        yield server


def test_kept_frames_are_the_scene_changes_not_the_static_frames(
    tmp_path: Path, served, scenes: list[bytes]
) -> None:
    site = camera_site(tmp_path, served.url, credentials="cam:s3cr3t/x")
    try:
        door = camera(site)
        # The clip ends after one pass; the door then reconnects (and the clip starts again).
        waiting.wait_until(lambda: door.status()["reconnects"] >= 1 and door.status()["frames_kept"] >= 1,
                           WAIT, "one pass of the clip")
        counts = door.sampler.counts
        kept, sampled = counts.kept, counts.sampled
        items = site.spool.pending(10)
        status = site.doors.status()[0]
    finally:
        site.close()
    assert kept == len(scenes), f"kept {kept} of {sampled} sampled frames"
    assert sampled >= 4 * len(scenes)  # at 5 fps over 2 s a scene: static frames were looked at
    assert sorted(closest(site.spool.read(i.record.sha256), scenes) for i in items) == [0, 1, 2]
    assert {(i.record.source.value, i.record.device, i.record.sku) for i in items} == {("camera", "aisle-3", None)}
    assert "s3cr3t" not in json.dumps(status)


def test_a_stream_cut_mid_way_resumes_and_shows_in_the_status(
    tmp_path: Path, served, scenes: list[bytes]
) -> None:
    site = camera_site(tmp_path, served.url, credentials="cam:s3cr3t/x")
    try:
        door = camera(site)
        waiting.wait_until(lambda: door.status()["frames_kept"] >= 1, WAIT, "the first scene")
        served.cut()
        waiting.wait_until(lambda: door.status()["state"] == "down", WAIT, "the camera shown down")
        assert door.status()["last_error"]
        served.start()
        waiting.wait_until(lambda: len(site.spool.pending(10)) == len(scenes), WAIT, "every scene")
        assert door.status()["state"] == "up" and door.status()["reconnects"] >= 1
    finally:
        site.close()


def test_with_a_live_model_answers_become_events(
    tmp_path: Path, trained_model: TrainedModel  # noqa: F811
) -> None:
    products = [render_photo(i, 101) for i in range(3)]  # products the model knows
    clip = make_clip(tmp_path / "products.mkv", products, seconds_each=1.5)
    events: list[tuple[str, bytes]] = []
    with rtsp_server(clip) as server:
        site = camera_site(tmp_path, server.url, events=events)
        try:
            site.catalogue.replace(list(trained_model.products))
            site.gateway.recognizer.load(trained_model.path, version=1, sha256=trained_model.sha256)
            waiting.wait_until(lambda: len(events) >= 3, WAIT, "three answers")
        finally:
            site.close()
    answers = [json.loads(payload) for subject, payload in events if subject == "camera.recognised"]
    assert {a["camera"] for a in answers} == {"aisle-3"}
    assert all(a["answer"]["model_version"] == 1 for a in answers)
    recognised = {a["answer"]["sku"] for a in answers if a["answer"]["recognised"]}
    assert recognised <= set(trained_model.classes) and recognised


def test_credentials_go_into_the_url_quoted() -> None:
    assert with_credentials("rtsp://cam.local:554/s1", "ad min:p@ss/w") == \
        "rtsp://ad%20min:p%40ss%2Fw@cam.local:554/s1"
    assert with_credentials("rtsp://cam.local/s1", None) == "rtsp://cam.local/s1"


def test_a_stalled_camera_is_reconnected(tmp_path: Path, served) -> None:
    proxy = TcpProxy(("127.0.0.1", served.port)).open()
    site = camera_site(tmp_path, served.url.replace(str(served.port), str(proxy.port)),
                       credentials="cam:s3cr3t/x", stall_timeout_s=2.0)
    try:
        door = camera(site)
        waiting.wait_until(lambda: door.status()["frames_kept"] >= 1, WAIT, "the first scene")
        proxy.stall()  # the camera hangs: the connection stays open, no packet comes
        waiting.wait_until(lambda: door.status()["state"] == "down", WAIT, "the stall noticed")
        assert "s3cr3t" not in json.dumps(door.status())
        proxy.cut()
        proxy.flow()
        waiting.wait_until(lambda: door.status()["state"] == "up", WAIT, "reconnected")
        assert door.status()["reconnects"] >= 1
    finally:
        site.close()
        proxy.close()
