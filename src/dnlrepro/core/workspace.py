"""The workspace: the folder a command works in, and every path the project reads or writes.

A workspace is a clone of this repository (or a copy DVC made of one, e.g. by
``dvc exp run --temp``): the folder that holds ``dvc.yaml``. Every path (``params/``, ``data/``,
``downloads/``, ``results/``, ``reports/``, ``work_dirs/``) resolves against it, never against the
installed package, so one interpreter can drive several clones, and a non-editable install works
from any of them.

Which workspace, in order:

1. ``--workspace DIR`` on the command line (the CLI exports it as ``$DNLREPRO_WORKSPACE`` so that
   processes it starts, e.g. torchrun workers, agree);
2. ``$DNLREPRO_WORKSPACE``;
3. the nearest folder at or above the current directory that holds ``dvc.yaml``. DVC runs every
   stage command in the workspace root, also in temporary and queued experiment copies.

``$DVC_ROOT`` is deliberately not used for data and results: in a queued experiment it still names
the parent repository (see docs/pipeline.md, "Experiments"). It is right for the one shared MLflow
store, which :mod:`dnlrepro.track.tracking` places there.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

ENV_VAR = "DNLREPRO_WORKSPACE"
MARKER = "dvc.yaml"


class WorkspaceError(FileNotFoundError):
    """No workspace could be found; the message says where we looked and what to do."""


@dataclass(frozen=True)
class Workspace:
    """A workspace root and the project's folders inside it (all absolute)."""

    root: Path

    @property
    def params_dir(self) -> Path:
        return self.root / "params"

    @property
    def params_yaml(self) -> Path:
        return self.root / "params.yaml"

    @property
    def profiles_file(self) -> Path:
        return self.params_dir / "profiles.yaml"

    @property
    def registry_file(self) -> Path:
        """The rows of the table: names, datasets, published numbers and checkpoints."""
        return self.params_dir / "published.yaml"

    @property
    def runs_file(self) -> Path:
        """The (configuration, seed) runs of the active profile, written by ``dnlrepro profile``."""
        return self.params_dir / "runs.yaml"

    @property
    def baseline_file(self) -> Path:
        return self.params_dir / "smoke_baseline.json"

    @property
    def downloads(self) -> Path:
        return self.root / "downloads"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def results(self) -> Path:
        return self.root / "results"

    @property
    def timings(self) -> Path:
        """Machine-dependent figures (time, memory, fps), kept apart from ``results/``."""
        return self.root / "timings"

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    @property
    def work_dirs(self) -> Path:
        return self.root / "work_dirs"

    def path(self, p: str | Path) -> Path:
        """``p`` itself when absolute, else ``p`` inside the workspace."""
        p = Path(p)
        return p if p.is_absolute() else self.root / p

    def relative(self, p: str | Path) -> str:
        """``p`` relative to the root when it lies inside (for committed files), else absolute."""
        p = Path(p).resolve()
        return str(p.relative_to(self.root)) if p.is_relative_to(self.root) else str(p)


def find(start: str | Path | None = None) -> Workspace:
    """The workspace in force (``$DNLREPRO_WORKSPACE``, else the nearest ``dvc.yaml`` upwards).

    Raises:
        WorkspaceError: the named folder has no ``dvc.yaml``, or none was found upwards.
    """
    named = os.environ.get(ENV_VAR)
    if named:
        return Workspace(_checked_root(named, f"${ENV_VAR} / --workspace"))
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / MARKER).is_file():
            return Workspace(folder)
    raise WorkspaceError(
        f"no dnlrepro workspace at or above {here}: no folder holds {MARKER}. Run the command "
        "inside a clone of the repository, or pass --workspace DIR"
    )


def use(root: str | Path) -> Workspace:
    """Make ``root`` the workspace of this process and of the processes it starts.

    Raises:
        WorkspaceError: ``root`` does not exist or has no ``dvc.yaml`` (nothing is exported).
    """
    checked = _checked_root(root, "--workspace")
    os.environ[ENV_VAR] = str(checked)
    return Workspace(checked)


def _checked_root(named: str | Path, how: str) -> Path:
    root = Path(named).expanduser().resolve()
    if not (root / MARKER).is_file():
        what = f"has no {MARKER}" if root.is_dir() else "does not exist or is not a folder"
        raise WorkspaceError(
            f"{how} names {root}, which {what}; point it at a clone of the dnlrepro repository"
        )
    return root
