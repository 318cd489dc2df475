"""Hand-computed mIoU cases pinning mmseg 0.x's definition (docs/reference.md §5.1).

§ numbers refer to docs/reference.md.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from dnlrepro.engine.metrics import (
    IoUAccumulator,
    intersect_and_union,
    summarize,
    to_percent,
)


def _np(*tensors):
    return [t.numpy().tolist() for t in tensors]


def test_ignore_pixels_and_absent_class_hand_computed():
    # C=4; class 3 is absent from both maps -> NaN, skipped by the means.
    label = np.array([[0, 0, 1], [1, 255, 2]], dtype=np.uint8)
    # The prediction under the ignored pixel (0) must not count anywhere.
    pred = np.array([[0, 1, 1], [1, 0, 2]], dtype=np.int64)
    inter, union, area_pred, area_label = intersect_and_union(pred, label, 4)
    assert _np(inter, union, area_pred, area_label) == [
        [1, 2, 1, 0],
        [2, 3, 1, 0],
        [1, 3, 1, 0],
        [2, 2, 1, 0],
    ]
    assert inter.dtype == torch.int64
    s = summarize(inter, union, area_pred, area_label)
    np.testing.assert_allclose(s["IoU"][:3], [0.5, 2 / 3, 1.0])
    assert math.isnan(s["IoU"][3]) and math.isnan(s["Acc"][3])
    assert s["mIoU"] == pytest.approx((0.5 + 2 / 3 + 1.0) / 3)
    assert s["mAcc"] == pytest.approx((0.5 + 1.0 + 1.0) / 3)
    assert s["aAcc"] == pytest.approx(4 / 5)
    pct = to_percent(s, ["a", "b", "c", "d"])
    assert pct["mIoU"] == 72.22 and pct["mAcc"] == 83.33 and pct["aAcc"] == 80.0
    assert pct["IoU"] == {"a": 50.0, "b": 66.67, "c": 100.0, "d": None}
    assert pct["Acc"]["d"] is None
    # NaN must serialise as JSON null, not as the non-standard NaN token.
    assert json.loads(json.dumps(pct, allow_nan=False))["IoU"]["d"] is None


def test_predicted_but_absent_class_counts_as_zero_iou():
    # Class 1 never appears in the label but is predicted: IoU 0 (in the mean), Acc NaN (skipped).
    label = np.zeros((2, 2), dtype=np.uint8)
    pred = np.array([[0, 1], [0, 0]])
    s = summarize(*intersect_and_union(pred, label, 2))
    np.testing.assert_allclose(s["IoU"], [0.75, 0.0])
    assert s["mIoU"] == pytest.approx(0.375)
    assert s["Acc"][0] == pytest.approx(0.75) and math.isnan(s["Acc"][1])
    assert s["mAcc"] == pytest.approx(0.75)


def test_reduce_zero_label_uint8_without_underflow():
    # ADE20K (§3.2): raw 0 -> ignore, raw k -> k-1, raw 255 stays ignored.
    raw = np.array([[0, 1, 2], [3, 255, 1]], dtype=np.uint8)
    pred = np.array([[2, 0, 1], [0, 0, 1]])
    inter, union, area_pred, area_label = intersect_and_union(pred, raw, 3, reduce_zero_label=True)
    # Reduced label: [[255, 0, 1], [2, 255, 0]]
    assert _np(inter, area_pred, area_label, union) == [
        [1, 1, 0],
        [2, 2, 0],
        [2, 1, 1],
        [3, 2, 1],
    ]
    assert raw[0, 0] == 0, "the caller's label must not be modified"
    acc = IoUAccumulator(3, reduce_zero_label=True)
    acc.update(torch.from_numpy(pred), torch.from_numpy(raw))
    np.testing.assert_allclose(acc.summarize()["IoU"], [1 / 3, 1 / 2, 0.0])


def test_predictions_out_of_range_fall_outside_the_bins():
    label = np.array([0, 1, 2, 2])
    pred = np.array([0, 5, 2, 3])  # 5 and 3 (== num_classes) are not classes
    inter, union, area_pred, area_label = intersect_and_union(pred, label, 3)
    assert _np(inter, area_pred, area_label, union) == [
        [1, 0, 1],
        [1, 0, 1],
        [1, 1, 2],
        [1, 1, 2],
    ]
    s = summarize(inter, union, area_pred, area_label)
    np.testing.assert_allclose(s["IoU"], [1.0, 0.0, 0.5])
    # aAcc counts the out-of-range predictions as wrong: 2 correct of 4 labelled pixels.
    assert s["aAcc"] == pytest.approx(0.5)


def test_dataset_level_accumulation_differs_from_mean_of_per_image_miou():
    a_label, a_pred = np.zeros(4, np.uint8), np.zeros(4, np.int64)
    b_label, b_pred = np.array([0, 1, 1, 1], np.uint8), np.ones(4, np.int64)
    acc = IoUAccumulator(2)
    acc.update(a_pred, a_label)
    acc.update(b_pred, b_label)
    assert acc.count == 2
    # Totals: I=[4,3], union=[5,4] -> IoU [0.8, 0.75].
    s = acc.summarize()
    np.testing.assert_allclose(s["IoU"], [0.8, 0.75])
    assert s["mIoU"] == pytest.approx(0.775)
    per_image = [
        summarize(*intersect_and_union(p, lab, 2))["mIoU"]
        for p, lab in [(a_pred, a_label), (b_pred, b_label)]
    ]
    assert np.mean(per_image) == pytest.approx(0.6875)
    assert s["mIoU"] != pytest.approx(np.mean(per_image))


def _mmseg_v06_reference(pred, label, num_classes, ignore_index=255):
    """mmseg v0.6 ``intersect_and_union`` written out with np.histogram (in-range preds)."""
    mask = label != ignore_index
    pred, label = pred[mask], label[mask]
    bins = np.arange(num_classes + 1)
    inter = np.histogram(pred[pred == label], bins=bins)[0]
    ap = np.histogram(pred, bins=bins)[0]
    al = np.histogram(label, bins=bins)[0]
    return inter, ap + al - inter, ap, al


def test_matches_written_out_mmseg_reference_on_random_maps():
    rng = np.random.default_rng(0)
    acc = IoUAccumulator(7)
    totals = np.zeros((4, 7), np.int64)
    for _ in range(5):
        label = rng.integers(0, 7, size=(13, 17)).astype(np.uint8)
        label[rng.random(label.shape) < 0.2] = 255
        pred = rng.integers(0, 7, size=(13, 17))
        acc.update(pred, label)
        totals += np.stack(_mmseg_v06_reference(pred, label, 7))
    assert acc.hist.numpy().tolist() == totals.tolist()
    ref_iou = totals[0] / totals[1]
    assert acc.summarize()["mIoU"] == pytest.approx(np.nanmean(ref_iou))
    assert acc.summarize()["aAcc"] == pytest.approx(totals[0].sum() / totals[3].sum())


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="shape"):
        intersect_and_union(np.zeros((2, 3), int), np.zeros((3, 2), np.uint8), 2)
    with pytest.raises(TypeError, match="integer"):
        intersect_and_union(np.zeros((2, 2), np.float32), np.zeros((2, 2), np.uint8), 2)
    s = summarize(*intersect_and_union(np.zeros(2, int), np.zeros(2, np.uint8), 2))
    with pytest.raises(ValueError, match="class names"):
        to_percent(s, ["only-one"])


def test_all_ignored_gives_nan_metrics_written_as_null():
    label = np.full((2, 2), 255, np.uint8)
    acc = IoUAccumulator(2)
    acc.update(np.zeros((2, 2), int), label)
    pct = acc.to_percent(["a", "b"])
    assert pct["mIoU"] is None and pct["aAcc"] is None and pct["IoU"] == {"a": None, "b": None}


def test_all_reduce_without_process_group_is_a_no_op():
    acc = IoUAccumulator(2)
    acc.update(np.array([0, 1]), np.array([0, 0], np.uint8))
    before = acc.hist.clone()
    acc.all_reduce()
    assert torch.equal(acc.hist, before) and acc.count == 1


def test_majority_baseline_is_the_best_constant_prediction():
    """Predicting the most frequent class everywhere: computed by hand and by the accumulator."""
    from dnlrepro.engine.metrics import IoUAccumulator, majority_baseline

    label = np.array([[0, 0, 0, 1], [0, 0, 2, 255]])  # 5 x class 0, 1 x 1, 1 x 2, 1 ignored
    acc = IoUAccumulator(num_classes=4)
    acc.update(np.zeros_like(label), label)  # the constant prediction itself
    scored = acc.to_percent(["a", "b", "c", "d"])
    base = scored["majority_baseline"]
    assert base == {"class": "a", "mIoU": round(5 / 7 / 3 * 100, 2), "mAcc": 33.33,
                    "aAcc": 71.43}  # fmt: skip
    # the constant prediction scores exactly its own baseline
    assert (scored["mIoU"], scored["mAcc"], scored["aAcc"]) == (
        base["mIoU"], base["mAcc"], base["aAcc"]
    )  # fmt: skip
    assert majority_baseline(np.zeros(4), ["a", "b", "c", "d"])["mIoU"] is None
