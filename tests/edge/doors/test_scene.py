"""Scene-change sampling: frames looked at at the set rate, kept only on a change and never more
often than the minimum interval."""

from __future__ import annotations

import numpy as np

from edge2core.edge.doors.scene import SceneSampler


def grey(level: int, noise: int = 0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    thumb = np.full((24, 32), level, dtype=np.int16) + rng.integers(-noise, noise + 1, (24, 32))
    return np.clip(thumb, 0, 255).astype(np.uint8)


def run(sampler: SceneSampler, frames: list[tuple[float, np.ndarray]]) -> list[float]:
    return [t for t, thumb in frames if sampler.due(t) and sampler.changed(t, thumb)]


def test_a_still_scene_with_sensor_noise_is_kept_once_and_each_cut_once_more() -> None:
    sampler = SceneSampler(sample_fps=5, min_interval_s=0.5, threshold=12)
    fps = 25
    frames = [(i / fps, grey(60 if i < 50 else 180, noise=6, seed=i)) for i in range(100)]
    assert run(sampler, frames) == [0.0, 2.0]
    assert sampler.counts.decoded == 100
    assert sampler.counts.sampled == 20  # 4 s at 5 fps
    assert sampler.counts.kept == 2


def test_changes_closer_than_the_minimum_interval_wait_for_it() -> None:
    sampler = SceneSampler(sample_fps=10, min_interval_s=1.0, threshold=12)
    frames = [(i / 10, grey(0 if (i // 3) % 2 == 0 else 200)) for i in range(30)]  # flicker
    kept = run(sampler, frames)
    assert kept[0] == 0.0 and all(b - a >= 1.0 for a, b in zip(kept, kept[1:], strict=False))
    assert len(kept) <= 3


def test_after_a_reconnect_the_same_scene_is_not_kept_again() -> None:
    sampler = SceneSampler(sample_fps=5, min_interval_s=0.5, threshold=12)
    assert run(sampler, [(0.0, grey(90)), (0.2, grey(90))]) == [0.0]
    sampler.reset()  # a new connection: stream time starts again
    assert run(sampler, [(0.0, grey(92)), (0.2, grey(90))]) == []
    assert run(sampler, [(0.6, grey(200))]) == [0.6]
