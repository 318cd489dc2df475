"""The multi-GPU launcher on CPU: a fake GPU list and a tiny DAG with the real stage names."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from dnlrepro.launch import local as launch
from dnlrepro.launch import stages

TINY_DAG = """\
vars:
  - exp.yaml
stages:
  prepare:
    cmd: echo prepared > prepared.txt
    deps: [exp.yaml]
    outs:
      - prepared.txt:
          cache: false
  train:
    foreach: ${experiments}
    do:
      cmd: sleep 0.5 && printf "%s" "$CUDA_VISIBLE_DEVICES" > gpu_${key}.txt
      deps:
        - prepared.txt
      outs:
        - gpu_${key}.txt:
            cache: false
  evaluate:
    foreach: ${experiments}
    do:
      cmd: cp gpu_${key}.txt eval_${key}.txt
      deps:
        - gpu_${key}.txt
      outs:
        - eval_${key}.txt:
            cache: false
  tables:
    cmd: cat eval_a.txt eval_b.txt eval_c.txt > table.txt
    deps: [eval_a.txt, eval_b.txt, eval_c.txt]
    outs:
      - table.txt:
          cache: false
  diff:
    cmd: wc -c < table.txt > diff.txt
    deps: [table.txt]
    outs:
      - diff.txt:
          cache: false
  report:
    cmd: cp diff.txt report.txt
    deps: [diff.txt]
    outs:
      - report.txt:
          cache: false
"""

SHARED = ("prepare",)  # the tiny DAG's shared stage (the real one: prepare@<dataset>)


def dvc(repo: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dvc", *args], cwd=repo, capture_output=True, text=True, check=False
    )


@pytest.fixture()
def tiny_repo(tmp_path: Path) -> Path:
    (tmp_path / "exp.yaml").write_text("experiments:\n  a: {}\n  b: {}\n  c: {}\n")
    (tmp_path / "dvc.yaml").write_text(TINY_DAG)
    assert dvc(tmp_path, "init", "--no-scm", "-q").returncode == 0
    return tmp_path


def test_parse_gpus():
    assert launch.parse_gpus("0,1,2,3") == ["0", "1", "2", "3"]
    assert launch.parse_gpus("0-2,6") == ["0", "1", "2", "6"]
    for bad in ("", "x", "3-1", "0,0", "0-2,1"):
        with pytest.raises(ValueError, match="--gpus"):
            launch.parse_gpus(bad)


def test_dry_run_prints_the_plan_and_runs_nothing(tiny_repo: Path, capsys):
    jobs = launch.launch(["0", "1"], ["a", "b", "c"], repo=tiny_repo, dry_run=True, shared=SHARED)
    out = capsys.readouterr().out
    assert "repro prepare" in out and "repro tables diff report" in out
    assert out.count("--wait-for-lock repro -s train@") == 3
    assert out.count("[1 GPU(s), first round]") == 4  # a and b: train + evaluate each
    assert out.count("repro -s evaluate@") == 3
    assert all(j.returncode is None for j in jobs)
    assert not (tiny_repo / "prepared.txt").exists()


def test_queue_runs_every_config_on_a_fake_gpu(tiny_repo: Path):
    jobs = launch.launch(["0", "1"], ["a", "b", "c"], repo=tiny_repo, stagger=0.2, shared=SHARED)
    assert [j.returncode for j in jobs] == [0, 0, 0]
    seen = {c: (tiny_repo / f"gpu_{c}.txt").read_text() for c in "abc"}
    # every stage saw exactly the GPU its worker owns, and both workers took work
    assert {j.config: j.gpu for j in jobs} == seen
    assert set(seen.values()) == {"0", "1"}
    assert (tiny_repo / "diff.txt").read_text().split()[0] == "3"
    assert (tiny_repo / "report.txt").read_text() == (tiny_repo / "diff.txt").read_text()
    # concurrent dvc processes left a consistent dvc.lock: nothing is stale afterwards
    status = dvc(tiny_repo, "status", "-q")
    assert status.returncode == 0, status.stdout + status.stderr
    assert launch.summary(jobs).count(" ok ") == 3


def test_runs_are_packed_onto_the_gpus_by_their_layout(tiny_repo: Path):
    """Four GPUs: a 2-GPU run and two 1-GPU runs start together; a 4-GPU run waits for all."""
    needs = {"a": 2, "b": 1, "c": 1}
    jobs = launch.launch(
        ["0", "1", "2", "3"], ["a", "b", "c"], repo=tiny_repo, stagger=0.1, shared=SHARED,
        needs=needs,
    )  # fmt: skip
    assert [j.returncode for j in jobs] == [0, 0, 0]
    seen = {c: (tiny_repo / f"gpu_{c}.txt").read_text() for c in "abc"}
    assert {c: len(g.split(",")) for c, g in seen.items()} == needs  # CUDA_VISIBLE_DEVICES
    assert sorted(",".join(seen.values()).split(",")) == ["0", "1", "2", "3"]  # no GPU shared
    with pytest.raises(ValueError, match=r"fewer than these runs' layouts need: a \(4\)"):
        launch.launch(["0", "1"], ["a"], repo=tiny_repo, dry_run=True, shared=SHARED,
                      needs={"a": 4})  # fmt: skip


def test_failed_stage_is_reported_and_skips_the_reports(tiny_repo: Path):
    (tiny_repo / "dvc.yaml").write_text(TINY_DAG.replace("cp gpu_${key}.txt", "false && cp x"))
    jobs = launch.launch(["0"], ["a"], repo=tiny_repo, stagger=0, shared=SHARED)
    assert jobs[0].returncode not in (0, None)
    assert "FAILED" in launch.summary(jobs)
    assert not (tiny_repo / "table.txt").exists()


def test_shared_stages_are_the_launched_datasets_prepare_and_runs_resolve():
    from dnlrepro.core.registry import names_of

    ade, city = names_of("ade20k"), names_of("cityscapes")
    resolve = [f"resolve@{r}" for r in ade[:2]]
    assert stages.shared_stages(ade[:2]) == ["prepare@ade20k", *resolve]  # no Cityscapes login
    assert stages.shared_stages([city[0], ade[0]]) == [
        "prepare@cityscapes",
        "prepare@ade20k",
        f"resolve@{city[0]}",
        f"resolve@{ade[0]}",
    ]
    assert stages.is_shared("download@cityscapes") and stages.is_shared("prepare")
    assert stages.is_shared("resolve@x")
    assert not stages.is_shared("train@x") and not stages.is_shared("report")


def test_final_stages_run_in_dag_order_whatever_their_place_in_dvc_yaml():
    # dvc.yaml lists diff first (for `dvc exp show`); `dvc repro -s` runs its targets as given,
    # so the report stages come in the order they must run: report reads tables' and diff's files
    repo = Path(__file__).resolve().parents[1]
    names = stages.stage_names(repo)
    assert names.index("diff") < names.index("tables")  # the file order this guards against
    assert stages.final_stages(repo) == ["tables", "diff", "report"]


def test_a_row_launches_with_all_its_seeds():
    """`--configs ROW` launches every seed of the row (params/runs.yaml), a run key just itself."""
    import argparse

    from dnlrepro.core.workspace import Workspace

    ws, two = Workspace(Path(__file__).resolve().parents[1]), "dnl_r50-d8_512x1024_40k_cityscapes"
    assert launch._configs(argparse.Namespace(configs=[two]), ws) == [two, f"{two}-seed1"]
    assert launch._configs(argparse.Namespace(configs=[f"{two}-seed1"]), ws) == [f"{two}-seed1"]
    assert len(launch._configs(argparse.Namespace(configs=None), ws)) == 13  # 12 rows + 1 seed
    assert stages.shared_stages([f"{two}-seed1"], ws) == [
        "prepare@cityscapes",
        f"resolve@{two}-seed1",
    ]
