"""One definition of a miniature (``core/miniature.py``), for the smoke profile and the rehearsal.

Every length is divided by its dataset's factor keeping 8x / 8x+1; counts and sizes of the
synthetic archives derive from the same factors; every row keeps its structure at both the smoke
profile's factors and the rehearsal's.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from dnlrepro.core import miniature, workspace
from dnlrepro.core.config import load_config
from dnlrepro.core.profile import load_profile
from dnlrepro.core.registry import config_names
from dnlrepro.rehearse import shrink

WS = workspace.find(Path(__file__).parent)
SMOKE = load_profile("smoke", WS)


def test_shrink_length_keeps_8x_and_8x_plus_1() -> None:
    lengths = (769, 1025, 2049, 513, 1024, 2048, 512)
    assert [miniature.shrink_length(n, 32) for n in lengths] == [25, 33, 65, 17, 32, 64, 16]
    assert [miniature.shrink_length(n, 16) for n in lengths] == [49, 65, 129, 33, 64, 128, 32]
    for factor in (8, 16, 32):
        for n in range(16, 2100):
            m = miniature.shrink_length(n, factor)
            assert m >= 1
            if n % 8 in (0, 1):
                assert m % 8 == n % 8 and m >= 8, (n, factor, m)


@pytest.mark.parametrize(
    "mini",
    [SMOKE.miniature, miniature.Miniature(shrink.FACTORS, shrink.COUNTS, 1)],
    ids=["smoke", "rehearsal"],
)
def test_every_row_keeps_its_structure(mini: miniature.Miniature) -> None:
    for name in config_names(WS):
        real = load_config(name, "paper", ws=WS)
        shrunk = mini.overrides(real.to_dict())
        assert set(shrunk) <= set(miniature.LENGTH_KEYS) | {"schedule.max_iters"}
        small = real.replace(shrunk)
        factor = mini.factors.of(real.data.dataset)
        assert miniature.check_structure(real, small, factor) == [], name


def test_the_smoke_profile_is_the_miniature_plus_its_overrides() -> None:
    """No hand-written sizes: the smoke crop, scale, slide window and stride of every row are
    the paper's divided by the smoke factors."""
    for name in config_names(WS):
        paper = load_config(name, "paper", ws=WS)
        smoke = load_config(name, SMOKE, ws=WS)
        factor = SMOKE.miniature.factors.of(paper.data.dataset)
        for key in miniature.LENGTH_KEYS:
            section, field = key.split(".")
            real, small = (
                getattr(paper.__dict__[section], field),
                getattr(smoke.__dict__[section], field),
            )
            expect = (
                None if real is None else tuple(miniature.shrink_length(v, factor) for v in real)
            )
            assert small == expect, (name, key)
        ade = paper.data.dataset == "ade20k"  # 30: an override of the ADE20K rows (why: there)
        assert smoke.schedule.max_iters == (30 if ade else SMOKE.miniature.iterations)


def test_synthetic_archives_are_the_real_frames_divided_by_the_factors() -> None:
    sizes = SMOKE.miniature.synthetic()
    assert (sizes.cityscapes.width, sizes.cityscapes.height) == (2048 // 16, 1024 // 16)
    assert (sizes.ade20k.min_size, sizes.ade20k.max_size) == (512 // 8, 1024 // 8)
    assert (sizes.cityscapes.train, sizes.cityscapes.val) == SMOKE.miniature.counts.cityscapes


def test_structure_check_names_what_a_careless_shrink_loses() -> None:
    real = load_config("dnl_r50-d8_769x769_40k_cityscapes", "paper", ws=WS)
    halved = real.replace({"data.crop_size": [24, 24]})  # 8x+1 -> 8x
    problems = miniature.check_structure(real, halved, 32)
    assert any("data.crop_size" in p and "8x" in p for p in problems)
    whole = real.replace({"test.mode": "whole"})
    assert any("test.mode" in p for p in miniature.check_structure(real, whole, 32))
