"""``dnlrepro evaluate`` on a synthetic prepared Cityscapes split, through a saved checkpoint.

§ numbers refer to docs/reference.md.

The expected numbers are recomputed here from docs/reference.md (§5.1, §5.2, §5.3) with numpy
histograms over the whole split, independently of ``engine.metrics`` and ``engine.evaluate``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from dnlrepro.cli import main as cli_main
from dnlrepro.core.config import load_config
from dnlrepro.data import classes, transforms
from dnlrepro.engine.evaluate import evaluate, evaluate_model
from dnlrepro.models import build_segmentor, save_checkpoint

CONFIG = "dnl_r50-d8_512x1024_40k_cityscapes"
N_VAL = 2


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from dnlrepro.acquire import prepare, synth

    base = tmp_path_factory.mktemp("cs")
    synth.write_cityscapes(base / "archives", n_train=1, n_val=N_VAL, width=64, height=32, seed=3)
    prepare.prepare("cityscapes", base / "archives", base / "root", expect=(1, N_VAL))
    return base / "root"


def _cfg(root: Path, **extra):
    return load_config(
        CONFIG,
        "smoke",
        overrides={"data.data_root": str(root), "test.img_scale": [64, 32], **extra},
    )


def _model(cfg, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_segmentor(cfg).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):  # non-trivial statistics
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
        # Bias the classifier so that several classes win somewhere (a non-trivial mIoU).
        model.decode_head.conv_seg.bias.copy_(torch.linspace(-0.5, 0.5, cfg.model.num_classes))
    return model


@pytest.fixture(scope="module")
def checkpoint(dataset_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = _model(_cfg(dataset_root))
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.pth", model, meta={"iter": 7})


def _label_path(root: Path, img_path: Path) -> Path:
    # §3.1: gtFine/<split>/<city>/<stem>_gtFine_labelTrainIds.png next to leftImg8bit/...
    rel = img_path.relative_to(root / "leftImg8bit")
    return root / "gtFine" / rel.parent / rel.name.replace("_leftImg8bit", "_gtFine_labelTrainIds")


def _expected(model, cfg, root: Path, ms_flip: bool) -> dict[str, float]:
    """Dataset-level mIoU/mAcc/aAcc written out from §5.1 with numpy (fractions)."""
    c = cfg.model.num_classes
    inter, union, lab = np.zeros(c), np.zeros(c), np.zeros(c)
    images = sorted((root / "leftImg8bit" / "val").rglob("*_leftImg8bit.png"))
    assert len(images) == N_VAL
    for p in images:
        img = cv2.imread(str(p), cv2.IMREAD_COLOR)
        label = np.array(Image.open(_label_path(root, p))).astype(np.int64)
        ratios, flip = (cfg.test.ms_ratios, True) if ms_flip else ((1.0,), False)
        views = transforms.test_views(img, cfg.test.img_scale, ratios, flip, cfg.data)
        with torch.no_grad():
            probs = sum(model.inference(v[None], img.shape[:2], f) for v, f in views) / len(views)
        pred = probs.argmax(1)[0].numpy()
        keep = label != 255
        pred, gt = pred[keep], label[keep]
        inter += np.bincount(pred[pred == gt], minlength=c)
        p_hist, l_hist = np.bincount(pred, minlength=c), np.bincount(gt, minlength=c)
        union += p_hist + l_hist - np.bincount(pred[pred == gt], minlength=c)
        lab += l_hist
    with np.errstate(invalid="ignore", divide="ignore"):
        iou, acc = inter / union, inter / lab
    return {
        "mIoU": np.nanmean(iou),
        "mAcc": np.nanmean(acc),
        "aAcc": inter.sum() / lab.sum(),
        "IoU": iou,
    }


def _check_block(block: dict, expected: dict, names) -> None:
    for k in ("mIoU", "mAcc", "aAcc"):
        assert block[k] == round(expected[k] * 100, 2), k
    assert list(block["IoU"]) == list(names) and list(block["Acc"]) == list(names)
    for name, v in zip(names, expected["IoU"], strict=True):
        assert block["IoU"][name] == (None if np.isnan(v) else round(v * 100, 2)), name


@pytest.mark.slow
def test_evaluate_roundtrip_json_schema_and_mlflow(dataset_root, checkpoint, tmp_path):
    # Two ratios (4 views) keep the CPU time down; the 12-view rule is pinned in
    # test_evaluate_msflip.py.
    cfg = _cfg(dataset_root, **{"test.ms_ratios": [0.75, 1.0]})
    out = tmp_path / "results" / "metrics.json"
    payload = evaluate(cfg, checkpoint, ms_flip=True, out=out, device="cpu", track=True)
    on_disk = json.loads(out.read_text())
    assert on_disk == payload
    assert set(on_disk) == {"single_scale", "ms_flip", "ms_flip_alt", "protocol", "precision"}
    assert on_disk["ms_flip_alt"] is None  # only with small_window_alt (slide configs, §5.2)
    assert on_disk["precision"] == {"amp": "none", "allow_tf32": False, "tf32_in_effect": False}

    reference = _model(cfg)  # same weights as the checkpoint, built independently
    names = classes.CLASSES["cityscapes"]
    _check_block(on_disk["single_scale"], _expected(reference, cfg, dataset_root, False), names)
    _check_block(on_disk["ms_flip"], _expected(reference, cfg, dataset_root, True), names)
    # The synthetic scenes lack some classes: they are null, not 0 and not NaN.
    assert None in on_disk["single_scale"]["IoU"].values()
    assert "NaN" not in out.read_text()
    assert on_disk["single_scale"]["mIoU"] > 0, "a degenerate all-wrong model tests little"

    proto = on_disk["protocol"]
    expected_keys = {
        "config", "profile", "checkpoint", "checkpoint_sha256", "dataset", "split", "mode",
        "crop_size", "stride", "img_scale", "scales", "flip", "image_count", "world_size",
        "align_corners",
    }  # fmt: skip
    assert expected_keys <= set(proto)
    assert proto["checkpoint_sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert proto["checkpoint_meta"]["iter"] == 7
    assert (proto["config"], proto["profile"], proto["dataset"]) == (CONFIG, "smoke", "cityscapes")
    assert (proto["split"], proto["mode"], proto["image_count"], proto["world_size"]) == (
        "val", "whole", N_VAL, 1,
    )  # fmt: skip
    assert proto["scales"] == [0.75, 1.0] and proto["flip"] is True
    assert proto["img_scale"] == [64, 32] and proto["align_corners"] is False

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=os.environ["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name("cityscapes")
    runs = client.search_runs([exp.experiment_id], "tags.stages LIKE '%evaluate'")
    run = max(runs, key=lambda r: r.info.start_time)
    metrics = run.data.metrics
    assert metrics["mIoU"] == on_disk["single_scale"]["mIoU"]
    assert metrics["mIoU_ms_flip"] == on_disk["ms_flip"]["mIoU"]
    assert metrics["mAcc_ms_flip"] == on_disk["ms_flip"]["mAcc"]
    assert not any(k.startswith("IoU/") for k in metrics)  # per-class IoU is an artifact
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"eval.json", "per_class.csv", "per_class.md", "per_class_iou.png"} <= artifacts


def test_damaged_mlflow_store_fails_before_evaluating(
    dataset_root, checkpoint, tmp_path, monkeypatch
):
    from dnlrepro.engine import evaluate as module
    from dnlrepro.track.tracking import StoreError

    db = tmp_path / "mlflow.db"
    db.touch()  # emptied: sqlite would take it for a new store
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    monkeypatch.setattr(module, "evaluate_model", lambda *a, **k: pytest.fail("evaluated"))
    out = tmp_path / "eval.json"
    with pytest.raises(StoreError, match="empty"):
        evaluate(_cfg(dataset_root), checkpoint, out=out, device="cpu", track=True)
    assert not out.exists() and db.stat().st_size == 0


def test_evaluate_model_single_scale_restores_train_mode(dataset_root):
    cfg = _cfg(dataset_root)
    model = _model(cfg).train()  # training mode must not leak into the evaluation (BN stats)
    result = evaluate_model(model, cfg, max_images=1)
    assert model.training, "evaluate_model must restore train mode for the training loop"
    assert result["ms_flip"] is None and result["image_count"] == 1
    one_image = _expected_first(model.eval(), cfg, dataset_root)
    assert result["single_scale"]["mIoU"] == round(one_image * 100, 2)


def test_small_window_alt_scores_the_other_mode(dataset_root):
    """``ms_flip_alt`` (§5.2) equals a plain evaluation with the other test.small_window."""
    # One 32x64 window at r=1.0 keeps it cheap; at r=0.5 the 16x32 view is smaller than it.
    over = {"test.crop_size": [32, 64], "test.stride": [16, 32], "test.ms_ratios": [0.5, 1.0]}
    cs769 = load_config(
        "dnl_r50-d8_769x769_40k_cityscapes",
        "smoke",
        overrides={"data.data_root": str(dataset_root), "test.img_scale": [64, 32], **over},
    )
    model = _model(cs769, seed=5)
    whole = _cfg(dataset_root)  # whole inference: the mode cannot matter, so it is refused
    with pytest.raises(ValueError, match="small_window"):
        evaluate_model(model, whole, ms_flip=True, small_window_alt=True)
    both = evaluate_model(model, cs769, ms_flip=True, max_images=1, small_window_alt=True)
    padded_cfg = cs769.replace({"test.small_window": "pad"})
    model.cfg = padded_cfg  # the model reads its default small-window mode from its config
    padded = evaluate_model(model, padded_cfg, ms_flip=True, max_images=1)
    assert both["ms_flip_alt"] == {"small_window": "pad", **padded["ms_flip"]}
    assert both["single_scale"] == padded["single_scale"]  # r=1.0 has no small window
    assert padded["ms_flip_alt"] is None
    with pytest.raises(ValueError, match="ms_flip=False"):
        evaluate_model(model, cs769, small_window_alt=True)


def _expected_first(model, cfg, root):
    img_path = sorted((root / "leftImg8bit" / "val").rglob("*_leftImg8bit.png"))[0]
    img = cv2.imread(str(img_path), cv2.IMREAD_COLOR)
    label = np.array(Image.open(_label_path(root, img_path))).astype(np.int64)
    ((view, _),) = transforms.test_views(img, cfg.test.img_scale, (1.0,), False, cfg.data)
    with torch.no_grad():
        pred = model.inference(view[None], img.shape[:2]).argmax(1)[0].numpy()
    keep = label != 255
    ious = []
    for c in range(cfg.model.num_classes):
        i = np.sum((pred == c) & (label == c) & keep)
        u = np.sum(((pred == c) | (label == c)) & keep)
        if u:
            ious.append(i / u)
    return float(np.mean(ious))


def test_cli_evaluate_writes_json_and_reports_errors_in_one_line(
    dataset_root, checkpoint, tmp_path, capsys
):
    out = tmp_path / "m.json"
    argv = ["evaluate", "--config", CONFIG, "--profile", "smoke", "--checkpoint", str(checkpoint),
            "--data-root", str(dataset_root), "--split", "val", "--out", str(out),
            "--max-images", "1", "--device", "cpu", "--no-track"]  # fmt: skip
    assert cli_main(argv) == 0
    data = json.loads(out.read_text())
    assert data["ms_flip"] is None and data["protocol"]["image_count"] == 1
    assert data["protocol"]["img_scale"] == list(load_config(CONFIG, "smoke").test.img_scale)
    assert f"{CONFIG}: mIoU" in capsys.readouterr().out

    missing = tmp_path / "nope.pth"
    argv[argv.index(str(checkpoint))] = str(missing)
    assert cli_main(argv) == 1
    err = capsys.readouterr().err
    assert str(missing) in err and err.count("\n") == 1


def test_split_names_follow_the_dataset():
    from dnlrepro.engine.evaluate import resolve_split

    ade = load_config("dnl_r50-d8_512x512_80k_ade20k", "smoke")
    cs = load_config(CONFIG, "smoke")
    assert resolve_split(ade, "val") == "validation" and resolve_split(ade, None) == "validation"
    assert resolve_split(cs, "val") == "val" and resolve_split(ade, "train") == "training"
    assert resolve_split(cs, "test") == "test"  # anything else is a literal folder name


def test_ade20k_reduce_zero_label_end_to_end(tmp_path):
    """Raw ADE20K label 0 is ignored and k -> k-1 (§3.2) inside the real evaluation path."""
    from dnlrepro.acquire import prepare, synth

    synth.write_ade20k(tmp_path / "arch", n_train=1, n_val=2, min_size=24, max_size=40, seed=2)
    root = tmp_path / "ade"
    prepare.prepare("ade20k", tmp_path / "arch", root, expect=(1, 2))
    for ann in (root / "annotations" / "validation").glob("*.png"):
        raw = np.array(Image.open(ann))
        raw[:6, :6] = 0  # make sure raw 'other' pixels exist: they must be ignored
        Image.fromarray(raw).save(ann)
    cfg = load_config(
        "dnl_r50-d8_512x512_80k_ade20k",
        "smoke",
        overrides={"data.data_root": str(root), "test.img_scale": [64, 32]},
    )
    model = _model(cfg, seed=4)
    result = evaluate_model(model, cfg, device="cpu")
    c = cfg.model.num_classes
    inter, union, lab = np.zeros(c), np.zeros(c), np.zeros(c)
    for img_path in sorted((root / "images" / "validation").glob("*.jpg")):
        img = cv2.imread(str(img_path), cv2.IMREAD_COLOR)
        raw = np.array(Image.open(root / "annotations" / "validation" / f"{img_path.stem}.png"))
        ((view, _),) = transforms.test_views(img, cfg.test.img_scale, (1.0,), False, cfg.data)
        with torch.no_grad():
            pred = model.inference(view[None], img.shape[:2]).argmax(1)[0].numpy()
        keep = raw != 0
        gt, pr = raw[keep].astype(np.int64) - 1, pred[keep]
        for k in range(c):
            i = np.sum((pr == k) & (gt == k))
            inter[k] += i
            union[k] += np.sum(pr == k) + np.sum(gt == k) - i
            lab[k] += np.sum(gt == k)
    with np.errstate(invalid="ignore", divide="ignore"):
        miou = np.nanmean(inter / union)
    assert result["single_scale"]["mIoU"] == round(miou * 100, 2)
    assert result["single_scale"]["aAcc"] == round(inter.sum() / lab.sum() * 100, 2)
    assert len(result["single_scale"]["IoU"]) == 150 and "bed " in result["single_scale"]["IoU"]
