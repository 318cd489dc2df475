"""The DVC DAG: stage names, the foreach rows, what re-runs when, a 13th row.

The rows of the pipeline are the registry's (``params/published.yaml`` ``configs:``, read by
``dvc.yaml``'s ``vars``). The invalidation tests copy the pipeline definition and the code into a
temporary DVC repo, write every run's resolved files (what ``resolve@`` writes), record fake
outputs for every other stage (``dvc commit``), edit one file and ask ``dvc status`` which stages
changed; only the cheap ``resolve@`` stages ever run (docs/pipeline.md, "What re-runs when").
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dnlrepro.core import resolve
from dnlrepro.core.config import ConfigError, load_config
from dnlrepro.core.profile import read_params
from dnlrepro.core.registry import config_names, load_published
from dnlrepro.core.runs import check, plan
from dnlrepro.core.workspace import Workspace

REPO = Path(__file__).resolve().parents[1]
NAMES = config_names(Workspace(REPO))
RUNS = list(plan(read_params(Workspace(REPO)), Workspace(REPO)))
ONE = "dnl_r101-d8_512x512_80k_ade20k"
# The 13th row: a copy of BASE with another schedule, added by one params file + one registry entry.
BASE = "dnl_r50-d8_512x1024_40k_cityscapes"
NEW = "dnl_r50-d8_512x1024_20k_cityscapes"
NEW_ENTRY = f"""\
  {NEW}:
    dataset: cityscapes
    method: DNL
    backbone: R-50-D8
    crop_size: 512x1024
    lr_schd: 20000
    protocol: *cs_512_1024
    metrics: {{mIoU: null, mIoU_ms_flip: null, mem_gb: null, fps: null}}
    notes:
      mIoU: not a row of the mmseg README (a 20k schedule added by tests/test_dvc_dag.py)
      mIoU_ms_flip: not published
      mem_gb: not published
      fps: not published
    checkpoint: https://example.invalid/{NEW}_20201202_000000-00000000.pth
    sha256_prefix: "00000000"
    log: https://example.invalid/{NEW}-20201202_000000.log.json
"""


def dvc(repo: Path, *args: str) -> subprocess.CompletedProcess:
    # Stage commands (only resolve@ runs here) use this interpreter and the copy's code.
    env = {**os.environ, "DNLREPRO_PYTHON": sys.executable, "PYTHONPATH": str(repo / "src")}
    env.pop("DNLREPRO_WORKSPACE", None)
    return subprocess.run(
        [sys.executable, "-m", "dvc", *args],
        cwd=repo,
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )


def test_foreach_stages_are_the_runs_of_the_registry_rows():
    """train@/evaluate@ are exactly the runs of the registry's rows under the committed profile
    (params/runs.yaml is current), each wired to its own dataset and file."""
    from dvc.repo import Repo

    definition = yaml.safe_load((REPO / "dvc.yaml").read_text())
    assert definition["vars"][0] == "params/runs.yaml:runs"
    assert set(definition["vars"][1]["datasets"]) == {"cityscapes", "ade20k"}
    for stage in ("resolve", "train", "evaluate"):
        assert definition["stages"][stage]["foreach"] == "${runs}"

    ws = Workspace(REPO)
    runs = check(ws, read_params(ws))  # raises when params/runs.yaml is stale
    assert [r.config for r in runs.values()] == sorted(
        (r.config for r in runs.values()), key=list(NAMES).index
    )
    assert {r.config for r in runs.values()} == set(NAMES)
    with Repo(str(REPO)) as repo:
        stages = {s.addressing: s for s in repo.index.stages}
    for kind in ("resolve", "train", "evaluate"):
        assert [s.split("@", 1)[1] for s in stages if s.startswith(f"{kind}@")] == list(runs)
    for key, run in runs.items():
        # the configuration file reaches the run only through its resolved files
        assert f"params/{run.config}.yaml" in {p.def_path for p in stages[f"resolve@{key}"].deps}
        for kind in ("train", "evaluate"):
            deps = {p.def_path for p in stages[f"{kind}@{key}"].deps}
            assert f"params/{run.config}.yaml" not in deps, (kind, key)
            assert {f"results/{key}/config.yaml", f"results/{key}/run.yaml"} <= deps, (kind, key)

    registry = load_published(REPO / "params" / "published.yaml").configs
    # No orphan configuration file: every params/dnl_*.yaml is a row (else it would never run).
    assert {p.stem for p in (REPO / "params").glob("dnl_*.yaml")} == set(registry)
    for name, row in registry.items():
        params = yaml.safe_load((REPO / "params" / f"{name}.yaml").read_text())
        assert params["name"] == name
        assert row.dataset == params["data"]["dataset"], name
        for kind in ("train", "evaluate"):
            stage = stages[f"{kind}@{name}"]
            deps = {d.def_path for d in stage.deps}
            assert f"results/data/{row.dataset}.json" in deps  # item.dataset is used
            other = "ade20k" if row.dataset == "cityscapes" else "cityscapes"
            assert f"results/data/{other}.json" not in deps
            assert f"results/{name}/config.yaml" in deps
            assert stage.cmd == f"sh pipeline/run.sh pipeline/{kind}.py {name}"


def test_stage_names_follow_the_mmseg_config_names():
    result = dvc(REPO, "stage", "list", "--name-only")
    assert result.returncode == 0, result.stderr
    names = result.stdout.split()
    expected = [
        "diff",  # listed first in dvc.yaml: its metric opens `dvc exp show` (docs/pipeline.md)
        "download@cityscapes",
        "download@ade20k",
        "prepare@cityscapes",
        "prepare@ade20k",
        *(f"resolve@{n}" for n in RUNS),
        *(f"train@{n}" for n in RUNS),
        *(f"evaluate@{n}" for n in RUNS),
        "tables",
        "report",
    ]
    assert names == expected


def fake_outputs(repo: Path) -> None:
    """Every declared output of every stage (outs, metrics, plots), as DVC itself lists them, so
    `dvc commit` can record a lock file: the real resolved files of every run (later stages read
    them as params), fake contents for the rest. A path without a suffix is a folder
    (``downloads``, ``data``): it gets one file."""
    from dvc.repo import Repo

    ws = Workspace(repo)
    profile = read_params(ws)
    for run in check(ws, profile).values():
        resolve.write(ws, profile, run)
    with Repo(str(repo)) as dvc_repo:
        outs = [out.def_path for stage in dvc_repo.index.stages for out in stage.outs]
    assert outs, "dvc.yaml declares no outputs"
    for rel in outs:
        if rel.endswith((resolve.CONFIG_FILE, resolve.PLAN_FILE)):
            continue
        path = repo / rel
        if not path.suffix:
            path = path / "x.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"path": rel}))


@pytest.fixture(scope="module")
def locked_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("dag")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for d in ("params", "pipeline", "src"):
        shutil.copytree(REPO / d, repo / d, ignore=ignore)
    for f in ("dvc.yaml", "params.yaml", ".dvcignore"):
        shutil.copy(REPO / f, repo / f)
    assert dvc(repo, "init", "--no-scm", "-q").returncode == 0
    fake_outputs(repo)
    result = dvc(repo, "commit", "-f", "-q")
    assert result.returncode == 0, result.stderr
    return repo


def changed_stages(repo: Path) -> set[str]:
    result = dvc(repo, "status", "--json")
    assert result.returncode == 0, result.stderr
    return set(json.loads(result.stdout or "{}"))


def edit(path: Path, old: str, new: str) -> str:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))
    return text


def repro(repo: Path, *stages: str) -> str:
    result = dvc(repo, "repro", *stages)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout + result.stderr


RUN_STAGES = ("resolve", "train", "evaluate")


@pytest.mark.slow
def test_an_edit_the_profile_overrides_stops_at_resolve(locked_copy: Path):
    """lr 0.02 in a file whose lr the smoke profile already sets to 0.02: resolve@ re-runs, says
    so, and its unchanged output leaves training and evaluation up to date."""
    assert changed_stages(locked_copy) == set()
    path = locked_copy / "params" / f"{ONE}.yaml"
    original = edit(path, "lr: 0.01", "lr: 0.02")
    try:
        assert changed_stages(locked_copy) == {f"resolve@{ONE}"}
        log = repro(locked_copy, f"resolve@{ONE}")
        assert "profile smoke sets" in log and "schedule.lr 0.02 -> 0.02" in log
        assert f"train@{ONE} and evaluate@{ONE} stay up to date" in log
        assert changed_stages(locked_copy) == set()
    finally:
        path.write_text(original)
        repro(locked_copy, f"resolve@{ONE}")
    assert changed_stages(locked_copy) == set()


@pytest.mark.slow
def test_editing_one_configuration_re_runs_only_its_runs(locked_copy: Path):
    """A value the profile keeps (momentum) in a row of two seeds: both runs, nothing else."""
    path = locked_copy / "params" / f"{BASE}.yaml"
    original = edit(path, "momentum: 0.9", "momentum: 0.8")
    keys = (BASE, f"{BASE}-seed1")
    try:
        assert changed_stages(locked_copy) == {f"resolve@{k}" for k in keys}
        repro(locked_copy, *(f"resolve@{k}" for k in keys))
        assert changed_stages(locked_copy) == {
            f"{s}@{k}" for s in ("train", "evaluate") for k in keys
        } | {"tables", "diff", "report"}
    finally:
        path.write_text(original)
        repro(locked_copy, *(f"resolve@{k}" for k in keys))
        fake_outputs(locked_copy)
        assert dvc(locked_copy, "commit", "-f", "-q").returncode == 0
    assert changed_stages(locked_copy) == set()


@pytest.mark.slow
def test_rewording_a_description_or_a_published_number_re_runs_no_run(locked_copy: Path):
    profiles = locked_copy / "params" / "profiles.yaml"
    original = edit(profiles, "The embedded default:", "The embedded default profile:")
    try:
        assert changed_stages(locked_copy) == {"tables", "report"}
    finally:
        profiles.write_text(original)
    original = edit(profiles, "gpus: 4", "gpus: 8")  # the paper block
    try:
        assert changed_stages(locked_copy) == set()  # params.yaml selects smoke
    finally:
        profiles.write_text(original)
    published = locked_copy / "params" / "published.yaml"
    original = edit(published, "mIoU: 78.61", "mIoU: 78.62")
    try:
        # download@ reads the registry's rows and checkpoint URLs (a re-run fetches nothing new)
        downloads = {"download@cityscapes", "download@ade20k"}
        assert changed_stages(locked_copy) == {"tables", "diff", "report"} | downloads
    finally:
        published.write_text(original)


@pytest.mark.slow
def test_adding_a_seed_to_one_row_adds_exactly_its_run(locked_copy: Path):
    profiles = locked_copy / "params" / "profiles.yaml"
    runs_file = locked_copy / "params" / "runs.yaml"
    before = runs_file.read_text()
    original = edit(
        profiles,
        '    - {match: "dnl_r50-d8_512x1024_40k_cityscapes", seeds: [0, 1]}\n',
        '    - {match: "dnl_r50-d8_512x1024_40k_cityscapes", seeds: [0, 1]}\n'
        f'    - {{match: "{ONE}", seeds: [0, 1]}}\n',
    )
    cli = [sys.executable, "-m", "dnlrepro.cli", "--workspace", str(locked_copy)]
    try:
        switched = subprocess.run([*cli, "profile", "smoke"], capture_output=True, text=True)
        assert switched.returncode == 0, switched.stderr
        new = f"{ONE}-seed1"
        assert changed_stages(locked_copy) == {
            *(f"{s}@{new}" for s in RUN_STAGES),
            "tables",
            "diff",
            "report",
        }
    finally:
        profiles.write_text(original)
        runs_file.write_text(before)
        shutil.rmtree(locked_copy / "results" / f"{ONE}-seed1", ignore_errors=True)
    assert changed_stages(locked_copy) == set()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("module", "stale"),
    [
        ("tools/predict.py", set()),
        ("acquire/download.py", {"download@cityscapes", "download@ade20k", "prepare@cityscapes",
                                 "prepare@ade20k"}),
        ("reports/html.py", {"report"}),
        ("bench/benchmark.py", {f"evaluate@{n}" for n in RUNS}),
        ("engine/train.py", {f"train@{n}" for n in RUNS}),
        ("models/__init__.py", {f"{s}@{n}" for s in ("train", "evaluate") for n in RUNS}),
    ],
)  # fmt: skip
def test_code_edits_re_run_the_stages_that_import_it(locked_copy: Path, module: str, stale: set):
    path = locked_copy / "src" / "dnlrepro" / module
    original = path.read_text()
    path.write_text(original + "\n# touched\n")
    try:
        assert changed_stages(locked_copy) == stale
    finally:
        path.write_text(original)


@pytest.mark.slow
def test_a_13th_configuration_is_one_params_file_and_one_registry_entry(
    locked_copy: Path, monkeypatch: pytest.MonkeyPatch
):
    """Adding a row touches nothing else: not dvc.yaml, not the code, not another params file;
    `dnlrepro profile` then writes its run into params/runs.yaml (stages refuse until then)."""
    untouched = {
        p: p.read_bytes() for p in locked_copy.rglob("*") if p.is_file() and ".dvc" not in p.parts
    }
    params_dir = locked_copy / "params"
    new_file = params_dir / f"{NEW}.yaml"
    text = (params_dir / f"{BASE}.yaml").read_text()
    text = text.replace(f"name: {BASE}", f"name: {NEW}", 1)
    text = re.sub(r"(?m)^  max_iters: 40000$", "  max_iters: 20000", text, count=1)
    assert f"name: {NEW}" in text and "max_iters: 20000" in text
    registry = params_dir / "published.yaml"
    original = registry.read_text()
    assert original.rstrip("\n").splitlines()[-1].startswith("    log: ")  # configs: is last
    new_file.write_text(text)
    registry.write_text(original.rstrip("\n") + "\n" + NEW_ENTRY)
    runs_file = params_dir / "runs.yaml"
    runs_text = runs_file.read_text()
    try:
        ws = Workspace(locked_copy)
        assert config_names(ws) == (*NAMES, NEW)
        with pytest.raises(
            ConfigError, match=r"missing: \['dnl_r50-d8_512x1024_20k.*dnlrepro profile smoke"
        ):
            check(ws, read_params(ws))
        cli = [sys.executable, "-m", "dnlrepro.cli", "--workspace", str(locked_copy)]
        switched = subprocess.run([*cli, "profile", "smoke"], capture_output=True, text=True)
        assert switched.returncode == 0, switched.stderr
        assert f"{NEW}: {{config: {NEW}, dataset: cityscapes, seed: 0}}" in runs_file.read_text()
        # The new row resolves like its siblings: paper values from its file, smoke overrides.
        paper = load_config(NEW, "paper", ws=ws)
        assert (paper.name, paper.schedule.max_iters, paper.data.dataset) == (
            NEW,
            20000,
            "cityscapes",
        )
        assert (
            load_config(NEW, "smoke", ws=ws).data.crop_size
            == load_config(BASE, "smoke", ws=ws).data.crop_size
        )
        # The published profile would fetch its checkpoint with the others.
        monkeypatch.setenv("DNLREPRO_WORKSPACE", str(locked_copy))
        from dnlrepro.acquire import download

        url = f"https://example.invalid/{NEW}_20201202_000000-00000000.pth"
        assert download.checkpoint_urls()[NEW] == url

        new_and_reports = {f"{s}@{NEW}" for s in RUN_STAGES} | {"tables", "diff", "report"}
        new_and_reports |= {"download@cityscapes", "download@ade20k"}  # a new row's weights
        assert changed_stages(locked_copy) == new_and_reports
        # `dvc repro --dry` stops at a dependency no stage has produced yet (train needs
        # resolve's files; treeverse/dvc#9021), so dry-run the resolution and read the edges.
        dry = dvc(locked_copy, "repro", "--dry", f"resolve@{NEW}")
        assert dry.returncode == 0, dry.stdout[-3000:] + dry.stderr[-3000:]
        planned = set(re.findall(r"Running stage '([^']+)'", dry.stdout))
        assert planned == {f"resolve@{NEW}"}, dry.stdout[-3000:]
        assert f"> sh pipeline/run.sh pipeline/resolve.py {NEW}" in dry.stdout
        dag = dvc(locked_copy, "dag", "--dot", f"evaluate@{NEW}")
        assert dag.returncode == 0, dag.stderr
        edges = set(re.findall(r'"([^"]+)" -> "([^"]+)"', dag.stdout))
        assert edges == {
            ("download@cityscapes", "prepare@cityscapes"),
            ("download@cityscapes", f"train@{NEW}"),  # its receipt lists the weights
            ("prepare@cityscapes", f"train@{NEW}"),
            ("prepare@cityscapes", f"evaluate@{NEW}"),
            (f"resolve@{NEW}", f"train@{NEW}"),
            (f"resolve@{NEW}", f"evaluate@{NEW}"),
            (f"train@{NEW}", f"evaluate@{NEW}"),
        }

        # Nothing else needed editing: every other file of the copy is byte-identical.
        now = {
            p: p.read_bytes()
            for p in locked_copy.rglob("*")
            if p.is_file() and ".dvc" not in p.parts
        }
        changed = {p for p in untouched if now.get(p) != untouched[p]} | (set(now) - set(untouched))
        # (and what `dnlrepro profile` generates: the new run's resolved files)
        resolved = {locked_copy / "results" / NEW / n for n in ("config.yaml", "run.yaml")}
        assert changed == {new_file, registry, runs_file, *resolved}
    finally:
        shutil.rmtree(locked_copy / "results" / NEW, ignore_errors=True)
        new_file.unlink(missing_ok=True)
        registry.write_text(original)
        runs_file.write_text(runs_text)
    assert changed_stages(locked_copy) == set()


def test_each_dataset_downloads_and_prepares_on_its_own():
    """ADE20K rows need no Cityscapes stage (no login), and every profile's data root lies in
    the output folder of its dataset's prepare stage (so a fresh clone re-creates it)."""
    import networkx as nx
    from dvc.repo import Repo

    from dnlrepro.core.config import PROFILES

    with Repo(str(REPO)) as repo:
        graph = repo.index.graph  # edges point from a stage to the stages it depends on
        stages = {s.addressing: s for s in graph.nodes}
        for name in NAMES:
            dataset = load_published().configs[name].dataset
            other = "ade20k" if dataset == "cityscapes" else "cityscapes"
            upstream = {s.addressing for s in nx.descendants(graph, stages[f"evaluate@{name}"])}
            assert {f"download@{dataset}", f"prepare@{dataset}"} <= upstream
            assert not {f"download@{other}", f"prepare@{other}"} & upstream, name
        data_out = {
            d: [o.def_path for o in stages[f"prepare@{d}"].outs if o.def_path.startswith("data/")]
            for d in ("cityscapes", "ade20k")
        }
    for profile in PROFILES:
        for name in NAMES:
            cfg = load_config(name, profile)
            (folder,) = data_out[cfg.data.dataset]
            root = cfg.data.data_root
            assert root == folder or root.startswith(f"{folder}/"), (profile, name, folder)
