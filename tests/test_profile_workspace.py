"""The typed profile, the params.yaml switch and the workspace root."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dnlrepro.core import workspace
from dnlrepro.core.config import PROFILES, ConfigError, load_config
from dnlrepro.core.profile import load_profile, read_params

REPO = Path(__file__).resolve().parents[1]
BASE = "dnl_r50-d8_512x1024_40k_cityscapes"


def make_workspace(tmp_path: Path, name: str = "ws") -> Path:
    """A minimal workspace: dvc.yaml, params.yaml and params/ copied from the repository."""
    root = tmp_path / name
    shutil.copytree(REPO / "params", root / "params")
    for f in ("dvc.yaml", "params.yaml"):
        shutil.copy(REPO / f, root / f)
    return root


def edit_profiles(root: Path, edit) -> None:
    path = root / "params" / "profiles.yaml"
    raw = yaml.safe_load(path.read_text())
    edit(raw)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))


# -- Profile ------------------------------------------------------------------------------------


def test_every_profile_loads_typed():
    for name in PROFILES:
        profile = load_profile(name)
        assert profile.name == name and profile.description
    smoke = load_profile("smoke")
    assert smoke.settings.data_source == "synthetic" and smoke.settings.gpus == 1
    synthetic = smoke.miniature.synthetic()
    assert (
        synthetic.cityscapes.train >= 1 and synthetic.ade20k.max_size >= synthetic.ade20k.min_size
    )
    paper = load_profile("paper")
    assert paper.settings.gpus == 4 and paper.miniature is None
    assert (paper.settings.benchmark.num_images, paper.settings.benchmark.warmup) == (200, 5)
    with pytest.raises(AttributeError):
        paper.settings.train = False  # type: ignore[misc]  # frozen


def test_unknown_setting_names_the_key_and_the_allowed_ones(tmp_path, monkeypatch):
    root = make_workspace(tmp_path)
    edit_profiles(root, lambda raw: raw["smoke"]["settings"].update(eval_max_imgs=3))
    monkeypatch.chdir(root)
    with pytest.raises(ConfigError) as e:
        load_profile("smoke")
    msg = str(e.value)
    assert "profiles.yaml: smoke" in msg and "'settings.eval_max_imgs'" in msg
    assert "eval_max_images" in msg and "gpus" in msg  # the allowed keys


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("gpus", "4", "an integer"),
        ("train", "yes", "true or false"),
        ("data_source", "s3", "'synthetic', 'real'"),
    ],
)
def test_mistyped_setting_fails_naming_key(tmp_path, monkeypatch, key, value, expected):
    root = make_workspace(tmp_path)
    edit_profiles(root, lambda raw: raw["paper"]["settings"].update({key: value}))
    monkeypatch.chdir(root)
    with pytest.raises(ConfigError, match=rf"'settings\.{key}'.*{expected}"):
        load_profile("paper")


def test_synthetic_profile_without_sizes_is_an_error(tmp_path, monkeypatch):
    root = make_workspace(tmp_path)
    edit_profiles(root, lambda raw: raw["smoke"].pop("miniature"))
    monkeypatch.chdir(root)
    with pytest.raises(ConfigError, match=r"smoke.*data_source 'synthetic' but no 'miniature'"):
        load_profile("smoke")


def test_profile_override_typo_fails_like_a_config_typo(tmp_path, monkeypatch):
    root = make_workspace(tmp_path)
    edit_profiles(
        root, lambda raw: raw["smoke"]["overrides"].append({"match": "*", "set": {"data.crop": 1}})
    )
    monkeypatch.chdir(root)
    with pytest.raises(ConfigError, match=r"smoke\.overrides\[\d+\]: unknown key 'data\.crop'"):
        load_config(BASE, "smoke")


def test_read_params_is_strict(tmp_path, monkeypatch):
    root = make_workspace(tmp_path)
    monkeypatch.chdir(root)
    assert read_params().name == yaml.safe_load((REPO / "params.yaml").read_text())["profile"]
    (root / "params.yaml").write_text("profile: papr\n")
    with pytest.raises(ConfigError, match=r"params\.yaml: key 'profile' is 'papr'; choose one of"):
        read_params()
    (root / "params.yaml").write_text("profile: paper\nseed: 1\n")
    with pytest.raises(ConfigError, match=r"exactly the key 'profile'"):
        read_params()


def test_load_config_default_is_the_configuration_own_values():
    assert load_config(BASE).profile == "paper"
    assert load_config(BASE).data.crop_size == (512, 1024)
    assert load_config(BASE, "smoke").data.crop_size != (512, 1024)


# -- Workspace ----------------------------------------------------------------------------------


def test_workspace_is_the_nearest_dvc_yaml_upwards(tmp_path, monkeypatch):
    root = make_workspace(tmp_path)
    (root / "data" / "deep").mkdir(parents=True)
    monkeypatch.delenv(workspace.ENV_VAR, raising=False)
    monkeypatch.chdir(root / "data" / "deep")
    ws = workspace.find()
    assert ws.root == root.resolve()
    assert ws.results == root.resolve() / "results"
    assert ws.path("data/x") == root.resolve() / "data/x" and ws.path("/abs") == Path("/abs")
    assert ws.relative(root / "results" / "a.json") == "results/a.json"


def test_no_workspace_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv(workspace.ENV_VAR, raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(workspace.WorkspaceError, match=r"no folder holds dvc\.yaml.*--workspace"):
        workspace.find()
    monkeypatch.setenv(workspace.ENV_VAR, str(tmp_path))
    with pytest.raises(workspace.WorkspaceError, match=r"has no dvc\.yaml"):
        workspace.find()


@pytest.mark.parametrize(("folder", "why"), [("nonexistent", "does not exist"), ("", "has no")])
def test_bad_workspace_option_is_one_line(tmp_path, monkeypatch, capsys, folder, why):
    from dnlrepro import cli

    monkeypatch.delenv(workspace.ENV_VAR, raising=False)
    path = tmp_path / folder
    assert cli.main(["--workspace", str(path), "show-config", "--config", BASE]) == 1
    (line,) = capsys.readouterr().err.splitlines()  # one line, no traceback
    assert line.startswith(f"dnlrepro: error: --workspace names {path.resolve()}, which {why}")
    assert workspace.ENV_VAR not in os.environ  # nothing exported for a refused folder


def test_workspace_option_beats_the_current_directory(tmp_path, monkeypatch):
    a, b = make_workspace(tmp_path, "a"), make_workspace(tmp_path, "b")
    edit_profiles(
        b, lambda raw: raw["smoke"]["overrides"].append({"match": "*", "set": {"schedule.lr": 0.5}})
    )
    monkeypatch.delenv(workspace.ENV_VAR, raising=False)
    monkeypatch.chdir(a)
    assert load_config(BASE, "smoke").schedule.lr == 0.02  # the committed smoke profile
    cmd = [sys.executable, "-m", "dnlrepro.cli", "--workspace", str(b), "show-config"]
    out = subprocess.run(
        [*cmd, "--config", BASE, "--profile", "smoke", "--flat"],
        cwd=a,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "schedule.lr: 0.5" in out.stdout
    assert "profile: smoke (--profile)" in out.stderr


def test_cli_without_profile_says_which_profile_is_in_force(tmp_path, monkeypatch):
    root = make_workspace(tmp_path)
    (root / "params.yaml").write_text("profile: smoke\n")  # the pipeline switch is not used
    out = subprocess.run(
        [sys.executable, "-m", "dnlrepro.cli", "show-config", "--config", BASE, "--flat"],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    )
    first = out.stderr.splitlines()[0]
    assert "profile: paper (default: the configuration's own values)" in first
    assert "data.crop_size: [512, 1024]" in out.stdout
