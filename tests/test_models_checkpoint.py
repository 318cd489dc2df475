"""Checkpoint I/O: mmseg round trip, strict-mismatch errors, pretrained backbone (§1.7, §2.2).

§ numbers refer to docs/reference.md.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from dnlrepro.acquire.download import sha256_prefix_from_name
from dnlrepro.core.config import load_config
from dnlrepro.core.registry import PRETRAINED_URLS
from dnlrepro.models import (
    CheckpointError,
    EncoderDecoder,
    build_segmentor,
    convert_sync_batchnorm,
    load_checkpoint,
    load_pretrained_backbone,
    read_checkpoint,
    revert_sync_batchnorm,
    save_checkpoint,
)

CITY = "dnl_r50-d8_512x1024_40k_cityscapes"


@pytest.fixture(scope="module")
def model() -> EncoderDecoder:
    torch.manual_seed(0)
    m = build_segmentor(load_config(CITY, "smoke"))
    with torch.no_grad():  # non-default BN statistics so the round trip checks buffers too
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.normal_()
                mod.num_batches_tracked.fill_(7)
    return m.eval()


@pytest.fixture(scope="module")
def other() -> EncoderDecoder:
    torch.manual_seed(123)
    return build_segmentor(load_config(CITY, "smoke")).eval()


def assert_same_state(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_mmseg_round_trip(model: EncoderDecoder, other: EncoderDecoder, tmp_path: Path) -> None:
    path = save_checkpoint(
        tmp_path / "ckpt" / "iter_4.pth",
        model,
        meta={"CLASSES": ["road", "sidewalk"], "iter": 4},
        optimizer={"state": {}, "param_groups": []},
        iter=4,
    )
    assert path.is_file() and not list(path.parent.glob("*.tmp"))  # temp file renamed away
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert set(raw) == {"meta", "state_dict", "optimizer", "iter"}
    assert len(raw["state_dict"]) == 372 and not any(
        k.startswith("module.") for k in raw["state_dict"]
    )
    meta = load_checkpoint(other, path, strict=True)
    assert meta["CLASSES"] == ["road", "sidewalk"] and meta["iter"] == 4 and "time" in meta
    assert_same_state(model, other)
    img = torch.randn(1, 3, 24, 40)
    torch.testing.assert_close(model.inference(img, (24, 40)), other.inference(img, (24, 40)))
    assert read_checkpoint(path)["iter"] == 4
    # Anything but tensors and plain data is refused, never unpickled: the file and the global.
    rng_path = save_checkpoint(tmp_path / "rng.pth", model, rng=np.random.default_rng(0))
    with pytest.raises(CheckpointError, match=r"rng\.pth: refused: .*global numpy\."):
        load_checkpoint(other, rng_path)


def test_mmcv_layout_loads_without_any_extra_allowed_global(
    model: EncoderDecoder, other: EncoderDecoder, tmp_path: Path
) -> None:
    """What mmcv 1.x save_checkpoint + mmseg 0.x write (an OrderedDict state dict with
    ``_metadata``, meta of str/int/tuple/list/None), also in torch's legacy (pre-1.6) format."""
    state = model.state_dict()  # an OrderedDict carrying _metadata, as mmcv's weights_to_cpu
    meta = {
        "mmseg_version": "0.5.0+1234567", "mmcv_version": "1.0.4", "time": "Mon Jul 20 2020",
        "config": "model = dict(...)\n", "CLASSES": ("road", "sidewalk"),
        "PALETTE": [[128, 64, 128], [244, 35, 232]], "env_info": "sys.platform: linux",
        "seed": None, "exp_name": "dnl.py", "epoch": 1, "iter": 40000,
        "hook_msgs": {"last_ckpt": "work_dirs/iter_40000.pth"},
    }  # fmt: skip
    for legacy in (False, True):
        path = tmp_path / f"mmseg_{legacy}.pth"
        torch.save({"meta": meta, "state_dict": state}, path,
                   _use_new_zipfile_serialization=not legacy)  # fmt: skip
        assert load_checkpoint(other, path) == meta
        assert_same_state(model, other)


def test_bare_and_ddp_state_dicts(model: EncoderDecoder, other: EncoderDecoder, tmp_path: Path):
    ddp_like = {f"module.{k}": v for k, v in model.state_dict().items()}
    torch.save(ddp_like, tmp_path / "ddp.pth")
    with torch.no_grad():
        other.decode_head.conv_seg.weight.zero_()
    assert load_checkpoint(other, tmp_path / "ddp.pth") == {}
    assert_same_state(model, other)
    torch.save({"state_dict": ddp_like}, tmp_path / "wrapped.pth")
    load_checkpoint(other, str(tmp_path / "wrapped.pth"))
    assert_same_state(model, other)


def test_mismatch_errors_name_file_and_keys(model: EncoderDecoder, tmp_path: Path) -> None:
    sd = dict(model.state_dict())
    sd.pop("decode_head.dnl_block.conv_mask.bias")
    sd["decode_head.conv_seg.weight"] = torch.zeros(150, 512, 1, 1)  # an ADE20K head
    sd["decode_head.extra.weight"] = torch.zeros(1)
    bad = tmp_path / "bad.pth"
    torch.save({"meta": {}, "state_dict": sd}, bad)
    before = model.decode_head.conv_seg.weight.clone()
    with pytest.raises(ValueError) as err:
        load_checkpoint(model, bad)
    msg = str(err.value)
    assert str(bad) in msg
    assert "missing keys (1): decode_head.dnl_block.conv_mask.bias" in msg
    assert "unexpected keys (1): decode_head.extra.weight" in msg
    assert "decode_head.conv_seg.weight: file (150, 512, 1, 1) vs model (19, 512, 1, 1)" in msg
    assert torch.equal(model.decode_head.conv_seg.weight, before)  # nothing loaded on error
    # strict=False loads what fits and skips the rest.
    load_checkpoint(model, bad, strict=False)
    assert torch.equal(model.decode_head.conv_seg.weight, before)


def test_missing_and_unreadable_files(model: EncoderDecoder, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nope\.pth"):
        load_checkpoint(model, tmp_path / "nope.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"junk\.pth"):
        load_checkpoint(model, tmp_path / "junk.pth")
    torch.save({"optimizer": {}, "iter": 3}, tmp_path / "nosd.pth")
    with pytest.raises(ValueError, match="no 'state_dict'"):
        load_checkpoint(model, tmp_path / "nosd.pth")


def fake_v1c_file(model: EncoderDecoder, folder: Path, seed: int = 5) -> tuple[Path, dict]:
    """A file laid out like mmcv's resnet50_v1c: stem.* / layerX.* plus an ImageNet fc."""
    g = torch.Generator().manual_seed(seed)
    sd = {
        k: (torch.randn(v.shape, generator=g) if v.is_floating_point() else v.clone())
        for k, v in model.backbone.state_dict().items()
    }
    sd["fc.weight"] = torch.randn(1000, 2048, generator=g)
    sd["fc.bias"] = torch.zeros(1000)
    tmp = folder / "tmp.pth"
    torch.save({"state_dict": sd}, tmp)
    prefix = hashlib.sha256(tmp.read_bytes()).hexdigest()[:8]
    path = folder / f"resnet50_v1c-{prefix}.pth"
    tmp.rename(path)
    return path, sd


def test_pretrained_backbone_from_url(other: EncoderDecoder, http_dir, tmp_path: Path) -> None:
    from dnlrepro.tools.checkpoints import fetched

    root, base = http_dir
    path, sd = fake_v1c_file(other, root)
    head_before = other.decode_head.conv_cat.conv.weight.clone()
    url = f"{base}/{path.name}"
    with pytest.raises(FileNotFoundError, match=r"not a local file.*dnlrepro download"):
        load_pretrained_backbone(other, url)  # the model package never downloads
    with fetched(url, tmp_path / "dl") as local:
        missing, unexpected = load_pretrained_backbone(other, local)
    assert missing == [] and sorted(unexpected) == ["fc.bias", "fc.weight"]
    assert (tmp_path / "dl" / path.name).is_file()
    for k, v in other.backbone.state_dict().items():
        assert torch.equal(v, sd[k]), k
    assert torch.equal(other.decode_head.conv_cat.conv.weight, head_before)  # heads untouched


def test_pretrained_backbone_errors_and_partial(other: EncoderDecoder, tmp_path: Path) -> None:
    torch.save({"fc.weight": torch.zeros(2, 2)}, tmp_path / "wrong.pth")
    with pytest.raises(ValueError, match="matches the ResNetV1c backbone"):
        load_pretrained_backbone(other, tmp_path / "wrong.pth")
    sd = {k: v.clone() for k, v in other.backbone.state_dict().items()}
    sd.pop("stem.0.weight")
    sd["layer1.0.conv1.weight"] = torch.zeros(1, 1, 1, 1)
    torch.save(sd, tmp_path / "partial.pth")
    missing, unexpected = load_pretrained_backbone(other, tmp_path / "partial.pth")
    assert "stem.0.weight" in missing and unexpected == []


def test_pretrained_urls_and_hash_prefix() -> None:
    assert set(PRETRAINED_URLS) == {"resnet50_v1c", "resnet101_v1c"}
    assert all(
        u.startswith("https://download.openmmlab.com/pretrain/third_party/")
        for u in PRETRAINED_URLS.values()
    )
    assert sha256_prefix_from_name(PRETRAINED_URLS["resnet50_v1c"]) == "2cccc1ad"
    assert sha256_prefix_from_name(PRETRAINED_URLS["resnet101_v1c"]) == "e67eebb6"
    assert sha256_prefix_from_name("latest.pth") is None


def test_sync_batchnorm_conversion(model: EncoderDecoder) -> None:
    # Not distributed: convert_sync_batchnorm is a no-op (SyncBN needs a process group).
    assert convert_sync_batchnorm(model) is model
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in model.modules())
    head = nn.SyncBatchNorm.convert_sync_batchnorm(
        nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))
    ).eval()
    with torch.no_grad():
        head[1].running_mean.fill_(0.5)
    x = torch.randn(2, 3, 5, 5)
    expected = head(x)
    reverted = revert_sync_batchnorm(head)
    assert type(reverted[1]) is nn.BatchNorm2d
    torch.testing.assert_close(reverted(x), expected)


def test_a_short_write_fails_naming_the_file_and_the_space_and_keeps_the_old_checkpoint(
    tmp_path: Path,
) -> None:
    """A write the OS cuts short (here RLIMIT_FSIZE, as a full disk would) names the checkpoint,
    its size and the free space; the previous file at that path and the folder stay as they were."""
    import subprocess
    import sys
    import textwrap

    target = tmp_path / "latest.pth"
    target.write_bytes(b"previous checkpoint")
    script = textwrap.dedent(
        f"""
        import resource, signal, sys
        from torch import nn
        from dnlrepro.models import save_checkpoint
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails (EFBIG) instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
        try:
            save_checkpoint({str(target)!r}, nn.Linear(1000, 1000))
        except OSError as err:
            print(err)
            sys.exit(3)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 3, done.stdout + done.stderr
    assert f"writing checkpoint {target} failed" in done.stdout
    assert "the file needs about 4 MB" in done.stdout
    assert "MB are free on the disk of" in done.stdout
    assert target.read_bytes() == b"previous checkpoint"
    assert [p.name for p in tmp_path.iterdir()] == ["latest.pth"]
