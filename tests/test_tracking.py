"""MLflow adapter: absolute URIs, one-time DB init, runs with params/metrics/artifacts, and
failures that only warn (behaviour verified with MLflow 3.17.2)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from dnlrepro.core import workspace
from dnlrepro.core.config import load_config
from dnlrepro.track import runs, tracking
from dnlrepro.track.tracking import Tracker, init_db, tracking_uri

CFG = "dnl_r50-d8_512x1024_40k_cityscapes"


def test_tracking_uri_is_absolute_and_follows_dvc_root(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    assert tracking_uri() == f"sqlite:///{workspace.find().root / 'mlflow.db'}"
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    assert tracking_uri() == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    assert tracking_uri().startswith("sqlite:////")  # absolute path -> four slashes
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking_uri() == "http://127.0.0.1:5000"


@pytest.fixture(scope="module")
def db_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    db = tmp_path_factory.mktemp("track") / "sub" / "mlflow.db"
    uri = f"sqlite:///{db}"
    assert init_db(uri) == uri  # creates the folder and migrates the schema
    assert db.is_file()
    return uri


def test_run_has_params_tags_metrics_and_artifacts(
    db_uri: str, monkeypatch, tmp_path: Path
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", db_uri)
    monkeypatch.setenv("DVC_STAGE", "train@" + CFG)
    cfg = load_config(CFG, "smoke")
    summary = tmp_path / "summary.json"
    summary.write_text('{"iterations": 4}')
    with Tracker(cfg, "train") as t:
        t.set_tags({"world_size": 2, "effective_batch": 4})
        t.log_metrics({"train/loss": 2.5, "train/lr": 0.01}, step=1)
        t.log_metrics({"train/loss": 1.5, "train/lr": 0.005}, step=2)
        t.log_metrics({"IoU/traffic light": 12.5})
        t.log_dict(cfg.to_dict(), "config.yaml")
        t.log_artifact(summary)
        fig, ax = plt.subplots()
        ax.plot([1, 2], [2.5, 1.5])
        t.log_figure(fig, "curves.png")
        plt.close(fig)
        run_id = t.run_id
    assert run_id is not None
    client = MlflowClient(tracking_uri=db_uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    # what differs first (MLflow's runs table cuts long names), the profile when not paper's
    assert run.info.run_name == "r50 512x1024 40k s0 smoke"
    assert run.data.tags["stages"] == "train" and run.data.tags["config"] == CFG
    exp = client.get_experiment(run.info.experiment_id)
    assert exp.name == "cityscapes"
    # MLflow 3.x opens an experiment without this tag on its GenAI overview, not on the runs
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    # Artifacts live next to the DB, never in the current directory.
    assert exp.artifact_location == (Path(db_uri[len("sqlite:///") :]).parent / "mlruns").as_uri()
    assert run.data.params["model.backbone.depth"] == "50"
    assert run.data.params["data.crop_size"] == str(list(cfg.data.crop_size))
    assert len(run.data.params) == len(cfg.flat())
    tags = run.data.tags
    assert tags["config"] == CFG and tags["dataset"] == "cityscapes"
    assert tags["profile"] == "smoke" and tags["dvc.stage.train"] == "train@" + CFG
    assert tags["world_size"] == "2" and tags["effective_batch"] == "4"
    assert tags["git_dirty"] in {"true", "false", "unknown"}
    history = client.get_metric_history(run_id, "train/loss")
    assert [(m.step, m.value) for m in history] == [(1, 2.5), (2, 1.5)]
    assert run.data.metrics["IoU/traffic light"] == 12.5
    names = {a.path for a in client.list_artifacts(run_id)}
    assert {"config.yaml", "summary.json", "curves.png"} <= names


def test_evaluation_joins_the_training_run_of_its_seed(db_uri: str, monkeypatch) -> None:
    """One row per (configuration, seed) in the runs table: evaluate@ adds to train@'s run."""
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", db_uri)
    monkeypatch.setenv("DVC_STAGE", "evaluate@" + CFG)
    cfgs = {seed: load_config(CFG, "smoke", {"schedule.seed": seed}) for seed in (3, 4)}
    trained = {}
    for seed, cfg in cfgs.items():
        with Tracker(cfg, "train") as t:
            t.log_metrics({"val/mIoU": 10.0 + seed}, step=2)
        trained[seed] = t.run_id
    for seed in (4, 3, 3):  # seed 3 evaluated twice: the second at the next step
        with Tracker(cfgs[seed], "evaluate") as t:
            t.log_metrics({"mIoU": 20.0 + seed + t.repeat}, t.repeat)
        assert t.run_id == trained[seed]
    client = MlflowClient(tracking_uri=db_uri)
    for seed, run_id in trained.items():
        run = client.get_run(run_id)
        assert (
            run.info.status == "FINISHED" and run.info.run_name == f"r50 512x1024 40k s{seed} smoke"
        )
        again = int(seed == 3)
        assert run.data.metrics == {"val/mIoU": 10.0 + seed, "mIoU": 20.0 + seed + again}
        history = client.get_metric_history(run_id, "mIoU")
        assert [m.step for m in history] == list(range(again + 1))
        assert run.data.tags["stages"] == "train,evaluate"
        assert run.data.tags["evaluate_count"] == str(again + 1)
        assert run.data.tags["dvc.stage.evaluate"] == "evaluate@" + CFG
    # no training run to join (a published checkpoint): a run of its own, same naming
    with Tracker(load_config(CFG, "smoke", {"schedule.seed": 5}), "evaluate") as t:
        pass
    assert t.run_id not in trained.values()
    assert client.get_run(t.run_id).data.tags["trained"] == "false"


def test_run_names_fit_the_runs_table_and_differ_first() -> None:
    from dnlrepro.core.registry import config_names

    names = [
        runs.run_name(c, s, p) for c in config_names() for s in (0, 1) for p in ("paper", "smoke")
    ]
    assert len(set(names)) == len(names)
    assert max(map(len, names)) <= 30
    assert runs.run_name("dnl_r101-d8_769x769_80k_cityscapes", 1, "paper") == "r101 769x769 80k s1"
    assert (
        runs.run_name("my_custom_" + "x" * 40, 2, "smoke")
        == ("my_custom_" + "x" * 40)[:21] + " s2 smoke"
    )


def test_failed_body_marks_run_failed(db_uri: str, monkeypatch) -> None:
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", db_uri)
    cfg = load_config(CFG, "smoke")
    with pytest.raises(RuntimeError, match="boom"), Tracker(cfg, "train") as t:
        raise RuntimeError("boom")
    assert MlflowClient(tracking_uri=db_uri).get_run(t.run_id).info.status == "FAILED"


def test_bad_uri_only_warns_once(monkeypatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "nosuchscheme://nowhere/at/all")
    cfg = load_config(CFG, "smoke")
    with caplog.at_level(logging.WARNING, logger=tracking.__name__), Tracker(cfg, "train") as t:
        t.log_metrics({"train/loss": 1.0}, step=1)
        t.log_params({"x": 1})
        assert t.enabled is False and t.run_id is None
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "nosuchscheme://nowhere/at/all" in warnings[0].getMessage()


def test_failing_call_warns_once_per_kind(
    db_uri: str, monkeypatch, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", db_uri)
    cfg = load_config(CFG, "smoke")
    with caplog.at_level(logging.WARNING, logger=tracking.__name__), Tracker(cfg, "train") as t:
        for _ in range(3):
            t.log_artifact(tmp_path / "missing.json")  # does not exist
        t.log_metrics({"train/loss": float("nan")}, step=1)  # fine: NaN is a valid metric
    msgs = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(msgs) == 1 and "log_artifact" in msgs[0]


def test_disabled_tracker_never_touches_mlflow(monkeypatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "nosuchscheme://x")
    with Tracker(load_config(CFG, "smoke"), "train", enabled=False) as t:
        t.log_metrics({"a": 1.0})
    assert t.run_id is None and not t._warned


def test_init_db_error_names_the_uri(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises((RuntimeError, OSError), match="file"):
        init_db(f"sqlite:///{blocker}/sub/mlflow.db")


def test_metric_key_sanitises_class_names() -> None:
    assert tracking.metric_key("IoU/bed ") == "IoU/bed"
    assert tracking.metric_key("IoU/car;auto") == "IoU/car_auto"


def damaged_store(tmp_path: Path, how: str) -> Path:
    """An MLflow sqlite store that is empty (0 bytes) or truncated to half its size."""
    db = tmp_path / how / "mlflow.db"
    if how == "empty":
        db.parent.mkdir()
        db.touch()
    else:
        init_db(f"sqlite:///{db}")
        with db.open("r+b") as f:
            f.truncate(db.stat().st_size // 2)
    return db


@pytest.mark.parametrize(("how", "problem"), [("empty", r"empty \(0 bytes"), ("half", "truncated")])
def test_damaged_store_fails_the_stage_and_is_kept(
    tmp_path: Path, monkeypatch, capsys, how: str, problem: str
) -> None:
    from dnlrepro import cli

    db = damaged_store(tmp_path, how)
    size = db.stat().st_size
    uri = f"sqlite:///{db}"
    with pytest.raises(tracking.StoreError, match=problem) as caught:
        init_db(uri)
    assert str(db) in str(caught.value) and f"mv {db} {db}.broken" in str(caught.value)
    assert "mlflow-init" in str(caught.value) and "backup" in str(caught.value)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    with pytest.raises(tracking.StoreError, match=problem), Tracker(load_config(CFG, "smoke"), "x"):
        pytest.fail("a run started on a damaged store")
    assert cli.main(["mlflow-init", "--uri", uri]) == 1  # the stage's command fails, one line
    assert f"error: the MLflow store {db} is" in capsys.readouterr().err
    assert db.stat().st_size == size  # never recreated over


def test_store_damaged_during_a_run_fails_it_at_the_end(db_uri: str, tmp_path: Path, monkeypatch):
    db = tmp_path / "copy" / "mlflow.db"
    db.parent.mkdir()
    db.write_bytes(Path(db_uri[len("sqlite:///") :]).read_bytes())
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    with (
        pytest.raises(tracking.StoreError, match="truncated"),
        Tracker(load_config(CFG, "smoke"), "train") as t,
    ):
        assert t.run_id is not None
        with db.open("r+b") as f:
            f.truncate(db.stat().st_size // 2)


def test_missing_store_is_created(tmp_path: Path) -> None:
    tracking.check_store(f"sqlite:///{tmp_path / 'absent.db'}")  # nothing to refuse
    tracking.check_store("http://127.0.0.1:5000")  # a server: not ours to check


def _train_run(uri: str, seed: int) -> str | None:
    import os

    os.environ["MLFLOW_TRACKING_URI"] = uri
    with Tracker(load_config(CFG, "smoke", {"schedule.seed": seed}), "train") as t:
        t.log_metrics({"val/mIoU": float(seed)}, step=1)
    return t.run_id


def test_parallel_first_runs_each_get_their_run(tmp_path: Path) -> None:
    """Parallel trainings that create the experiment (and set its tags) at the same moment."""
    import multiprocessing

    from mlflow.tracking import MlflowClient

    uri = init_db(f"sqlite:///{tmp_path / 'mlflow.db'}")
    with multiprocessing.get_context("spawn").Pool(3) as pool:
        ids = pool.starmap(_train_run, [(uri, seed) for seed in (10, 11, 12)])
    assert None not in ids and len(set(ids)) == 3
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("cityscapes")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    assert len(client.search_runs([exp.experiment_id])) == 3
