"""params/published.yaml: complete, consistent with the configurations and the download URLs.

§ numbers refer to docs/reference.md.
"""

from __future__ import annotations

import pytest

from dnlrepro.acquire.download import checkpoint_urls
from dnlrepro.core.config import load_config
from dnlrepro.core.registry import METRICS, config_names, load_published

CONFIG_NAMES = config_names()


@pytest.fixture(scope="module")
def published():
    return load_published()


def test_every_configuration_has_an_entry(published):
    assert list(published.configs) == list(CONFIG_NAMES)  # README order, no extras


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_entry_matches_its_configuration(published, name):
    entry, cfg = published.entry(name), load_config(name, "paper")
    assert entry.dataset == cfg.data.dataset
    assert entry.backbone == f"R-{cfg.model.backbone.depth}-D8"
    h, w = cfg.data.crop_size
    assert entry.crop_size == f"{h}x{w}"
    assert entry.lr_schd == cfg.schedule.max_iters
    assert entry.protocol["batch"] == cfg.global_batch
    # the checkpoint is the one `dnlrepro download` fetches, and its name carries the sha prefix
    assert entry.checkpoint == checkpoint_urls([name])[name]
    assert entry.checkpoint.rsplit("-", 1)[1] == f"{entry.sha256_prefix}.pth"
    assert f"/{name}/{name}-" in entry.log and entry.log.endswith(".log.json")


def test_dash_cells_are_null_with_a_reason(published):
    for name, entry in published.configs.items():
        for metric in METRICS:
            if entry.metrics[metric] is None:
                assert "'-'" in entry.notes[metric], (name, metric)
    # the README has ms+flip only for the 769x769 Cityscapes rows and all ADE20K rows (§6.1)
    no_ms = [n for n, e in published.configs.items() if e.metrics["mIoU_ms_flip"] is None]
    assert no_ms == [n for n in CONFIG_NAMES if "512x1024" in n]


def test_tolerances_have_reasons(published):
    assert published.tolerances["mIoU"].value == 0.5
    assert published.tolerances["fps"].value is None  # hardware-dependent
    for name in CONFIG_NAMES:
        paper = published.tolerance(name, "mIoU", "paper")
        assert paper.reason
        expected = 1.0 if ("40k" in name and name.endswith("cityscapes")) else 0.5
        assert paper.value == expected, name
        assert published.tolerance(name, "mIoU", "published").value == 0.5
