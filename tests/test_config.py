"""The strict config loader and the twelve configuration files (docs/reference.md §4.3).

§ numbers refer to docs/reference.md.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from dnlrepro.core import workspace
from dnlrepro.core.config import ConfigError, load_config
from dnlrepro.core.registry import config_names, names_of

PARAMS_DIR = workspace.find().params_dir
CONFIG_NAMES = config_names()
CITYSCAPES_CONFIGS, ADE20K_CONFIGS = names_of("cityscapes"), names_of("ade20k")

BASE = "dnl_r50-d8_512x1024_40k_cityscapes"


def _write(tmp_path: Path, raw: dict, name: str = "cfg.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(raw, sort_keys=False))
    return p


def _raw(name: str = BASE) -> dict:
    return yaml.safe_load((PARAMS_DIR / f"{name}.yaml").read_text())


def test_all_twelve_configs_exist_and_load():
    # One params file per registry row, and no params file without a row.
    assert sorted(CONFIG_NAMES) == sorted(p.stem for p in PARAMS_DIR.glob("dnl_*.yaml"))
    assert len(CITYSCAPES_CONFIGS) == 8 and len(ADE20K_CONFIGS) == 4
    for name in CONFIG_NAMES:
        cfg = load_config(name)
        assert cfg.name == name
        assert cfg.profile == "paper"


def _expected_row(name: str) -> dict:
    """The §4.3 table, derived from the mmseg config name alone."""
    depth = 101 if "_r101-" in name else 50
    iters = {"_40k_": 40000, "_80k_": 80000, "_160k_": 160000}
    max_iters = next(v for k, v in iters.items() if k in name)
    if name.endswith("_ade20k"):
        fam = dict(
            crop=(512, 512), scale=(2048, 512), mode="whole", align=False, classes=150, batch=4
        )
    elif "_769x769_" in name:
        fam = dict(
            crop=(769, 769), scale=(2049, 1025), mode="slide", align=True, classes=19, batch=2
        )
    else:
        fam = dict(
            crop=(512, 1024), scale=(2048, 1024), mode="whole", align=False, classes=19, batch=2
        )
    return dict(depth=depth, max_iters=max_iters, **fam)


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_config_matches_reference_row(name):
    cfg = load_config(name)
    row = _expected_row(name)
    assert cfg.model.backbone.depth == row["depth"]
    assert cfg.model.backbone.pretrained == f"resnet{row['depth']}_v1c"
    assert cfg.schedule.max_iters == row["max_iters"]
    assert cfg.schedule.checkpoint_interval == row["max_iters"] // 10
    assert cfg.schedule.eval_interval == row["max_iters"] // 10
    assert cfg.data.crop_size == row["crop"]
    assert cfg.data.img_scale == row["scale"] == cfg.test.img_scale
    assert cfg.test.mode == row["mode"]
    assert cfg.model.align_corners is row["align"]
    assert cfg.model.num_classes == row["classes"]
    assert cfg.data.samples_per_gpu == row["batch"]
    assert cfg.global_batch == 4 * row["batch"]  # 8 Cityscapes / 16 ADE20K (§3.5)
    if row["mode"] == "slide":
        assert cfg.test.crop_size == (769, 769) and cfg.test.stride == (513, 513)
    else:
        assert cfg.test.crop_size is None and cfg.test.stride is None


def test_configs_differ_only_where_the_reference_says():
    """Every key outside the §4.3 columns (and the dataset block) is identical in all twelve."""
    allowed = {
        "name",
        "model.num_classes",
        "model.align_corners",
        "model.backbone.depth",
        "model.backbone.pretrained",
        "schedule.max_iters",
        "schedule.checkpoint_interval",
        "schedule.eval_interval",
        "data.dataset",
        "data.data_root",
        "data.train_split",
        "data.val_split",
        "data.reduce_zero_label",
        "data.img_scale",
        "data.crop_size",
        "data.samples_per_gpu",
        "data.workers_per_gpu",
        "test.mode",
        "test.crop_size",
        "test.stride",
        "test.img_scale",
    }
    flats = {n: load_config(n).flat() for n in CONFIG_NAMES}
    base = flats[BASE]
    differing = {k for f in flats.values() for k in f if f[k] != base[k]}
    assert differing <= allowed, differing - allowed
    # and the declared differences do occur (the table is not silently flattened)
    assert differing == allowed


def test_paper_values_common_to_all():
    cfg = load_config(BASE)
    s = cfg.schedule
    assert (s.lr, s.momentum, s.weight_decay, s.power, s.min_lr) == (0.01, 0.9, 5e-4, 0.9, 1e-4)
    dh = cfg.model.decode_head
    assert (dh.channels, dh.reduction, dh.temperature, dh.use_scale) == (512, 2, 0.05, True)
    assert cfg.model.auxiliary_head.loss_weight == 0.4
    assert cfg.test.ms_ratios == (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
    assert cfg.data.mean == (123.675, 116.28, 103.53)


def test_unknown_key_names_file_dotted_key_and_allowed(tmp_path):
    raw = _raw()
    raw["model"]["decode_head"]["temprature"] = 0.05
    p = _write(tmp_path, raw)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert str(p) in msg
    assert "model.decode_head.temprature" in msg
    assert "temperature" in msg  # the allowed keys are listed


def test_wrong_type_names_key_and_expected_type(tmp_path):
    raw = _raw()
    raw["schedule"]["max_iters"] = "40k"
    p = _write(tmp_path, raw)
    with pytest.raises(ConfigError, match=r"schedule\.max_iters.*integer"):
        load_config(p)
    raw = _raw()
    raw["model"]["align_corners"] = "yes"
    with pytest.raises(ConfigError, match=r"model\.align_corners.*true or false"):
        load_config(_write(tmp_path, raw))
    raw = _raw()
    raw["data"]["crop_size"] = [512]
    with pytest.raises(ConfigError, match=r"data\.crop_size.*2 values"):
        load_config(_write(tmp_path, raw))


def test_bool_is_not_an_int_and_int_is_a_float(tmp_path):
    raw = _raw()
    raw["schedule"]["max_iters"] = True
    with pytest.raises(ConfigError, match="integer"):
        load_config(_write(tmp_path, raw))
    raw = _raw()
    raw["schedule"]["lr"] = 1
    assert load_config(_write(tmp_path, raw)).schedule.lr == 1.0


def test_missing_key_is_an_error(tmp_path):
    raw = _raw()
    del raw["test"]["stride"]
    with pytest.raises(ConfigError, match=r"missing key 'test\.stride'"):
        load_config(_write(tmp_path, raw))


def test_choice_lists_valid_values(tmp_path):
    raw = _raw()
    raw["test"]["mode"] = "sliding"
    with pytest.raises(ConfigError, match=r"test\.mode.*'whole', 'slide'"):
        load_config(_write(tmp_path, raw))


def test_precision_and_small_window_keys(tmp_path):
    """§5.7: TF32 off (the published V100 runs were fp32); §5.2: small windows fed unpadded.
    Each key carries its reason on its own line in every file."""
    for name in CONFIG_NAMES:
        cfg = load_config(name)
        assert cfg.runtime.allow_tf32 is False and cfg.test.small_window == "unpadded"
        lines = (PARAMS_DIR / f"{name}.yaml").read_text().splitlines()
        for key in ("allow_tf32: false  # [5.7]", "small_window: unpadded  # [5.2]"):
            assert sum(line.strip().startswith(key) for line in lines) == 1, (name, key)
    assert load_config(BASE, overrides={"test.small_window": "pad"}).test.small_window == "pad"
    raw = _raw()
    raw["test"]["small_window"] = "reflect"
    with pytest.raises(ConfigError, match=r"test\.small_window.*'unpadded', 'pad'"):
        load_config(_write(tmp_path, raw))
    raw = _raw()
    raw["runtime"]["allow_tf32"] = "no"
    with pytest.raises(ConfigError, match=r"runtime\.allow_tf32.*true or false"):
        load_config(_write(tmp_path, raw))
    raw = _raw()
    del raw["runtime"]["allow_tf32"]
    with pytest.raises(ConfigError, match=r"missing key 'runtime\.allow_tf32'"):
        load_config(_write(tmp_path, raw))


def test_unknown_config_name_lists_known():
    with pytest.raises(ConfigError, match="dnl_r50-d8_512x1024_40k_cityscapes"):
        load_config("dnl_r50-d8_512x1024_40k_cityscape")


def test_overrides_are_checked_like_files():
    cfg = load_config(BASE, overrides={"schedule.max_iters": 10})
    assert cfg.schedule.max_iters == 10
    with pytest.raises(ConfigError, match=r"schedule\.max_iter'.*max_iters"):
        load_config(BASE, overrides={"schedule.max_iter": 10})
    with pytest.raises(ConfigError, match="integer"):
        cfg.replace({"schedule.max_iters": 1.5})


def test_smoke_profile_keeps_family_structure():
    for name in CONFIG_NAMES:
        paper, smoke = load_config(name, "paper"), load_config(name, "smoke")
        assert smoke.profile == "smoke"
        # the model is the real one; only sizes, lengths and data roots change
        assert smoke.model.backbone.depth == paper.model.backbone.depth
        assert smoke.model.decode_head == paper.model.decode_head
        assert smoke.model.backbone.pretrained is None
        assert smoke.schedule.max_iters < paper.schedule.max_iters
        # synthetic data: a subfolder of the dataset's folder (the prepare stage's output)
        assert "/synthetic" in smoke.data.data_root
        folder = "/".join(paper.data.data_root.split("/")[:2])  # data/cityscapes, data/ade
        assert smoke.data.data_root.startswith(f"{folder}/synthetic")
        assert smoke.test.mode == paper.test.mode
        if "_769x769_" in name:  # 8x+1 sizes keep align_corners=True meaningful
            assert all((s - 1) % 8 == 0 for s in smoke.data.crop_size)
        else:
            assert all(s % 8 == 0 for s in smoke.data.crop_size)


def test_digest_changes_with_any_value():
    a = load_config(BASE)
    assert a.digest() == load_config(BASE).digest()
    assert a.digest() != a.replace({"schedule.seed": 1}).digest()
    assert a.digest() != load_config(BASE, "smoke").digest()


def test_config_is_frozen():
    cfg = load_config(BASE)
    with pytest.raises(AttributeError):
        cfg.schedule.lr = 0.1  # type: ignore[misc]


def test_every_config_loads_under_every_profile():
    """The range checks accept every committed value, with each profile's overrides."""
    for profile in ("paper", "smoke", "published"):
        for name in CONFIG_NAMES:
            assert load_config(name, profile).profile == profile


@pytest.mark.parametrize(
    ("key", "value", "shown", "allowed"),
    [
        ("schedule.max_iters", -1, "schedule.max_iters", "x >= 1"),
        ("schedule.max_iters", 0, "schedule.max_iters", "x >= 1"),
        ("schedule.checkpoint_interval", 0, "schedule.checkpoint_interval", "x >= 1"),
        ("schedule.eval_interval", -5, "schedule.eval_interval", "x >= 1"),
        ("schedule.lr", 0, "schedule.lr", "x > 0"),
        ("schedule.momentum", 1.0, "schedule.momentum", "0 <= x < 1"),
        ("schedule.weight_decay", -1e-4, "schedule.weight_decay", "x >= 0"),
        ("data.crop_size", [-32, 64], "data.crop_size[0]", "x >= 1"),
        ("data.img_scale", [2048, 0], "data.img_scale[1]", "x >= 1"),
        ("data.ratio_range", [0.0, 2.0], "data.ratio_range[0]", "x > 0"),
        ("data.cat_max_ratio", 0, "data.cat_max_ratio", "0 < x <= 1"),
        ("data.flip_prob", 1.5, "data.flip_prob", "0 <= x <= 1"),
        ("data.samples_per_gpu", 0, "data.samples_per_gpu", "x >= 1"),
        ("data.workers_per_gpu", -1, "data.workers_per_gpu", "x >= 0"),
        ("data.std", [58.4, 0, 57.4], "data.std[1]", "x > 0"),
        ("runtime.gpus", 0, "runtime.gpus", "x >= 1"),
        ("model.num_classes", 0, "model.num_classes", "x >= 1"),
        ("model.decode_head.channels", -512, "model.decode_head.channels", "x >= 1"),
        ("model.decode_head.dropout_ratio", 1.0, "model.decode_head.dropout_ratio", "0 <= x < 1"),
        ("model.decode_head.temperature", 0, "model.decode_head.temperature", "x > 0"),
        ("model.decode_head.loss_weight", -1, "model.decode_head.loss_weight", "x > 0"),
        ("model.auxiliary_head.loss_weight", -0.4, "model.auxiliary_head.loss_weight", "x >= 0"),
        ("model.backbone.strides", [1, 2, 0, 1], "model.backbone.strides[2]", "x >= 1"),
        ("test.ms_ratios", [0.5, -1.0], "test.ms_ratios[1]", "x > 0"),
        ("test.stride", [0, 513], "test.stride[0]", "x >= 1"),
    ],
)
def test_out_of_range_values_name_file_key_value_and_range(tmp_path, key, value, shown, allowed):
    raw = _raw("dnl_r50-d8_769x769_40k_cityscapes")
    node = raw
    *parents, leaf = key.split(".")
    for part in parents:
        node = node[part]
    node[leaf] = value
    path = _write(tmp_path, raw)
    bad = value[int(shown[-2])] if shown.endswith("]") else value
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value) == f"{path}: key {shown!r} is {bad!r}; allowed: {allowed}"
    # The same value as an override is refused naming the override, before anything runs.
    with pytest.raises(ConfigError, match=rf"^overrides \(--set\): key '{re.escape(shown)}'"):
        load_config("dnl_r50-d8_769x769_40k_cityscapes", overrides={key: value})


def test_profile_overrides_and_set_go_through_the_range_check(capsys):
    import dataclasses

    from dnlrepro import cli
    from dnlrepro.core.profile import OverrideBlock, load_profile

    smoke = load_profile("smoke")
    bad = dataclasses.replace(smoke, overrides=[OverrideBlock("*", {"data.crop_size": [-1, 64]})])
    with pytest.raises(ConfigError, match=r"smoke\.overrides\[0\]: key 'data\.crop_size\[0\]'"):
        load_config(BASE, bad)
    argv = ["show-config", "--config", BASE, "--set", "schedule.max_iters=-1"]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert "key 'schedule.max_iters' is -1; allowed: x >= 1" in err and "Traceback" not in err
