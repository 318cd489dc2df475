"""Shared pytest set-up: tests never write to the project's own MLflow database."""

from __future__ import annotations

import http.server
import os
import shutil
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(autouse=True, scope="session")
def _isolated_mlflow(tmp_path_factory: pytest.TempPathFactory):
    """Point MLflow at a per-session sqlite file unless a test sets its own URI."""
    db = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    old = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{db}"
    yield
    if old is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = old


@pytest.fixture(autouse=True, scope="module")
def _module_scratch_removed(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
):
    """Delete the temporary folders a test module made once it ends without a failure.

    Module fixtures here hold whole workspace copies with 200-400 MB checkpoints; pytest keeps
    ``tmp_path_factory`` folders until the session ends, so one session once held 16 GB and a
    checkpoint write near its end ran out of disk. With this and ``tmp_path_retention_policy =
    "failed"`` (pyproject.toml) only a failing module's or test's folders stay, for inspection.
    """
    base = tmp_path_factory.getbasetemp()
    before = set(base.iterdir())
    failed = request.session.testsfailed
    yield
    if request.session.testsfailed == failed:
        for path in set(base.iterdir()) - before:
            shutil.rmtree(path, ignore_errors=True)


@pytest.fixture()
def http_dir(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A folder the test fills, served over HTTP on 127.0.0.1 (tests have no internet)."""
    root = tmp_path / "served"
    root.mkdir()
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture(scope="session")
def clone_repo():
    """Factory ``clone(dest, git=False) -> dest``: a copy of this checkout, as a clone would be.

    Copies the files git tracks plus the untracked files it does not ignore (so uncommitted work
    is included), never ignored build outputs (``.venv``, ``data/``, ``downloads/``, caches).
    ``git=True`` makes the copy a git repository with one commit (what ``dvc exp`` needs);
    otherwise DVC is told there is no SCM (``core.no_scm``).
    """
    import subprocess

    repo = Path(__file__).resolve().parents[1]
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=repo,
        capture_output=True,
        check=False,
    )
    if listed.returncode != 0:
        pytest.skip(f"{repo} is not a git checkout: {listed.stderr.decode().strip()}")
    files = sorted({f for f in listed.stdout.decode().split("\0") if (repo / f).is_file()})

    def clone(dest: Path, *, git: bool = False) -> Path:
        dest.mkdir(parents=True, exist_ok=True)
        for f in files:
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(repo / f, dest / f)
        if git:
            for cmd in (
                ["git", "init", "-q", "-b", "main"],
                ["git", "config", "user.name", "dnlrepro tests"],
                ["git", "config", "user.email", "tests@dnlrepro.invalid"],
                ["git", "add", "-A"],
                ["git", "commit", "-q", "--no-verify", "-m", "clone"],
            ):
                subprocess.run(cmd, cwd=dest, check=True, capture_output=True)
        else:
            config = dest / ".dvc" / "config"
            text = config.read_text(encoding="utf-8") if config.is_file() else ""
            if "[core]\n" in text:
                text = text.replace("[core]\n", "[core]\n    no_scm = true\n", 1)
            else:
                text += "[core]\n    no_scm = true\n"
            config.parent.mkdir(exist_ok=True)
            config.write_text(text, encoding="utf-8")
        return dest

    return clone


@pytest.fixture(scope="session")
def shrink_smoke():
    """Factory ``shrink(root, train, val)``: a smaller smoke profile in the copy ``root``.

    ``train``/``val`` synthetic images per dataset, 1 training iteration, ms+flip over 2 ratios,
    3 timed images: the whole DAG's code paths at a fraction of the committed profile's CPU time.
    """
    import yaml

    def shrink(root: Path, *, train: int, val: int) -> None:
        """... and one seed per row (params/runs.yaml rewritten; rewrite it again with
        ``write_runs`` after editing the registry)."""
        path = root / "params" / "profiles.yaml"
        profiles = yaml.safe_load(path.read_text())
        smoke = profiles["smoke"]
        one_iteration = {
            "schedule.max_iters": 1,
            "schedule.checkpoint_interval": 1,
            "schedule.eval_interval": 1,
            # ms+flip over 2 ratios instead of 6: a third of the evaluation time; the
            # 6-ratio protocol has its own tests (test_evaluate_msflip.py, the rehearsals)
            "test.ms_ratios": [0.5, 1.0],
        }
        smoke["overrides"].append({"match": "*", "set": one_iteration})
        for dataset, batch in (("cityscapes", 2), ("ade20k", 4)):
            # the loader drops an epoch's last partial batch, as mmseg's (needs >= one batch)
            smoke["miniature"]["counts"][dataset] = [max(train, batch), val]
        smoke["settings"]["benchmark"] = {"num_images": 3, "warmup": 1, "train_iters": 0}
        smoke["settings"]["learned_factor"] = None  # one iteration learns nothing
        smoke["seeds"] = [{"match": "*", "seeds": [0]}]
        path.write_text(yaml.safe_dump(profiles, sort_keys=False))
        write_runs(root)

    return shrink


def write_runs(root: Path) -> None:
    """``params/runs.yaml`` of the copy ``root`` for its ``params.yaml`` profile, as
    ``dnlrepro profile`` writes it (after a test edited the copy's registry or seeds)."""
    from dnlrepro.core import runs
    from dnlrepro.core.profile import read_params
    from dnlrepro.core.workspace import Workspace

    ws = Workspace(root.resolve())
    runs.write(ws, read_params(ws))


def keep_rows(repo: Path, names: tuple[str, ...]) -> None:
    """The copy's registry lists only ``names`` of the checkout's rows (in README order); the
    rest of the file stays."""
    import yaml

    path = repo / "params" / "published.yaml"
    registry = yaml.safe_load(
        (Path(__file__).resolve().parents[1] / path.relative_to(repo)).read_text()
    )
    assert set(names) <= set(registry["configs"])
    registry["configs"] = {n: row for n, row in registry["configs"].items() if n in names}
    path.write_text(yaml.safe_dump(registry, sort_keys=False))
    write_runs(repo)  # as `dnlrepro profile smoke` would
