"""``dnlrepro`` command line: one subcommand per job, each implemented next to its logic.

The table below is the whole dispatch: a plain dict from subcommand to the module that owns it.
Each module exposes ``add_arguments(parser)`` and ``main(args) -> int``. Modules are imported
only when their subcommand runs, so ``dnlrepro --help`` stays fast (torch and mlflow are heavy).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from dnlrepro.core.errors import run_reporting

# subcommand -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "profile": (
        "dnlrepro.tools.profile",
        "switch the pipeline's profile (params.yaml, params/runs.yaml, each run's resolved files)",
    ),
    "show-config": (
        "dnlrepro.tools.show_config",
        "print a resolved configuration (profile applied)",
    ),
    "download": (
        "dnlrepro.acquire.download",
        "download (or link local copies of) datasets and weights",
    ),
    "synth": (
        "dnlrepro.acquire.synth",
        "write synthetic Cityscapes/ADE20K archives in the real formats",
    ),
    "prepare": (
        "dnlrepro.acquire.prepare",
        "extract, convert and validate a dataset; write a manifest",
    ),
    "train": ("dnlrepro.engine.train", "train one configuration (single process or torchrun)"),
    "evaluate": ("dnlrepro.tools.evaluate", "mIoU/mAcc/aAcc, single-scale and ms+flip"),
    "predict": ("dnlrepro.tools.predict", "label maps (and colour overlays) for images"),
    "benchmark": (
        "dnlrepro.tools.benchmark",
        "inference fps and training memory as mmseg defines them",
    ),
    "mlflow-init": ("dnlrepro.track.tracking", "create/migrate the MLflow database once"),
    "tables": ("dnlrepro.reports.tables", "render reports/cityscapes.md and reports/ade20k.md"),
    "diff": ("dnlrepro.reports.diff", "compare reproduced numbers with the published ones"),
    "report": ("dnlrepro.reports.html", "render reports/index.html: tables, verdicts, plots"),
    "check": ("dnlrepro.reports.check", "exit non-zero when any verdict in diff.json fails"),
    "launch": ("dnlrepro.launch.local", "run train/evaluate stages in parallel, one per GPU"),
    "rehearse": ("dnlrepro.rehearse.run", "every stage of paper/published, in miniature"),
    "reflog": ("dnlrepro.tools.reflog", "record a reference training log; the published runs"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dnlrepro",
        description="Reproduce the DNLNet rows of the mmseg model zoo.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument(
        "--workspace",
        default=None,
        metavar="DIR",
        help="the clone to work in (default: the nearest folder with dvc.yaml at or above the "
        "current directory); params, data, results and reports resolve against it",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_module, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    # Parse only the global part first; the subcommand's own parser handles the rest.
    known, rest = parser.parse_known_args(argv)
    if known.command is None:
        parser.print_help()
        return 2
    if known.workspace is not None:
        from dnlrepro.core import workspace

        try:
            workspace.use(known.workspace)  # exported, so torchrun workers and stages agree
        except workspace.WorkspaceError as e:
            print(f"dnlrepro: error: {e}", file=sys.stderr)
            return 1
    module_name, help_text = COMMANDS[known.command]
    module = importlib.import_module(module_name)
    sub = argparse.ArgumentParser(prog=f"dnlrepro {known.command}", description=help_text)
    module.add_arguments(sub)
    args = sub.parse_args(rest)
    logging.basicConfig(
        level=logging.DEBUG if known.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    return run_reporting(f"dnlrepro {known.command}", lambda: module.main(args), known.verbose)


if __name__ == "__main__":
    sys.exit(main())
