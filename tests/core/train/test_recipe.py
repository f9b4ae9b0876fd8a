"""The full path's recipe pieces that need no photo set: INT8 calibration choice, class-balanced
epochs, catalogue images among the train photos, and the weight average (on generated images)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from edge2core.core.curate.datasets import DatasetEntry
from edge2core.core.train.augment import crop_size
from edge2core.core.train.calibrate import average_heads, calibration_indices
from edge2core.core.train.finetune import FineTuneConfig, _Best, _epoch_order, finetune
from edge2core.core.train.fit import _train_photos
from edge2core.core.train.head import HeadModel, predict_logits
from edge2core.core.train.state import TrainingRun


def test_calibration_covers_every_class_and_is_the_same_for_the_same_seed():
    labels = np.array([0] * 50 + [1] * 3 + [2] * 20 + [3] * 1)  # product order, as datasets list them
    picks = calibration_indices(labels, per_class=2, seed=7)
    assert sorted(set(labels[picks])) == [0, 1, 2, 3]  # the old even spread missed class 3
    assert np.bincount(labels[picks]).tolist() == [2, 2, 2, 1]
    assert np.array_equal(picks, calibration_indices(labels, per_class=2, seed=7))
    assert not np.array_equal(picks, calibration_indices(labels, per_class=2, seed=8))
    assert list(picks) == sorted(picks) and len(set(picks)) == len(picks)


def test_calibration_limit_keeps_a_share_of_every_class_and_refuses_nonsense():
    labels = np.repeat(np.arange(5), 10)
    picks = calibration_indices(labels, per_class=4, seed=0, limit=12)
    assert len(picks) == 12 and set(labels[picks]) == set(range(5))
    with pytest.raises(ValueError):
        calibration_indices(labels, per_class=0, seed=0)


def test_balanced_epochs_draw_rare_products_as_often_as_common_ones():
    labels = torch.tensor([0] * 90 + [1] * 10)
    gen = torch.Generator().manual_seed(0)
    shuffled = _epoch_order(labels, False, gen)
    assert sorted(shuffled.tolist()) == list(range(100))  # a permutation: each photo once
    balanced = _epoch_order(labels, True, torch.Generator().manual_seed(0))
    rare = int((labels[balanced] == 1).sum())
    assert len(balanced) == 100 and 35 <= rare <= 65  # about half, against 10 in a shuffle


def _run(catalogue: list[tuple[str, int]]) -> TrainingRun:
    entries = [DatasetEntry(sha256=f"{i:064x}", key=f"photos/{i}.jpg", sku=sku, split=split, site="s",
                            device="d", source="kiosk")
               for i, (sku, split) in enumerate([("A", "train"), ("B", "train"), ("A", "val"), ("B", "train")])]
    labels = np.array([0, 1, 0, 1])
    is_val = np.array([False, False, True, False])
    return TrainingRun(run_id="r", path="full", seed=0, dataset_version=1, opts={}, entries=entries,
                       classes=["A", "B"], labels=labels, is_val=is_val, train_mask=~is_val, record={},
                       say=lambda _m: None, catalogue_images=catalogue)


def test_catalogue_images_join_the_train_photos_with_their_product_label():
    keys, labels = _train_photos(_run([("catalogue/images/b.jpg", 1)]), 3)
    assert keys == ("photos/0.jpg", "photos/1.jpg", "photos/3.jpg") + ("catalogue/images/b.jpg",) * 3
    assert labels.tolist() == [0, 1, 1, 1, 1, 1]
    keys, labels = _train_photos(_run([]), 5)  # no catalogue images: the train split alone
    assert keys == ("photos/0.jpg", "photos/1.jpg", "photos/3.jpg") and labels.tolist() == [0, 1, 1]


def _photos(n: int, seed: int) -> tuple[list[Image.Image], np.ndarray]:
    """Two generated "products": reddish and bluish noise."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for i in range(n):
        base = np.array([200, 40, 40] if i % 2 == 0 else [40, 40, 200], dtype=np.int16)
        pixels = np.clip(base + rng.integers(-40, 40, (48, 48, 3)), 0, 255).astype(np.uint8)
        images.append(Image.fromarray(pixels))
        labels.append(i % 2)
    return images, np.array(labels)


def test_the_weight_average_is_what_is_judged_and_kept():
    from edge2core.core.train.backbone import load_backbone

    backbone = load_backbone()
    train_x, train_y = _photos(16, 0)
    val_x, val_y = _photos(6, 1)
    common = {"epochs": 2, "batch_size": 8, "train_size": 64, "seed": 0, "catalogue_copies": 0}
    plain = finetune(backbone, train_x, train_y, val_x, val_y, ["red", "blue"],
                     FineTuneConfig(**common, ema_decay=0.0), progress=False)
    averaged = finetune(backbone, train_x, train_y, val_x, val_y, ["red", "blue"],
                        FineTuneConfig(**common, ema_decay=0.9), progress=False)
    # the same steps (same seed), so the only difference is the average that was kept
    assert [r["train_loss"] for r in plain.log] == [r["train_loss"] for r in averaged.log]
    assert not np.allclose(plain.head.weight, averaged.head.weight)
    assert all(np.isfinite(averaged.head.weight).ravel()) and averaged.log[-1]["val_top1"] >= 0.5


def test_the_trainers_calibration_pick_sees_every_product_however_many_there_are():
    from edge2core.core.train.calibrate import calibration_picks

    many = np.repeat(np.arange(81), 30)  # more products than the 96 photos asked for
    picks = calibration_picks(many, 96, seed=0)
    assert len(picks) == 81 and set(many[picks]) == set(range(81))
    few = np.repeat(np.arange(6), 30)
    picks = calibration_picks(few, 96, seed=0)
    assert len(picks) == 96 and np.bincount(few[picks]).tolist() == [16] * 6


def _dipping_run(best: _Best, val_top1: list[float]) -> int | None:
    """Feed ``best`` one epoch record per value; the epoch it stops at (None: ran them all)."""
    weights = torch.nn.Linear(2, 2)
    for epoch, top1 in enumerate(val_top1, start=1):
        record = {"val_top1": top1, "val_loss": 1.0, "train_loss": 1.0}
        if best.update(record, epoch, weights):
            return epoch
    return None


def test_the_schedule_runs_to_its_end_by_default_and_the_best_epoch_is_kept():
    # the 2-core grocery run's curve: a dip after epoch 5 that the annealing epochs recover from
    curve = [0.04, 0.39, 0.73, 0.82, 0.85, 0.83, 0.83, 0.82, 0.86, 0.87]
    default = _Best(FineTuneConfig(epochs=10, patience=3))
    assert _dipping_run(default, curve) is None and default.epoch == 10
    opted_in = _Best(FineTuneConfig(epochs=10, patience=3, min_epochs=6))
    assert _dipping_run(opted_in, curve) == 8 and opted_in.epoch == 5


def test_the_stem_and_first_blocks_keep_their_imagenet_weights_and_the_rest_learns():
    from edge2core.core.train.backbone import load_backbone

    backbone = load_backbone()
    train_x, train_y = _photos(16, 0)
    val_x, val_y = _photos(6, 1)
    cfg = FineTuneConfig(epochs=1, batch_size=8, train_size=64, seed=0, catalogue_copies=0, ema_decay=0.0,
                         freeze_blocks=3)
    tuned = finetune(backbone, train_x, train_y, val_x, val_y, ["red", "blue"], cfg, progress=False).backbone
    before, after = backbone.net, tuned.net
    for name in ("_conv_stem", "_blocks.0", "_blocks.2"):
        old, new = before.get_submodule(name), after.get_submodule(name)
        assert all(torch.equal(a, b) for a, b in zip(old.parameters(), new.parameters(), strict=True)), name
    changed = [not torch.equal(a, b) for a, b in zip(before._blocks[3].parameters(), after._blocks[3].parameters(),
                                                     strict=True)]
    assert any(changed)
    with pytest.raises(ValueError, match="freeze_blocks"):
        finetune(backbone, train_x, train_y, val_x, val_y, ["red", "blue"],
                 FineTuneConfig(epochs=1, freeze_blocks=99), progress=False)


def test_progressive_resizing_grows_the_crops_over_the_first_epochs_then_keeps_the_full_size():
    assert [crop_size(224, e, 160, 3) for e in range(1, 9)] == [160, 192, 192, 224, 224, 224, 224, 224]
    assert [crop_size(224, e) for e in (1, 5)] == [224, 224]  # off by default
    cost = sum((crop_size(224, e, 160, 3) / 224) ** 2 for e in range(1, 9))
    assert 6.9 < cost < 7.1  # eight epochs for about the pixels of seven at 224 px
    with pytest.raises(ValueError):
        crop_size(224, 1, 16, 2)
    with pytest.raises(ValueError):
        crop_size(224, 1, 160, -1)


def test_a_ramped_run_trains_its_first_epoch_on_smaller_crops_and_logs_them():
    from edge2core.core.train.backbone import load_backbone

    train_x, train_y = _photos(16, 0)
    val_x, val_y = _photos(6, 1)
    cfg = FineTuneConfig(epochs=2, batch_size=8, train_size=96, start_size=64, ramp_epochs=1, seed=0,
                         catalogue_copies=0)
    run = finetune(load_backbone(), train_x, train_y, val_x, val_y, ["red", "blue"], cfg, progress=False)
    assert [r["crop_px"] for r in run.log] == [64, 96]
    assert all(np.isfinite(r["train_loss"]) for r in run.log)


def test_averaged_heads_are_one_linear_head_giving_the_mean_of_the_scaled_logits():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 8)).astype(np.float32)
    y = np.arange(40) % 3
    classes = ["a", "b", "c"]
    first = HeadModel(rng.normal(size=(3, 8)).astype(np.float32), np.zeros(3, np.float32), classes, {"method": "a"})
    second = HeadModel(5 * rng.normal(size=(3, 8)).astype(np.float32), np.ones(3, np.float32), classes,
                       {"method": "b"})
    both = average_heads(first, second, x, y, classes)
    t1 = float(first.weight[0, 0] / calibrated(first, x, y, classes).weight[0, 0])
    t2 = float(second.weight[0, 0] / calibrated(second, x, y, classes).weight[0, 0])
    expected = (predict_logits(first, x) / t1 + predict_logits(second, x) / t2) / 2
    assert np.allclose(predict_logits(both, x), expected, atol=1e-4)
    assert both.info["method"] == "averaged" and both.classes == classes
    with pytest.raises(ValueError, match="same classes"):
        average_heads(first, HeadModel(second.weight, second.bias, ["a", "b", "z"]), x, y, classes)


def calibrated(head: HeadModel, x: np.ndarray, y: np.ndarray, classes: list[str]) -> HeadModel:
    from edge2core.core.train.calibrate import calibrate_head

    return calibrate_head(head, x, y, classes)[0]


def test_the_full_path_can_ship_the_averaged_head_and_records_all_three():
    from edge2core.core.train.fit import compare_heads
    from edge2core.core.train.state import FAST_DEFAULTS

    rng = np.random.default_rng(1)
    run = _run([])
    run.opts = {**FAST_DEFAULTS, "full_head": "averaged"}
    centres = rng.normal(size=(2, 16)).astype(np.float32)
    run.features = centres[run.labels] + 0.1 * rng.normal(size=(4, 16)).astype(np.float32)
    run.head = HeadModel(centres.copy(), np.zeros(2, np.float32), run.classes, {"method": "finetune"})
    compare_heads(run)
    assert run.fitted_head().info["method"] == "averaged"
    assert {"finetuned_val_top1", "refit_val_top1", "averaged_val_top1"} <= set(run.alternatives)
    assert run.alternatives["shipped"] == "averaged" == run.params_used["full_head"]
    run.opts["full_head"] = "best"
    with pytest.raises(ValueError, match="full_head must be one of finetuned, refit, averaged"):
        compare_heads(run)


def test_the_classifier_can_learn_faster_than_the_backbone_all_through_the_schedule():
    from edge2core.core.train.backbone import load_backbone
    from edge2core.core.train.finetune import _Loop, _new_model

    cfg = FineTuneConfig(epochs=2, batch_size=8, lr=1e-3, head_lr_mult=10)
    model = _new_model(load_backbone(), ["red", "blue"], cfg, None)
    loop = _Loop.build(model, cfg, torch.device("cpu"), torch.Generator(), 16)
    backbone_group, head_group = loop.opt.param_groups
    assert {id(p) for p in head_group["params"]} == {id(p) for p in model.fc.parameters()}
    for _ in range(3):  # warm-up, peak and annealing keep the ratio
        assert head_group["lr"] == pytest.approx(10 * backbone_group["lr"])
        loop.opt.step()  # no gradients: nothing moves, but the schedule's order is kept
        loop.sched.step()
    with pytest.raises(ValueError, match="head_lr_mult"):
        _Loop.build(model, FineTuneConfig(head_lr_mult=0), torch.device("cpu"), torch.Generator(), 16)
    with pytest.raises(ValueError, match="unknown schedule 'step'"):
        _Loop.build(model, FineTuneConfig(schedule="step"), torch.device("cpu"), torch.Generator(), 16)
