"""synth -> prepare -> dataset round trips and every bad-input error of prepare
(docs/reference.md §3)."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
from cityscapesscripts.helpers.labels import labels as cs_labels

from dnlrepro.acquire import prepare as P
from dnlrepro.acquire import synth
from dnlrepro.core.config import load_config
from dnlrepro.data.datasets import build_dataset, load_label

CS = "dnl_r50-d8_512x1024_40k_cityscapes"
ADE = "dnl_r50-d8_512x512_80k_ade20k"


@pytest.fixture(scope="module")
def cs_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("cs")
    synth.write_cityscapes(base / "arch", 4, 2, width=96, height=48, seed=1)
    P.prepare("cityscapes", base / "arch", base / "root", expect=(4, 2))
    return base / "root"


@pytest.fixture(scope="module")
def ade_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("ade")
    synth.write_ade20k(base / "arch", 4, 2, min_size=40, max_size=80, seed=2)
    P.prepare("ade20k", base / "arch", base / "ade" / "ADEChallengeData2016", expect=(4, 2))
    return base / "ade" / "ADEChallengeData2016"


def test_synth_is_deterministic_and_in_the_real_layout(tmp_path: Path) -> None:
    a = synth.write_cityscapes(tmp_path / "a", 3, 1, width=64, height=32, seed=5)
    b = synth.write_cityscapes(tmp_path / "b", 3, 1, width=64, height=32, seed=5)
    c = synth.write_cityscapes(tmp_path / "c", 3, 1, width=64, height=32, seed=6)
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]
    assert a[1].read_bytes() != c[1].read_bytes()
    names = zipfile.ZipFile(a[0]).namelist()
    assert "gtFine/train/aachen/aachen_000000_000019_gtFine_polygons.json" in names
    assert "gtFine/val/frankfurt/frankfurt_000000_000019_gtFine_labelIds.png" in names
    poly = json.loads(zipfile.ZipFile(a[0]).read(names[2]))
    assert set(poly) == {"imgHeight", "imgWidth", "objects"} and poly["imgWidth"] == 64
    known = {lab.name for lab in cs_labels}
    assert all(o["label"] in known and len(o["polygon"]) >= 3 for o in poly["objects"])
    imgs = zipfile.ZipFile(a[1]).namelist()
    assert "leftImg8bit/train/bochum/bochum_000000_000020_leftImg8bit.png" in imgs
    (ade,) = synth.write_ade20k(tmp_path / "d", 2, 1, min_size=30, max_size=50, seed=0)
    names = zipfile.ZipFile(ade).namelist()
    assert "ADEChallengeData2016/images/training/ADE_train_00000001.jpg" in names
    assert "ADEChallengeData2016/annotations/validation/ADE_val_00000001.png" in names
    info = zipfile.ZipFile(ade).read("ADEChallengeData2016/objectInfo150.txt").decode()
    assert info.startswith("Idx\tRatio\tTrain\tVal\tName") and len(info.splitlines()) == 151


def test_cityscapes_round_trip(cs_root: Path) -> None:
    man = json.loads((cs_root / "manifest.json").read_text())
    assert man["counts"] == {"train": 4, "val": 2}
    assert len(man["files"]) == 12 and all(len(v["sha256"]) == 64 for v in man["files"].values())
    # trainIds written by json2labelImg agree with labelIds through the official id->trainId map.
    id2train = np.full(256, 255, np.uint8)
    for lab in cs_labels:
        if lab.id >= 0:
            id2train[lab.id] = lab.trainId if 0 <= lab.trainId < 19 else 255
    for ids_png in sorted(cs_root.rglob("*_gtFine_labelIds.png")):
        train = load_label(str(ids_png).replace("labelIds", "labelTrainIds"), False)
        np.testing.assert_array_equal(train, id2train[load_label(ids_png, False)])
    cfg = load_config(CS, "smoke", {"data.data_root": str(cs_root)}).data
    ds = build_dataset(cfg, cfg.train_split, "train")
    item = ds[0]
    assert tuple(item["img"].shape) == (3, *cfg.crop_size)
    assert tuple(item["gt"].shape) == tuple(cfg.crop_size)
    assert set(item["gt"].unique().tolist()) <= {*range(19), 255}
    test = build_dataset(cfg, cfg.val_split, "test", max_images=1)
    t = test[0]
    assert len(test) == 1 and t["ori_shape"] == (48, 96) and t["img_bgr"].dtype == np.uint8
    assert t["ann_path"].endswith("_gtFine_labelTrainIds.png")
    assert "frankfurt" in t["img_path"]


def test_ade20k_round_trip(ade_root: Path) -> None:
    cfg = load_config(ADE, "smoke", {"data.data_root": str(ade_root)}).data
    ds = build_dataset(cfg, cfg.train_split, "train")
    assert len(ds) == 4
    gts = [ds[(i, 7)]["gt"] for i in range(4)]
    values = set(np.unique(np.concatenate([g.numpy().ravel() for g in gts])).tolist())
    assert values <= {*range(150), 255} and len(values) > 2
    test = build_dataset(cfg, cfg.val_split, "test")
    raw = load_label(test[0]["ann_path"], False)
    red = load_label(test[0]["ann_path"], True)
    np.testing.assert_array_equal(red[raw == 0], 255)
    np.testing.assert_array_equal(red[raw > 0], raw[raw > 0] - 1)


def test_prepare_rerun_is_idempotent_and_skips_extraction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synth.write_ade20k(tmp_path / "arch", 2, 1, min_size=30, max_size=40, seed=3)
    root = tmp_path / "ADEChallengeData2016"
    first = P.prepare("ade20k", tmp_path / "arch", root, expect=(2, 1))

    def boom(*a: object, **k: object) -> None:
        raise AssertionError("extracted again")

    monkeypatch.setattr(P, "extract", boom)
    assert P.prepare("ade20k", tmp_path / "arch", root, expect=(2, 1)) == first
    # Same bytes, new mtime (re-synthesised or copied): matched by sha256, not extracted.
    arch = tmp_path / "arch" / "ADEChallengeData2016.zip"
    os.utime(arch, (1, 1))
    again = P.prepare("ade20k", tmp_path / "arch", root, expect=(2, 1))
    assert again["archives"][arch.name]["mtime"] == 1
    assert P.read_manifest(root)["archives"][arch.name]["mtime"] == 1
    monkeypatch.undo()
    # Different content: extracted again.
    synth.write_ade20k(tmp_path / "arch", 2, 1, min_size=30, max_size=40, seed=4)
    calls = []
    real_extract = P.extract
    monkeypatch.setattr(P, "extract", lambda *a: calls.append(a) or real_extract(*a))
    changed = P.prepare("ade20k", tmp_path / "arch", root, expect=(2, 1))
    assert len(calls) == 1 and changed["files"] != first["files"]


def _prepared_copy(tmp_path: Path, dataset: str) -> Path:
    if dataset == "cityscapes":
        synth.write_cityscapes(tmp_path / "arch", 3, 1, width=64, height=32, seed=4)
        P.prepare("cityscapes", tmp_path / "arch", tmp_path / "root", expect=(3, 1))
        return tmp_path / "root"
    synth.write_ade20k(tmp_path / "arch", 3, 1, min_size=30, max_size=40, seed=4)
    P.prepare("ade20k", tmp_path / "arch", tmp_path / "root", expect=(3, 1))
    return tmp_path / "root"


def test_prepare_reports_every_problem_with_its_file(tmp_path: Path) -> None:
    root = _prepared_copy(tmp_path, "ade20k")
    imgs = sorted((root / "images" / "training").glob("*.jpg"))
    anns = sorted((root / "annotations" / "training").glob("*.png"))
    imgs[0].write_bytes(b"not a jpeg")  # corrupt image
    bad = load_label(anns[1], False).copy()
    bad[0, 0] = 200  # label value outside 0..150
    cv2.imwrite(str(anns[1]), bad)
    cv2.imwrite(str(anns[2]), np.zeros((5, 7), np.uint8))  # size mismatch
    (root / "annotations" / "validation" / "ADE_val_00000001.png").unlink()  # missing pair
    with pytest.raises(P.PrepareError) as e:
        P.validate_or_raise("ade20k", root, (3, 1))
    msg = str(e.value)
    assert imgs[0].name in msg and "decoded" in msg
    assert anns[1].name in msg and "[200]" in msg
    assert anns[2].name in msg and "7x5" in msg
    assert "ADE_val_00000001.jpg: no label" in msg
    assert "4 problem(s)" in msg


def test_prepare_count_mismatch_and_unknown_cityscapes_label(tmp_path: Path) -> None:
    root = _prepared_copy(tmp_path, "cityscapes")
    with pytest.raises(P.PrepareError, match=r"3 images, expected 2975"):
        P.validate_or_raise("cityscapes", root, P.REAL_COUNTS["cityscapes"])
    js = sorted(root.rglob("*_polygons.json"))[0]
    ann = json.loads(js.read_text())
    ann["objects"].append({"label": "unicorn", "polygon": [[0, 0], [5, 0], [5, 5]]})
    js.write_text(json.dumps(ann))
    problems = P.convert_cityscapes(root)
    assert len(problems) == 1 and "unicorn" in problems[0] and js.name in problems[0]


def test_prepare_missing_archives_and_dataset_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"gtFine_trainvaltest\.zip.*dnlrepro synth"):
        P.prepare("cityscapes", tmp_path / "none", tmp_path / "root", expect=(1, 1))
    cfg = load_config(CS, "smoke", {"data.data_root": str(tmp_path / "nowhere")}).data
    with pytest.raises(FileNotFoundError, match=r"nowhere.*dnlrepro prepare"):
        build_dataset(cfg, "train")


def test_dataset_errors_on_bad_files(tmp_path: Path) -> None:
    root = _prepared_copy(tmp_path, "cityscapes")
    cfg = load_config(CS, "smoke", {"data.data_root": str(root)}).data
    ds = build_dataset(cfg, "train")
    lab = sorted(root.rglob("*_labelTrainIds.png"))
    lab[0].unlink()
    with pytest.raises(FileNotFoundError, match="label file"):
        build_dataset(cfg, "train")
    cv2.imwrite(str(lab[0]), np.zeros((3, 3), np.uint8))
    with pytest.raises(ValueError, match="3x3"):
        ds[0]
    ds.img_paths[1].write_bytes(b"garbage")
    with pytest.raises(ValueError, match="could not be decoded"):
        ds[1]


def test_cli_synth_then_prepare(tmp_path: Path) -> None:
    from dnlrepro import cli

    arch, root = tmp_path / "arch", tmp_path / "ade" / "ADEChallengeData2016"
    assert (
        cli.main(
            [
                "synth",
                "--dataset",
                "ade20k",
                "--out",
                str(arch),
                "--train",
                "2",
                "--val",
                "1",
                "--min-size",
                "20",
                "--max-size",
                "30",
            ]
        )
        == 0
    )
    argv = ["prepare", "--dataset", "ade20k", "--archives", str(arch), "--data-root", str(root)]
    assert cli.main(argv) == 1  # real counts expected by default
    assert cli.main([*argv, "--expect-train", "2", "--expect-val", "1"]) == 0
    assert json.loads((root / "manifest.json").read_text())["counts"] == {
        "training": 2,
        "validation": 1,
    }


def test_local_extracted_folders_are_linked_and_prepared(tmp_path: Path) -> None:
    from dnlrepro.acquire import download

    # The user already has extracted copies (not archives) somewhere else.
    synth.write_cityscapes(tmp_path / "zips", 2, 1, width=64, height=32, seed=8)
    mine = tmp_path / "my_cityscapes"
    for z in sorted((tmp_path / "zips").glob("*.zip")):
        P.safe_extract(z, mine)
    synth.write_ade20k(tmp_path / "zips", 2, 1, min_size=20, max_size=30, seed=8)
    P.safe_extract(tmp_path / "zips" / "ADEChallengeData2016.zip", tmp_path / "my_ade")
    dl = tmp_path / "downloads"
    download.link_local("cityscapes", mine, dl, download.CITYSCAPES_ARCHIVES)
    download.link_local("ade20k", tmp_path / "my_ade", dl, download.ADE20K_ARCHIVES)
    cs = P.prepare("cityscapes", dl, tmp_path / "data" / "cityscapes", expect=(2, 1))
    ade = P.prepare("ade20k", dl, tmp_path / "data" / "ade" / "ADEChallengeData2016", (2, 1))
    assert cs["counts"] == {"train": 2, "val": 1} and len(ade["files"]) == 6
    assert (tmp_path / "data" / "cityscapes" / "leftImg8bit").resolve() == (mine / "leftImg8bit")


def test_prepare_of_a_bad_archive_leaves_nothing(tmp_path: Path) -> None:
    """A corrupt member, or one far larger than the dataset's bound (the issue: a 300 KB zip
    holding 300 MB), fails prepare and leaves no data root, no partial member, no temp folder."""
    from dnlrepro.acquire import archives

    (arch,) = synth.write_ade20k(tmp_path / "arch", 2, 1, min_size=20, max_size=30, seed=1)
    raw = bytearray(arch.read_bytes())
    info = zipfile.ZipFile(arch).infolist()[-1]  # corrupt the last member's data
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    raw[start + info.compress_size // 2] ^= 0xFF
    arch.write_bytes(bytes(raw))
    root = tmp_path / "data" / "ade" / "ADEChallengeData2016"
    with pytest.raises(archives.BadArchiveError, match=r"ADEChallengeData2016\.zip"):
        P.prepare("ade20k", tmp_path / "arch", root, expect=(2, 1))
    assert not (tmp_path / "data").exists()

    big = archives.LIMITS[arch.name].member_bytes + 1
    with zipfile.ZipFile(arch, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("ADEChallengeData2016/images/training/ADE_train_00000001.jpg", bytes(big))
    with pytest.raises(archives.ArchiveLimitError, match=rf"declares {big} bytes"):
        P.prepare("ade20k", tmp_path / "arch", root, expect=(2, 1))
    assert not (tmp_path / "data").exists()
