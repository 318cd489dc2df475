"""``dnlrepro predict``: label PNGs at the original size, overlays, and clear errors.

§ numbers refer to docs/reference.md.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from dnlrepro.cli import main as cli_main
from dnlrepro.core.config import load_config
from dnlrepro.data import classes, transforms
from dnlrepro.models import build_segmentor, save_checkpoint
from dnlrepro.tools.predict import label_lut, overlay, predict
from dnlrepro.tools.predict_outputs import MANIFEST, collect_images

CONFIG = "dnl_r50-d8_512x512_80k_ade20k"
# Test scale (long, short) = (48, 24): images are resized before inference and back afterwards.
OVERRIDES = {"test.img_scale": [48, 24]}


def _model(cfg, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_segmentor(cfg).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    return model


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory):
    base = tmp_path_factory.mktemp("predict")
    cfg = load_config(CONFIG, "smoke", overrides=OVERRIDES)
    model = _model(cfg)
    ckpt = save_checkpoint(base / "model.pth", model)
    images = base / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    # Two sizes, portrait and landscape, PNG and JPEG.
    cv2.imwrite(str(images / "a.png"), rng.integers(0, 256, (30, 50, 3), dtype=np.uint8))
    cv2.imwrite(str(images / "b.jpg"), rng.integers(0, 256, (41, 23, 3), dtype=np.uint8))
    (images / "notes.txt").write_text("not an image suffix: skipped when a folder is given")
    return cfg, model, ckpt, images, base


def test_predict_writes_label_pngs_at_original_size_and_overlays(setup, tmp_path):
    cfg, model, ckpt, images, _ = setup
    written = predict(cfg, ckpt, [images], tmp_path, device="cpu", with_overlay=True)
    assert [p.name for p in written] == ["a.png", "b.png"]
    for src, dst in [(images / "a.png", written[0]), (images / "b.jpg", written[1])]:
        img = cv2.imread(str(src), cv2.IMREAD_COLOR)
        with Image.open(dst) as im:
            assert im.mode == "L" and im.size == (img.shape[1], img.shape[0])
            label = np.array(im)
        assert label.dtype == np.uint8 and label.max() < cfg.model.num_classes
        # Same label map as the model's own single-scale test path (§3.4, §5.2).
        ((view, _),) = transforms.test_views(img, cfg.test.img_scale, (1.0,), False, cfg.data)
        assert view.shape[1:] != img.shape[:2], "the test resize must actually resize"
        with torch.no_grad():
            expected = model.inference(view[None], img.shape[:2]).argmax(1)[0].numpy()
        np.testing.assert_array_equal(label, expected)
        # Overlay: 0.5 image + 0.5 palette colour (palette is RGB, files are BGR).
        ov = cv2.imread(str(tmp_path / f"{dst.stem}_overlay.png"), cv2.IMREAD_COLOR)
        pal_bgr = np.asarray(classes.PALETTE["ade20k"], np.float64)[label][..., ::-1]
        np.testing.assert_array_equal(ov, (img * 0.5 + pal_bgr * 0.5).astype(np.uint8))


def test_overlay_blend_by_hand():
    img = np.full((1, 2, 3), 100, np.uint8)
    out = overlay(img, np.array([[0, 1]]), [(10, 20, 30), (255, 0, 0)])
    # pixel 0: BGR (30, 20, 10) -> (65, 60, 55); pixel 1: BGR (0, 0, 255) -> (50, 50, 177)
    assert out.tolist() == [[[65, 60, 55], [50, 50, 177]]]


def test_predict_ms_flip_differs_from_single_scale(setup, tmp_path):
    cfg, _, ckpt, images, _ = setup
    cfg = cfg.replace({"test.ms_ratios": [0.5, 1.5]})
    (out_ss,) = predict(cfg, ckpt, [images / "a.png"], tmp_path / "ss", device="cpu")
    (out_ms,) = predict(cfg, ckpt, [images / "a.png"], tmp_path / "ms", ms_flip=True)
    a, b = np.array(Image.open(out_ss)), np.array(Image.open(out_ms))
    assert a.shape == b.shape == (30, 50) and not np.array_equal(a, b)


def test_unreadable_image_is_named(setup, tmp_path, capsys):
    _, _, ckpt, _, base = setup
    bad = base / "broken.png"
    bad.write_bytes(b"this is not a PNG")
    with pytest.raises(ValueError, match=r"broken\.png"):
        predict(load_config(CONFIG, "smoke", OVERRIDES), ckpt, [bad], tmp_path)
    rc = cli_main(["predict", "--config", CONFIG, "--profile", "smoke", "--checkpoint", str(ckpt),
                   "--images", str(bad), "--out", str(tmp_path)])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 1 and str(bad) in err and err.count("\n") == 1
    assert not list(tmp_path.glob("*.png")), "nothing is written when an input is unreadable"


def test_mismatched_checkpoint_names_file_and_keys(setup, tmp_path, capsys):
    _, _, _, images, base = setup
    other = load_config(CONFIG, "smoke", overrides={**OVERRIDES, "model.num_classes": 5})
    wrong = save_checkpoint(base / "five_classes.pth", build_segmentor(other))
    rc = cli_main(["predict", "--config", CONFIG, "--profile", "smoke", "--checkpoint", str(wrong),
                   "--images", str(images / "a.png"), "--out", str(tmp_path)])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 1
    assert "five_classes.pth" in err and "conv_seg" in err


def test_missing_inputs_and_duplicate_stems(setup, tmp_path):
    cfg, _, _, images, _ = setup
    with pytest.raises(FileNotFoundError, match=r"nope\.pth"):
        predict(cfg, tmp_path / "nope.pth", [images / "a.png"], tmp_path)
    with pytest.raises(FileNotFoundError, match=r"missing\.png"):
        collect_images([images / "missing.png"])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no images"):
        collect_images([empty])
    twin = tmp_path / "a.jpg"
    cv2.imwrite(str(twin), np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="share the stem"):
        collect_images([images / "a.png", twin])
    assert collect_images([images, images / "a.png"]) == [images / "a.png", images / "b.jpg"]


# -- output safety, recursion, label conventions ---------------------------------------------


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(f.relative_to(folder)): f.read_bytes() for f in folder.rglob("*") if f.is_file()}


def _copy_images(images: Path, dest: Path) -> Path:
    dest.mkdir(parents=True)
    for name in ("a.png", "b.jpg", "notes.txt"):
        shutil.copy2(images / name, dest / name)
    return dest


def test_out_equal_to_input_folder_is_refused_and_inputs_untouched(setup, tmp_path, capsys):
    cfg, _, ckpt, images, _ = setup
    folder = _copy_images(images, tmp_path / "in")
    before = _snapshot(folder)
    with pytest.raises(ValueError, match=r"input image .*a\.png.*choose another --out"):
        predict(cfg, ckpt, [folder], folder, device="cpu")
    rc = cli_main(["predict", "--config", CONFIG, "--profile", "smoke", "--checkpoint", str(ckpt),
                   "--images", str(folder), "--out", str(folder)])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1 and "would be overwritten" in err
    assert _snapshot(folder) == before, "inputs byte-identical, nothing added"


def test_foreign_file_at_an_output_path_is_refused_with_nothing_written(setup, tmp_path):
    cfg, _, ckpt, images, _ = setup
    out = tmp_path / "out"
    out.mkdir()
    (out / "b.png").write_bytes(b"someone else's file")
    foreign = r"refusing to overwrite .*b\.png: .*not written by dnlrepro predict.*--out .*delete"
    with pytest.raises(ValueError, match=foreign):
        predict(cfg, ckpt, [images], out, device="cpu", with_overlay=True)
    assert _snapshot(out) == {"b.png": b"someone else's file"}
    # A predict.json that predict did not write is not trusted (nor overwritten) either.
    (out / "b.png").unlink()
    (out / MANIFEST).write_text('{"files": {}}')
    with pytest.raises(ValueError, match=r"predict\.json: it is not a manifest"):
        predict(cfg, ckpt, [images], out, device="cpu")
    assert _snapshot(out) == {MANIFEST: b'{"files": {}}'}


def test_the_manifest_given_as_an_input_is_refused_and_kept(setup, tmp_path):
    cfg, _, ckpt, images, _ = setup
    out = tmp_path / "out"
    predict(cfg, ckpt, [images], out, device="cpu")  # a real manifest of predict's own
    before = _snapshot(out)
    with pytest.raises(ValueError, match=r"refusing to overwrite the input .*predict\.json"):
        predict(cfg, ckpt, [images / "a.png", out / MANIFEST], out, device="cpu")
    assert _snapshot(out) == before


def test_a_symlinked_sub_folder_leading_outside_out_is_refused(setup, tmp_path):
    cfg, _, ckpt, images, _ = setup
    val = tmp_path / "val"
    (val / "aachen").mkdir(parents=True)
    shutil.copy2(images / "a.png", val / "aachen" / "a.png")
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    (out / "aachen").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(ValueError) as err:
        predict(cfg, ckpt, [val], out, device="cpu")
    link = out / "aachen"
    assert f"{link} is a symbolic link to {elsewhere}, outside --out {out}" in str(err.value)
    assert not list(elsewhere.iterdir()) and sorted(out.iterdir()) == [link]  # nothing written
    # A link that stays inside --out is written through as before.
    link.unlink()
    (out / "inside").mkdir()
    link.symlink_to(out / "inside", target_is_directory=True)
    assert predict(cfg, ckpt, [val], out, device="cpu") == [link / "a.png"]
    assert (out / "inside" / "a.png").is_file()


def test_rerun_into_same_out_overwrites_only_own_outputs(setup, tmp_path):
    cfg, _, ckpt, images, _ = setup
    out = tmp_path / "out"
    first = predict(cfg, ckpt, [images], out, device="cpu", with_overlay=True)
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["labels"] == "train_ids" and "0..149" in manifest["label_values"]
    assert sorted(manifest["files"]) == ["a.png", "a_overlay.png", "b.png", "b_overlay.png"]
    snap = _snapshot(out)
    second = predict(cfg, ckpt, [images], out, device="cpu", with_overlay=True)
    assert second == first and _snapshot(out) == snap
    # Once a listed file is changed by someone else, it is no longer predict's own.
    (out / "a_overlay.png").write_bytes(b"edited")
    with pytest.raises(ValueError, match=r"a_overlay\.png"):
        predict(cfg, ckpt, [images], out, device="cpu", with_overlay=True)
    assert (out / "a_overlay.png").read_bytes() == b"edited"


def test_out_inside_or_equal_to_input_folder_never_rescans_outputs(setup, tmp_path):
    cfg, _, ckpt, images, _ = setup
    folder = _copy_images(images, tmp_path / "in")
    inner = folder / "pred"
    for _ in range(2):  # the second scan skips the out folder: no pred/pred/a.png
        written = predict(cfg, ckpt, [folder], inner, device="cpu", with_overlay=True)
        assert written == [inner / "a.png", inner / "b.png"]
    assert collect_images([folder], inner) == [folder / "a.png", folder / "b.jpg"]
    # out == input folder without collisions (only the JPEG): b.png is not an input next time.
    jpgs = tmp_path / "jpgs"
    jpgs.mkdir()
    shutil.copy2(images / "b.jpg", jpgs / "b.jpg")
    for _ in range(2):
        assert predict(cfg, ckpt, [jpgs], jpgs, device="cpu") == [jpgs / "b.png"]
    assert collect_images([jpgs]) == [jpgs / "b.jpg"]
    assert sorted(f.name for f in jpgs.iterdir()) == ["b.jpg", "b.png", MANIFEST]


def test_recursion_keeps_sub_folder_structure(setup, tmp_path):
    cfg, _, ckpt, images, _ = setup
    val = tmp_path / "leftImg8bit" / "val"
    for city in ("bochum", "aachen"):
        (val / city).mkdir(parents=True)
        shutil.copy2(images / "a.png", val / city / f"{city}_000000_leftImg8bit.png")
        shutil.copy2(images / "b.jpg", val / city / "same.JPG")  # same stem in both cities
    out = tmp_path / "out"
    written = predict(cfg, ckpt, [val], out, device="cpu")
    rel = [p.relative_to(out).as_posix() for p in written]
    assert rel == ["aachen/aachen_000000_leftImg8bit.png", "aachen/same.png",
                   "bochum/bochum_000000_leftImg8bit.png", "bochum/same.png"]  # fmt: skip
    with Image.open(out / "bochum" / "same.png") as im:
        assert im.size == (23, 41)
    assert sorted(json.loads((out / MANIFEST).read_text())["files"]) == rel


def test_labels_dataset_ade20k_is_train_ids_plus_one(setup, tmp_path):
    cfg, _, ckpt, images, _ = setup
    (train,) = predict(cfg, ckpt, [images / "a.png"], tmp_path / "t", device="cpu")
    (ds,) = predict(cfg, ckpt, [images / "a.png"], tmp_path / "d", device="cpu", labels="dataset")
    a, b = np.array(Image.open(train)), np.array(Image.open(ds))
    np.testing.assert_array_equal(b, a + 1)
    assert b.min() >= 1 and b.max() <= 150
    manifest = json.loads((tmp_path / "d" / MANIFEST).read_text())
    assert manifest["labels"] == "dataset" and "1..150" in manifest["label_values"]
    assert manifest["files"]["a.png"]["labels"] == "dataset"


def test_labels_dataset_cityscapes_writes_label_ids(setup, tmp_path):
    from cityscapesscripts.helpers.labels import trainId2label

    _, _, _, images, _ = setup
    cs_cfg = load_config("dnl_r50-d8_512x1024_40k_cityscapes", "smoke", overrides=OVERRIDES)
    ckpt = save_checkpoint(tmp_path / "cs.pth", _model(cs_cfg, seed=1))
    lut = label_lut("cityscapes", "dataset")
    assert lut[0] == 7 and lut[11] == 24 and lut[18] == 33  # road, person, bicycle
    label_ids = {trainId2label[t].id for t in range(19)}
    (train,) = predict(cs_cfg, ckpt, [images / "a.png"], tmp_path / "t", device="cpu")
    (ds,) = predict(cs_cfg, ckpt, [images / "a.png"], tmp_path / "d", labels="dataset")
    a, b = np.array(Image.open(train)), np.array(Image.open(ds))
    assert a.max() < 19 and set(np.unique(b).tolist()) <= label_ids
    np.testing.assert_array_equal(b, lut[a])
