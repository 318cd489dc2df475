"""The mmseg 0.x log.json reader and the while-training comparison against it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dnlrepro.engine import reflog
from dnlrepro.engine.trajectory import OffTrackError, Trajectory

ENV = (
    "sys.platform: linux\nPython: 3.7.7 (default, May  7 2020)\nCUDA available: True\n"
    "GPU 0,1,2,3: Tesla V100-SXM2-32GB\nPyTorch: 1.5.0\nTorchVision: 0.6.0a0\n"
    "MMCV: 1.1.1\nMMSegmentation: 0.5.1+f9bf0fd"
)


def _lines(val_iter_is_images: bool = False) -> list[dict]:
    """A miniature of a 2020 log: meta, train every 50 (none at the eval iteration), val."""
    meta = {"env_info": ENV, "seed": None, "exp_name": "dnl_r50-d8_512x1024_40k_cityscapes.py"}
    out = [meta]
    for it in (50, 100, 150):
        out.append(
            {"mode": "train", "epoch": 1, "iter": it, "lr": 0.00999, "memory": 7302,
             "data_time": 0.01, "decode.loss_seg": 0.5, "decode.acc_seg": 80.1,
             "aux.loss_seg": 0.2, "aux.acc_seg": 78.0, "loss": 0.7, "time": 0.42}
        )  # fmt: skip
    if val_iter_is_images:  # mmcv >= 1.3: train line at 200, val line's iter = image count
        out.append({**out[-1], "iter": 200, "lr": 0.00998})
        out.append({"mode": "val", "epoch": 1, "iter": 20, "lr": 0.00998, "mIoU": 0.7123})
    else:  # mmcv 1.1: the eval hook cleared the buffer, the val line carries iter 200
        out.append({"mode": "val", "epoch": 1, "iter": 200, "lr": 0.00998, "aAcc": 0.95,
                    "mIoU": 0.7123, "mAcc": 0.8})  # fmt: skip
    return out


def _write(path: Path, lines: list) -> Path:
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


@pytest.mark.parametrize("images", [False, True])
def test_read_places_val_line_at_its_iteration(tmp_path: Path, images: bool) -> None:
    log = reflog.read(_write(tmp_path / "a.log.json", _lines(images)))
    assert [p.iter for p in log.train][:3] == [50, 100, 150]
    assert log.train[0].values["decode.loss_seg"] == 0.5
    (val,) = log.val
    assert val.iter == 200 and val.line_iter == (20 if images else 200)
    assert val.mIoU == pytest.approx(71.23)  # fraction in the log, percent here


def test_run_facts_from_metadata(tmp_path: Path) -> None:
    facts = reflog.run_facts(reflog.read(_write(tmp_path / "a.log.json", _lines())))
    assert facts["gpus"] == {"Tesla V100-SXM2-32GB": 4}
    assert facts["versions"]["MMCV"] == "1.1.1"
    assert facts["versions"]["PyTorch"] == "1.5.0"
    assert facts["val"] == {200: 71.23}
    assert (facts["log_interval"], facts["eval_interval"], facts["eval_iters"]) == (50, 200, [200])


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "a.log.json:3: not a JSON object"),
        ('{"mode": "test", "iter": 1}', "a.log.json:3: unknown mode 'test'"),
        (
            '{"mode": "train", "iter": 60, "lr": 0.01}',
            "train line without key 'loss'",
        ),
        ('{"mode": "train", "iter": 10, "lr": 0.01, "loss": 1}', "iter 10 after iter 50"),
        ('{"mode": "val", "iter": 100, "mIoU": 71.2}', "as a fraction in [0, 1]"),
        ('{"mode": "train", "iter": 60, "lr": "x", "loss": 1}', "key 'lr' must be a finite"),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "a.log.json"
    lines = [json.dumps(x) for x in _lines()[:2]] + [line]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(reflog.RefLogError, match=message.replace("[", r"\[").replace("]", r"\]")):
        reflog.read(path)


def test_first_line_must_be_metadata(tmp_path: Path) -> None:
    path = _write(tmp_path / "a.log.json", [{"foo": 1}, *_lines()[1:]])
    with pytest.raises(reflog.RefLogError, match=r"a.log.json:1: the first line"):
        reflog.read(path)


def test_written_history_reads_back(tmp_path: Path) -> None:
    history = {
        "train": [{"iter": 5, "lr": 0.0163792, "loss": 3.80252, "decode.loss_seg": 2.7},
                  {"iter": 10, "lr": 0.0117193, "loss": 3.07641, "decode.loss_seg": 2.2}],
        "val": [{"iter": 10, "mIoU": 41.5, "mAcc": 50.0, "aAcc": 80.0, "IoU": {"a": 1.0}}],
    }  # fmt: skip
    path = reflog.write(tmp_path / "ours.log.json", reflog.lines_from_history({"seed": 0}, history))
    log = reflog.read(path)
    assert log.meta == {"seed": 0}
    assert [p.lr for p in log.train] == [0.01638, 0.01172]  # mmcv's 5-decimal rounding
    assert log.val[0].iter == 10 and log.val[0].mIoU == pytest.approx(41.5)


def _ref(tmp_path: Path) -> reflog.RefLog:
    return reflog.read(_write(tmp_path / "ref.log.json", _lines()))


def test_trajectory_lr_mismatch_stops_with_both_values(tmp_path: Path) -> None:
    traj = Trajectory(_ref(tmp_path), miou_tolerance=1.0, loss_band=0.3)
    traj.on_train({"iter": 50, "lr": 0.009994, "loss": 0.71})  # rounds to the published 0.00999
    traj.on_train({"iter": 75, "lr": 0.5, "loss": 0.7})  # no published line there: not compared
    with pytest.raises(OffTrackError, match=r"our lr 0.0102 .* published lr 0.00999"):
        traj.on_train({"iter": 100, "lr": 0.0102, "loss": 0.7})
    assert traj.record()["compared_train_points"] == 2


def test_trajectory_loss_band_and_miou(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    traj = Trajectory(_ref(tmp_path), miou_tolerance=1.0, loss_band=0.3)
    traj.on_train({"iter": 50, "lr": 0.00999, "loss": 0.75})
    traj.on_train({"iter": 100, "lr": 0.00999, "loss": 1.4})  # 2x the published 0.7
    assert "outside the band" in caplog.text
    traj.on_val({"iter": 200, "mIoU": 69.0})  # 2.23 below, tolerance 1: warns, continues
    assert "2.23 points below" in caplog.text
    rec = traj.record()
    assert rec["loss_outside_band"] == [100]
    assert rec["loss_verdict"] == "left the band at 1 of 2 points"
    assert rec["val"][0]["on_track"] is False
    strict = Trajectory(_ref(tmp_path), miou_tolerance=1.0, loss_band=0.3, stop_if_off_track=True)
    strict.on_val({"iter": 200, "mIoU": 70.5})  # within tolerance
    with pytest.raises(OffTrackError, match="stop-if-off-track"):
        strict.on_val({"iter": 200, "mIoU": 69.0})


def test_rehearsal_miniature_log_has_the_schedule_lr(tmp_path: Path) -> None:
    from dnlrepro.core.config import load_config
    from dnlrepro.core.profile import read_params
    from dnlrepro.core.workspace import find
    from dnlrepro.engine import schedule
    from dnlrepro.rehearse import mirror

    ws = find()
    ((name, url, path, _sha),) = [
        (f.name, f.url, f.path, f.sha256)
        for f in mirror.reference_logs(tmp_path, ws)
        if "r50-d8_512x1024_40k" in f.name
    ]
    assert url.endswith(f"/{name}") and path == mirror.local_path(tmp_path, url)
    log = reflog.read(path)
    sched = load_config("dnl_r50-d8_512x1024_40k_cityscapes", read_params(ws), ws=ws).schedule
    assert [p.lr for p in log.train] == [
        reflog.mmcv_round(schedule.lr_at(p.iter - 1, sched)) for p in log.train
    ]
    assert log.train[-1].iter == sched.max_iters and log.val


def test_trajectory_logs_the_reference_next_to_ours_in_mlflow(tmp_path: Path) -> None:
    logged: list[tuple[dict, int]] = []

    class Tracker:  # the two calls Trajectory makes of dnlrepro.track.tracking.Tracker
        def log_metrics(self, metrics: dict, step: int) -> None:
            logged.append((metrics, step))

    traj = Trajectory(_ref(tmp_path), miou_tolerance=1.0, loss_band=0.3)
    traj.on_train({"iter": 50, "lr": 0.00999, "loss": 2.0}, Tracker())
    traj.on_val({"iter": 200, "mIoU": 71.0}, Tracker())
    assert logged == [
        (
            {
                "trajectory/ref_loss": 0.7,
                "trajectory/ref_lr": 0.00999,
                "trajectory/loss_in_band": 0.0,
            },
            50,
        ),
        ({"trajectory/ref_mIoU": pytest.approx(71.23)}, 200),
    ]
