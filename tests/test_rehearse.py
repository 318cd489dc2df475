"""``dnlrepro rehearse``: sizes, mirror, download hooks, DVC run parsing, checks, cost.

The two whole rehearsals (``--profile paper`` / ``published``) run in CI as commands (``.ci/run``),
not here; the slow test below proves that a corrupted mirror file fails a rehearsal.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import pytest
import requests

from dnlrepro.acquire import download as dl
from dnlrepro.core import miniature, resolve, runs, workspace
from dnlrepro.core.config import load_config
from dnlrepro.core.profile import load_profile
from dnlrepro.core.registry import config_names, names_of
from dnlrepro.core.workspace import Workspace
from dnlrepro.rehearse import checks, cost, mirror, report, run, shrink, stages

WS = workspace.find(Path(__file__).parent)


def shrink_one(real):
    """The rehearsal's overrides of one paper configuration, 1 iteration."""
    return {**miniature.Miniature(shrink.FACTORS, shrink.COUNTS, 1).overrides(real.to_dict())}


# ---------------------------------------------------------------------------------------------
# shrink: the rehearsal's miniature (the rules themselves: tests/test_miniature.py)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("profile", ["paper", "published"])
def test_plan_keeps_every_structural_property(profile: str) -> None:
    plan = shrink.plan(WS, profile, gpus=2)
    assert (plan.miniature.factors, plan.miniature.counts) == (shrink.FACTORS, shrink.COUNTS)
    changed = {what.split(": ", 1)[1] for what, _, _ in plan.changes if ": " in what}
    assert changed <= set(miniature.LENGTH_KEYS) | set(shrink.SCHEDULE) | {
        "schedule.max_iters",
        "schedule.eval_interval",
    }
    if profile == "paper":
        assert plan.victim == config_names(WS)[0] and plan.miniature.iterations == 1
        assert plan.overrides[-1] == {
            "match": plan.victim,
            "set": {"schedule.max_iters": 2, "schedule.eval_interval": 2},
        }
        assert plan.settings["gpus"] == 2
    else:
        assert plan.victim is None and plan.miniature.iterations is None and not plan.overrides
    # 769: windows larger than the image at ms ratios 0.5 and 0.75 only, in both sizes
    real = load_config("dnl_r50-d8_769x769_40k_cityscapes", profile, ws=WS)
    mini = real.replace(plan.miniature.overrides(real.to_dict()))
    larger = [w[0] for w in miniature.windows(mini, miniature.image_size("cityscapes", 32))]
    assert larger == [True, True, False, False, False, False]
    assert mini.data.crop_size == (25, 25) and mini.test.stride == (17, 17)


def test_plan_refuses_a_careless_factor_and_too_few_processes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Cityscapes / 64 keeps every residue but leaves one slide window down at ratio 1.
    monkeypatch.setattr(shrink, "FACTORS", miniature.Factors(cityscapes=64, ade20k=16))
    with pytest.raises(shrink.ShrinkError, match="slide windows per ms ratio"):
        shrink.plan(WS, "published", gpus=1)
    with pytest.raises(shrink.ShrinkError, match="--gpus 1"):
        shrink.plan(WS, "paper", gpus=1)


def test_apply_writes_a_profile_the_strict_loader_accepts(clone_repo, tmp_path: Path) -> None:
    root = clone_repo(tmp_path / "ws")
    ws = Workspace(root.resolve())
    with pytest.raises(shrink.ShrinkError, match=r"--gpus 3 does not divide the global batch 8"):
        shrink.plan(ws, "paper", gpus=3)  # the layout must split every row's batch evenly
    plan = shrink.plan(ws, "paper", gpus=8)
    shrink.apply(ws, plan)
    assert (root / "params.yaml").read_text() == "profile: paper\n"
    profile = load_profile("paper", ws)
    assert profile.settings.gpus == 8
    assert profile.expected_counts("ade20k") == shrink.COUNTS.ade20k
    cfg = load_config("dnl_r101-d8_512x512_160k_ade20k", profile, ws=ws)
    assert cfg.data.crop_size == (32, 32) and cfg.schedule.max_iters == 1
    assert cfg.data.reduce_zero_label and cfg.test.mode == "whole"
    victim = load_config(plan.victim, profile, ws=ws).schedule
    assert (victim.max_iters, victim.checkpoint_interval, victim.eval_interval) == (2, 1, 2)
    lines = shrink.summary(plan)
    assert any("769 -> 25" in line for line in lines) and any("4 -> 8" in line for line in lines)
    # resolve@ of every run accepts it: the structure check shrinks the file's values, once
    for one in runs.check(ws, profile).values():
        cfg, _ = resolve.resolve_run(ws, profile, one)
        assert cfg.data.crop_size[0] in (16, 25, 32), (one.key, cfg.data.crop_size)


# ---------------------------------------------------------------------------------------------
# download.py hooks: DNLREPRO_MIRROR and DNLREPRO_EXPECTED_SHA256
# ---------------------------------------------------------------------------------------------


def test_mirrored_url(monkeypatch: pytest.MonkeyPatch) -> None:
    url = "https://www.cityscapes-dataset.com/file-handling/?packageID=3"
    monkeypatch.delenv(dl.MIRROR_ENV, raising=False)
    assert dl.mirrored(url) == url
    monkeypatch.setenv(dl.MIRROR_ENV, "http://127.0.0.1:9/m/")
    out = "http://127.0.0.1:9/m/www.cityscapes-dataset.com/file-handling/?packageID=3"
    assert dl.mirrored(url) == out
    assert dl.mirrored(out) == out  # already mirrored: unchanged


def test_expected_sha256_replaces_the_name_hash(
    http_dir: tuple[Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    served, url = http_dir
    data = b"miniature weights" * 1000
    (served / "w-2cccc1ad.pth").write_bytes(data)  # the name hash cannot match
    table = tmp_path / "hashes.json"
    monkeypatch.setenv(dl.EXPECTED_SHA256_ENV, str(table))
    table.write_text(json.dumps({"w-2cccc1ad.pth": hashlib.sha256(data).hexdigest()}))
    got = dl.download_url(f"{url}/w-2cccc1ad.pth", tmp_path / "a", backoff=0, retries=0)
    assert got.read_bytes() == data
    table.write_text(json.dumps({"w-2cccc1ad.pth": "0" * 64}))
    with pytest.raises(dl.ChecksumError, match="sha256"):
        dl.download_url(f"{url}/w-2cccc1ad.pth", tmp_path / "b", backoff=0, retries=0)
    table.write_text("[1, 2]")
    with pytest.raises(dl.DownloadError, match=dl.EXPECTED_SHA256_ENV):
        dl.download_url(f"{url}/w-2cccc1ad.pth", tmp_path / "c", backoff=0, retries=0)


# ---------------------------------------------------------------------------------------------
# The mirror: real layout, Cityscapes login, Range, corruption caught
# ---------------------------------------------------------------------------------------------


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def _fake_mirror(root: Path) -> list[mirror.MirrorFile]:
    files = []
    for name, package_id in dl.CITYSCAPES_PACKAGES.items():
        path = _zip(mirror.package_path(root, package_id, name), {f"{name}/x": name.encode() * 99})
        url = f"{dl.CITYSCAPES_URL}/file-handling/?packageID={package_id}"
        files.append(
            mirror.MirrorFile(name, url, path, hashlib.sha256(path.read_bytes()).hexdigest())
        )
    ade = _zip(mirror.local_path(root, dl.ADE20K_URL), {"ADEChallengeData2016/a": b"a" * 5000})
    files.append(
        mirror.MirrorFile(
            ade.name, dl.ADE20K_URL, ade, hashlib.sha256(ade.read_bytes()).hexdigest()
        )
    )
    (root / mirror.HASHES).write_text(json.dumps({f.name: f.sha256 for f in files}))
    return files


@pytest.fixture
def mirror_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    files = _fake_mirror(tmp_path / "mirror")
    with mirror.serve(tmp_path / "mirror") as served:
        monkeypatch.setenv(dl.MIRROR_ENV, served.url)
        monkeypatch.setenv(dl.EXPECTED_SHA256_ENV, str(served.root / mirror.HASHES))
        monkeypatch.setenv("CITYSCAPES_USERNAME", served.user)
        monkeypatch.setenv("CITYSCAPES_PASSWORD", served.password)
        monkeypatch.setenv("no_proxy", "127.0.0.1")
        yield served, files


def test_mirror_serves_the_real_urls_after_the_cityscapes_login(mirror_env, tmp_path: Path) -> None:
    served, files = mirror_env
    got = dl.fetch("cityscapes", tmp_path / "dl") + dl.fetch("ade20k", tmp_path / "dl")
    assert [p.name for p in got] == [f.name for f in files]
    assert all(p.read_bytes() == f.path.read_bytes() for p, f in zip(got, files, strict=True))
    assert served.logins == 1 and set(served.served) == {f.name for f in files}
    check = checks.mirror_served(served, files)
    assert check.ok, check.detail
    # Without the session cookie the packages redirect to the login, as the real site does.
    url = f"{served.url}/www.cityscapes-dataset.com/file-handling/?packageID=1"
    assert requests.get(url, timeout=10, allow_redirects=False).status_code == 302
    with pytest.raises(urllib.error.HTTPError) as e:  # nothing outside the mirror's folder
        urllib.request.urlopen(f"{served.url}/..%2F..%2Fetc/passwd", timeout=10)
    assert e.value.code == 404


def test_mirror_rejects_a_wrong_password_and_resumes_ranges(
    mirror_env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    served, files = mirror_env
    monkeypatch.setenv("CITYSCAPES_PASSWORD", "wrong")
    with pytest.raises(dl.CredentialsError, match="rejected"):
        dl.fetch("cityscapes", tmp_path / "dl")
    ade = files[-1]
    part = tmp_path / "r" / (ade.name + ".part")
    part.parent.mkdir()
    part.write_bytes(ade.path.read_bytes()[:1000])  # an interrupted earlier transfer
    (got,) = dl.fetch("ade20k", tmp_path / "r")
    assert got.read_bytes() == ade.path.read_bytes()
    assert served.served[ade.name] == ade.path.stat().st_size - 1000  # only the tail was sent


def test_corrupted_mirror_file_fails_verification(mirror_env, tmp_path: Path) -> None:
    _, files = mirror_env
    mirror.corrupt(files[-1])  # ADE20K: no published hash, only the mirror's own sha256
    assert zipfile.is_zipfile(files[-1].path)  # still a readable zip: only the hash can tell
    with pytest.raises(dl.ChecksumError, match="sha256"):
        dl.download_url(dl.ADE20K_URL, tmp_path / "dl", backoff=0, retries=0)
    assert not (tmp_path / "dl" / files[-1].name).exists()


def test_ade20k_downloads_without_a_cityscapes_login(tmp_path: Path) -> None:
    """``download@ade20k`` of profile paper needs no Cityscapes account; ``download@cityscapes``
    without one fails with one clear line and no traceback (issue: first run)."""
    root = tmp_path / "mirror"
    files = _fake_mirror(root)
    for name in dl.pretrained_for(names_of("ade20k")):  # the ADE20K rows' ImageNet backbones
        url = dl.PRETRAINED_URLS[name]
        path = mirror.local_path(root, url)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(name.encode() * 100)  # any bytes: the mirror's own sha256 is checked
        files.append(mirror.MirrorFile(path.name, url, path, dl.file_digest(path)))
    repo = Workspace(Path(__file__).resolve().parents[1])
    files += mirror.reference_logs(root, repo)
    (root / mirror.HASHES).write_text(json.dumps({f.name: f.sha256 for f in files}))
    ws = tmp_path / "ws"
    run.copy_workspace(Path(__file__).resolve().parents[1], ws)
    (ws / "params.yaml").write_text("profile: paper\n")
    (ws / "results/data/downloads/cityscapes.json").unlink()  # the committed smoke receipt
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CITYSCAPES_", "DNLREPRO_"))}
    env.pop("DVC_ROOT", None)
    with mirror.serve(root) as served:
        env.update(DNLREPRO_MIRROR=served.url, no_proxy="127.0.0.1", NO_PROXY="127.0.0.1",
                   DNLREPRO_EXPECTED_SHA256=str(root / mirror.HASHES),
                   PYTHONPATH=str(ws / "src"))  # fmt: skip

        def stage(dataset: str) -> subprocess.CompletedProcess:
            cmd = [sys.executable, "pipeline/download.py", dataset]
            return subprocess.run(cmd, cwd=ws, env=env, capture_output=True, text=True, timeout=300)

        ade = stage("ade20k")
        assert ade.returncode == 0, ade.stderr[-3000:]
        city = stage("cityscapes")
    receipt = json.loads((ws / "results/data/downloads/ade20k.json").read_text())
    assert receipt["folder"] == "downloads/ade20k" and receipt["profile"] == "paper"
    assert list(receipt["files"]) == ["ADEChallengeData2016.zip"]
    assert len(receipt["weights"]) == len(dl.pretrained_for(names_of("ade20k"))) == 2
    assert len(receipt["reference_logs"]) == len(names_of("ade20k")) == 4  # pinned, with sha256
    assert (ws / "downloads/ade20k/ADEChallengeData2016.zip").read_bytes() == files[
        2
    ].path.read_bytes()
    assert city.returncode == 1
    assert "CITYSCAPES_USERNAME" in city.stderr and "Traceback" not in city.stderr, city.stderr
    assert "dvc repro --keep-going" in city.stderr  # how to go on with the ADE20K rows
    assert served.logins == 0 and not (ws / "results/data/downloads/cityscapes.json").exists()


# ---------------------------------------------------------------------------------------------
# Running DVC: stage parsing, the planned kill, failures
# ---------------------------------------------------------------------------------------------

DAG = """\
stages:
  first:
    cmd: echo one > one.txt
    outs: [one.txt]
  slow:
    cmd: sh -c 'sleep 0.3; touch ready; sleep 60' && touch slow.txt
    deps: [one.txt]
    outs: [slow.txt]
  broken:
    cmd: >-
      sh -c 'echo "ValueError: the root cause"; echo tail; exit 3'
    deps: [slow.txt]
"""


def _dvc_repo(root: Path) -> Path:
    root.mkdir()
    (root / "dvc.yaml").write_text(DAG)
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=root, check=True)
    return root


def test_run_dvc_times_stages_kills_the_victim_and_reports_the_failure(tmp_path: Path) -> None:
    root = _dvc_repo(tmp_path / "repo")
    env = dict(os.environ)
    kill = stages.Kill("slow", lambda: (root / "ready").exists())
    t0 = time.monotonic()
    first = stages.run_dvc(root, env, tmp_path / "1.log", 1, kill, timeout=120)
    assert time.monotonic() - t0 < 50 and kill.done
    by_name = {s.stage: s for s in first.stages}
    assert by_name["first"].status == "ok" and by_name["first"].command == "echo one > one.txt"
    assert by_name["slow"].status == "killed" and first.returncode != 0
    assert "Running stage 'slow':" in (tmp_path / "1.log").read_text()
    (root / "dvc.yaml").write_text(DAG.replace("sleep 60", "true"))
    second = stages.run_dvc(root, env, tmp_path / "2.log", 2, None, timeout=120)
    states = {s.stage: s.status for s in second.stages}
    assert states["first"] == "skipped" and states["slow"] == "ok" and states["broken"] == "failed"
    assert "broken" in second.error
    done = checks.all_stages_ran(["first", "slow", "broken"], first.stages + second.stages)
    assert not done.ok and "broken" in done.detail
    fail = report.failure([first, second])
    assert fail["stage"] == "broken" and fail["errors"] == ["ValueError: the root cause"]
    assert "tail" in fail["log_tail"]
    (root / "dvc.yaml").write_text("stages: [")  # DVC itself fails: its own output is reported
    third = stages.run_dvc(root, env, tmp_path / "3.log", 3, None, timeout=120)
    fail = report.failure([third])
    assert fail["stage"] is None and third.returncode != 0 and fail["log_tail"]


# ---------------------------------------------------------------------------------------------
# Checks on what the pipeline wrote
# ---------------------------------------------------------------------------------------------


def _diff(root: Path, verdicts: list[str]) -> None:
    """A paper diff of every registry row (``dnlrepro check`` wants them all): the judged numbers
    get ``verdicts`` in turn, then ``pass``; the others are ``not comparable``."""
    from dnlrepro.core.registry import METRICS, load_published
    from dnlrepro.reports.diff import VERDICTS

    registry = load_published(WS.registry_file)
    todo, rows = list(verdicts), []
    for name, entry in registry.configs.items():
        for metric in METRICS:
            pub, tol = entry.metrics[metric], registry.tolerance(name, metric, "paper").value
            judged = pub is not None and tol is not None
            verdict = (todo.pop(0) if todo else "pass") if judged else "not comparable"
            rows.append({"config": name, "metric": metric, "reference": "published",
                         "published": pub, "reproduced": 0.0, "delta": None, "tolerance": tol,
                         "note": "", "verdict": verdict})  # fmt: skip
    summary = {v: sum(r["verdict"] == v for r in rows) for v in VERDICTS}
    (root / "reports").mkdir(exist_ok=True)
    report_ = {"profile": "paper", "summary": summary, "rows": rows}
    (root / "reports" / "diff.json").write_text(json.dumps(report_))


def test_verdict_checks_want_fails_not_missing(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / "params").symlink_to(WS.params_dir)  # the registry check judges against
    _diff(tmp_path, ["fail", "fail", "pass"])
    assert checks.verdicts(tmp_path).ok
    got = checks.check_command(tmp_path, env)
    assert got.ok and got.detail.startswith("exit 1, 2 offending"), got.detail
    _diff(tmp_path, ["fail", "missing"])
    assert not checks.verdicts(tmp_path).ok
    assert not checks.check_command(tmp_path, env).ok  # a MISSING line is not "for that reason"
    _diff(tmp_path, ["pass"])
    assert not checks.verdicts(tmp_path).ok  # in miniature a pass means nothing was compared


def test_mlflow_check_reads_the_profile_tags(tmp_path: Path) -> None:
    db = tmp_path / "mlflow.db"
    with sqlite3.connect(db) as con:
        con.execute("CREATE TABLE runs (run_uuid TEXT)")
        con.execute("CREATE TABLE tags (key TEXT, value TEXT, run_uuid TEXT)")
        for run_id, profile, cfg in (("r1", "paper", "a"), ("r2", "paper", "b")):
            con.execute("INSERT INTO runs VALUES (?)", (run_id,))
            con.executemany("INSERT INTO tags VALUES (?, ?, ?)",
                            [("profile", profile, run_id), ("config", cfg, run_id)])  # fmt: skip
    assert checks.mlflow_profile(db, "paper", ["a", "b"]).ok
    got = checks.mlflow_profile(db, "paper", ["a", "b", "c"])
    assert not got.ok and "c" in got.detail
    assert not checks.mlflow_profile(db, "published", ["a"]).ok


# ---------------------------------------------------------------------------------------------
# Cost of the real run
# ---------------------------------------------------------------------------------------------


def test_cost_parses_the_logs_and_scales_by_flops() -> None:
    log = [
        "02:19:14 INFO dnlrepro.engine.train: Iter [1/2]\tlr: 1e-02, eta: 0:00:09, time: 9.899, x",
        "02:19:22 INFO dnlrepro.engine.train: Iter [2/2]\tlr: 5e-03, eta: 0:00:00, time: 5.817, x",
        "03:04:31 INFO dnlrepro.bench.measure: benchmark 1/2 images, 0.00 fps so far",
        "03:04:58 INFO dnlrepro.bench.benchmark: x on x86_64: ours (sdpa) 12.50 fps, Mem None GB",
    ]
    assert cost.measured_iteration(log) == 5.817 and cost.measured_image(log) == 0.08
    flops = cost.Flops()
    real = load_config("dnl_r50-d8_769x769_40k_cityscapes", "paper", ws=WS)
    mini = real.replace(shrink_one(real))
    # The a*q + b*q^2 fit reproduces FlopCounterMode at a size it was not fitted on.
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from dnlrepro.models import build_segmentor

    with torch.device("meta"):
        model = build_segmentor(real).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.encode_decode(torch.empty(1, 3, 769, 769, device="meta"))
    assert flops.forward(real, 769, 769) == pytest.approx(counter.get_total_flops(), rel=1e-3)
    row = cost.cpu_train(flops, real, mini, 2.0, gpus=4)
    assert row.units == 40000 and row.workers == 4 and row.seconds_each > 2.0 * 100
    assert "CPU-h est." in row.text()
    # ms+flip at full size: 6 ratios x 2 flips, slide windows counted.
    single = flops.evaluate(real, miniature.image_size("cityscapes"), ms_flip=False)
    both = flops.evaluate(real, miniature.image_size("cityscapes"))
    assert both > 10 * single


def test_cuda_timing_code_runs_on_cpu_at_rehearsal_size() -> None:
    """The --device cuda path (time_train / time_evaluate), exercised on CPU at a tiny size."""
    real = load_config("dnl_r50-d8_512x1024_40k_cityscapes", "paper", ws=WS)
    mini = real.replace(shrink_one(real))
    seconds, peak = cost.time_train(mini, "cpu", iters=1)
    assert seconds > 0 and peak is None
    assert cost.time_evaluate(mini, (32, 64), "cpu") > 0


def test_render_lists_differences_rows_checks_and_the_failure() -> None:
    rec = report.Receipt("paper", "cpu", "cpu", "gloo on CPU", 2, "/ws")
    rec.change_summary = ["lengths / 32"]
    rec.setup("build mirror miniatures", "5 files", 1.0)
    rec.rows.append(report._row("train@x", 1, "pipeline/train.py x", 3.0, "killed (planned)"))
    rec.checks.append(checks.Check("every stage ran", False, "1/2 stages ok"))
    rec.failure = {"stage": "train@x", "command": "sh pipeline/run.sh pipeline/train.py x",
                   "error": "ERROR: failed", "log": "/l", "errors": ["TypeError: boom"],
                   "log_tail": ["last line"]}  # fmt: skip
    text = report.render(rec, Path("/r/receipt.json"))
    for needle in ("lengths / 32", "killed (planned)", "FAIL  every stage ran", "TypeError: boom",
                   "FAILED stage: train@x", "last line", "/r/receipt.json"):  # fmt: skip
        assert needle in text
    assert not rec.ok and json.dumps(rec.to_dict())


def test_cli_lists_rehearse() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "dnlrepro.cli", "rehearse", "--help"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert out.returncode == 0 and "--profile" in out.stdout and "--corrupt" in out.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "dnlrepro.cli", "rehearse", "--profile", "smoke"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert bad.returncode == 2


# ---------------------------------------------------------------------------------------------
# A corrupted mirror file fails the rehearsal (the real download stage's verification)
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_rehearsal_with_a_corrupted_mirror_file_fails_in_download(
    clone_repo, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = clone_repo(tmp_path / "user")
    (root / "mlflow.db").write_bytes(b"the user's")
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    out = tmp_path / "out"
    rc = run.rehearse(
        Workspace(root.resolve()), "paper", out=out, corrupt=("ADEChallengeData2016.zip",)
    )
    assert rc == 1
    receipt = json.loads((out / "receipt.json").read_text())
    failure = receipt["failure"]
    assert not receipt["ok"] and failure["stage"] == "download@ade20k", failure
    assert any(
        "ADEChallengeData2016.zip" in e and "sha256" in e for e in receipt["failure"]["errors"]
    )
    assert "FAILED stage: download@ade20k" in capsys.readouterr().out
    after = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    assert after == before  # the user's workspace is untouched (receipt went to --out)
