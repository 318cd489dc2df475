"""Inference semantics (§5.2 whole / slide, §5.3 ms+flip, §1.1 two-step resizing).

§ numbers refer to docs/reference.md.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dnlrepro.core.config import load_config
from dnlrepro.models import EncoderDecoder, build_segmentor

CITY = "dnl_r50-d8_512x1024_40k_cityscapes"
CITY769 = "dnl_r50-d8_769x769_40k_cityscapes"


@pytest.fixture(scope="module")
def model() -> EncoderDecoder:
    """whole mode, align_corners=False."""
    torch.manual_seed(0)
    return build_segmentor(load_config(CITY, "smoke")).eval()


@pytest.fixture(scope="module")
def model769() -> EncoderDecoder:
    """slide mode, align_corners=True; 33x33 windows / stride 17 keep the CPU cost small."""
    torch.manual_seed(1)
    cfg = load_config(
        CITY769, "smoke", overrides={"test.crop_size": [33, 33], "test.stride": [17, 17]}
    )
    m = build_segmentor(cfg).eval()
    assert m.align_corners and cfg.test.mode == "slide"
    return m


def test_whole_inference_two_step_resize(model: EncoderDecoder) -> None:
    img = torch.randn(1, 3, 40, 72)
    ori = (50, 90)
    probs = model.inference(img, ori)
    assert tuple(probs.shape) == (1, 19, 50, 90)
    assert not probs.requires_grad
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(1, 50, 90))
    with torch.no_grad():
        small = model.decode_head(model.extract_feat(img))  # [1, 19, 5, 9]
    step1 = F.interpolate(small, size=(40, 72), mode="bilinear", align_corners=False)
    step2 = F.interpolate(step1, size=ori, mode="bilinear", align_corners=False)
    torch.testing.assert_close(probs, step2.softmax(dim=1))
    direct = F.interpolate(small, size=ori, mode="bilinear", align_corners=False).softmax(dim=1)
    assert not torch.allclose(probs, direct, atol=1e-6)  # the two steps matter
    labels = model.simple_test(img, ori)
    assert labels.dtype == torch.long and tuple(labels.shape) == (1, 50, 90)
    assert torch.equal(labels, probs.argmax(dim=1))


def test_slide_equals_whole_when_one_window_covers(model769: EncoderDecoder) -> None:
    img = torch.randn(1, 3, 30, 28)
    slide = model769.slide_inference(img, crop_size=(33, 33), stride=(17, 17), ori_shape=(35, 30))
    whole = model769.whole_inference(img, ori_shape=(35, 30))
    torch.testing.assert_close(slide, whole, rtol=0, atol=0)


def record_windows(model: EncoderDecoder, monkeypatch: pytest.MonkeyPatch) -> list:
    boxes: list[tuple[int, int]] = []
    original = model.encode_decode

    def spy(img: torch.Tensor) -> torch.Tensor:
        boxes.append(tuple(img.shape[-2:]))
        return original(img)

    monkeypatch.setattr(model, "encode_decode", spy)
    return boxes


def test_slide_window_grid_and_average(
    model769: EncoderDecoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 49 x 81 with 33/17 windows: h grids = (49-33+16)//17+1 = 2, w = (81-33+16)//17+1 = 4,
    # the 2 x 4 grid of the real 2049x1025 image with 769/513 windows (§5.2).
    img = torch.randn(1, 3, 49, 81)
    with torch.no_grad():
        expected = torch.zeros(1, 19, 49, 81)
        count = torch.zeros(1, 1, 49, 81)
        for y1 in (0, 16):  # the last window is pushed back to end at the border
            for x1 in (0, 17, 34, 48):
                crop = img[:, :, y1 : y1 + 33, x1 : x1 + 33]
                expected[:, :, y1 : y1 + 33, x1 : x1 + 33] += model769.encode_decode(crop)
                count[:, :, y1 : y1 + 33, x1 : x1 + 33] += 1
        expected /= count
    assert count.min() == 1 and count.max() == 6  # x in [48, 50) is in 3 windows, y in 2
    boxes = record_windows(model769, monkeypatch)
    got = model769.slide_inference(img)  # crop/stride from cfg.test
    assert boxes == [(33, 33)] * 8
    torch.testing.assert_close(got, expected)


def test_slide_window_larger_than_image_is_not_padded(
    model769: EncoderDecoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ms+flip at ratio 0.5 of the 769 configs: image height < crop -> fed as is (mmseg >= v0.7)."""
    boxes = record_windows(model769, monkeypatch)
    probs = model769.inference(torch.randn(1, 3, 20, 60), ori_shape=(40, 120))
    assert boxes == [(20, 33)] * 3  # w grids = (60-33+16)//17+1 = 3; height 20 < 33 unpadded
    assert tuple(probs.shape) == (1, 19, 40, 120)


def test_slide_window_larger_than_image_padded_like_v050(
    model769: EncoderDecoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """test.small_window 'pad' (§5.2, mmseg v0.5.0): each 20x33 window is zero-padded at the
    bottom to 33x33, run, and its logits are cropped back to the window."""
    img = torch.randn(1, 3, 20, 60)
    with torch.no_grad():
        expected = torch.zeros(1, 19, 20, 60)
        count = torch.zeros(1, 1, 20, 60)
        for x1 in (0, 17, 27):  # w grids = 3, the last window pushed back to end at 60
            padded = torch.zeros(1, 3, 33, 33)
            padded[:, :, :20] = img[:, :, :, x1 : x1 + 33]
            expected[:, :, :, x1 : x1 + 33] += model769.encode_decode(padded)[:, :, :20]
            count[:, :, :, x1 : x1 + 33] += 1
        expected /= count
        unpadded = model769.slide_inference(img, small_window="unpadded")
    # The config key selects the mode (the default of slide_inference and inference).
    monkeypatch.setattr(model769, "cfg", model769.cfg.replace({"test.small_window": "pad"}))
    boxes = record_windows(model769, monkeypatch)
    got = model769.slide_inference(img)
    assert boxes == [(33, 33)] * 3
    torch.testing.assert_close(got, expected)
    assert not torch.allclose(got, unpadded, atol=1e-4)  # the zero rows change the border logits
    with pytest.raises(ValueError, match="small_window"):
        model769.slide_inference(img, small_window="reflect")


def test_aug_test_is_mean_of_view_softmaxes(model: EncoderDecoder) -> None:
    torch.manual_seed(0)
    ori = (25, 41)
    base = torch.randn(1, 3, 25, 41)
    big = F.interpolate(base, size=(37, 61), mode="bilinear", align_corners=False)
    views = [base, base.flip(dims=(3,)), big, big.flip(dims=(3,))]
    flips = [False, True, False, True]
    got = model.aug_test(views, flips, ori)
    per_view = []
    with torch.no_grad():
        for img, flip in zip(views, flips, strict=True):
            logits = model.encode_decode(img)  # input-size logits
            logits = F.interpolate(logits, size=ori, mode="bilinear", align_corners=False)
            p = logits.softmax(dim=1)
            per_view.append(p.flip(dims=(3,)) if flip else p)
    expected = torch.stack(per_view).mean(dim=0)
    torch.testing.assert_close(got, expected)
    assert not torch.allclose(per_view[0], per_view[1])  # views differ: the mean is not trivial
    with pytest.raises(ValueError, match="one flip flag per view"):
        model.aug_test(views, flips[:2], ori)


def test_inference_is_deterministic_and_batched(model: EncoderDecoder) -> None:
    img = torch.randn(2, 3, 32, 48)
    a = model.inference(img, (32, 48))
    b = torch.cat([model.inference(img[i : i + 1], (32, 48)) for i in range(2)])
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
