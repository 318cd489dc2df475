"""Table rendering against golden files (tests/golden/); regenerate with UPDATE_GOLDEN=1."""

from __future__ import annotations

import json
import os
from pathlib import Path

import jinja2
import pytest

from dnlrepro.core.profile import load_profile
from dnlrepro.core.registry import load_published, names_of
from dnlrepro.reports import tables
from dnlrepro.reports.outputs import ReportWriteError
from dnlrepro.reports.results import load_measured

CITYSCAPES_CONFIGS, ADE20K_CONFIGS = names_of("cityscapes"), names_of("ade20k")

GOLDEN = Path(__file__).parent / "golden"
DESCRIPTION = "Fixture profile for the golden tables:\n  wrapped text is joined."


def fake_results(root: Path) -> None:
    """Numbers for some rows only (``root/results``, ``root/timings``): the others must render
    as '-' (never published values)."""
    rows = {
        CITYSCAPES_CONFIGS[0]: (78.123, None, 7.25, 2.5),  # no ms+flip, Mem rounds to 1 decimal
        CITYSCAPES_CONFIGS[2]: (78.4, 80.3, None, 1.456),  # no Mem (CPU run)
        ADE20K_CONFIGS[1]: (43.76, 44.9, 12.8, 12.54),
    }
    for name, (miou, ms, mem, fps) in rows.items():
        d, t = root / "results" / name, root / "timings" / name
        d.mkdir(parents=True)
        t.mkdir(parents=True)
        (d / "eval.json").write_text(
            json.dumps(
                {
                    "single_scale": {
                        "mIoU": miou,
                        "mAcc": 1.0,
                        "aAcc": 2.0,
                        "majority_baseline": {"class": "road", "mIoU": 2.25},
                    },
                    "ms_flip": None if ms is None else {"mIoU": ms, "mAcc": 1.0, "aAcc": 2.0},
                    "protocol": {},
                }
            )
        )
        # layouts: the published 4 x 2, the same protocol on 1 GPU, another protocol (1 x 4)
        layout = {0: ("4x2", 8), 2: ("1x8", 8)}.get(list(rows).index(name), ("1x4", 4))
        train = {"iterations": 40000, "layout": layout[0], "global_batch": layout[1]}
        (d / "train_summary.json").write_text(json.dumps({**train, "bn_group": layout[1]}))
        timing = {"max_memory_gb": mem, "memory_kind": "cuda_max_memory_allocated"}
        (t / "train.json").write_text(json.dumps(timing))
        bench = {"fps": fps, "device": "cuda", "device_name": "Test GPU"}
        (t / "benchmark.json").write_text(json.dumps(bench))


@pytest.mark.parametrize("dataset", ["cityscapes", "ade20k"])
def test_tables_match_golden(tmp_path: Path, dataset: str):
    fake_results(tmp_path)
    names = names_of(dataset)
    measured = {n: load_measured(n, tmp_path / "results") for n in names}
    text = tables.render(dataset, names, load_published(), measured, "paper", DESCRIPTION)
    golden = GOLDEN / f"{dataset}.md"
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_text(text, encoding="utf-8")
    assert text == golden.read_text(encoding="utf-8")


def test_table_rows_follow_the_readme_order_and_never_copy_published_numbers(tmp_path: Path):
    text = tables.render(
        "cityscapes",
        CITYSCAPES_CONFIGS,
        load_published(),
        {n: load_measured(n, tmp_path) for n in CITYSCAPES_CONFIGS},
        "smoke",
        "d",
    )
    body = [line for line in text.splitlines() if line.startswith("| DNL")]
    assert len(body) == 8
    assert [line.split("|")[10].strip() for line in body] == [
        f"[config](../params/{n}.yaml)" for n in CITYSCAPES_CONFIGS
    ]
    assert "78.61" not in text and "7.3 " not in text  # published values stay in diff.md
    assert "Profile: `smoke`" in text


def test_write_tables_writes_both_files(tmp_path: Path):
    fake_results(tmp_path)
    written = tables.write_tables(
        tmp_path / "reports", tmp_path / "results", load_published(), load_profile("smoke")
    )
    assert [p.name for p in written] == [
        "cityscapes.md",
        "ade20k.md",
        "published_vs_reproduced.csv",
    ]
    ade = written[1].read_text()
    assert sum(line.startswith("| DNL") for line in ade.splitlines()) == len(ADE20K_CONFIGS)
    # smoke ran other sizes: shown beside the paper's, and mIoU beside the constant baseline
    row = next(line for line in ade.splitlines() if ADE20K_CONFIGS[1] in line)
    assert "64x64 (paper 512x512)" in row and "43.76 (const. 2.25)" in row
    csv_rows = written[2].read_text().splitlines()
    assert csv_rows[0] == "config,dataset,metric,published,reproduced"
    assert f"{ADE20K_CONFIGS[1]},ade20k,mIoU_ms_flip," in "\n".join(csv_rows)


def test_template_variables_are_strict():
    env = tables.environment()
    with pytest.raises(jinja2.UndefinedError):
        env.get_template("table.md.j2").render(title="x")


def test_tables_are_written_as_a_set(tmp_path: Path):
    """A report that cannot be written (a folder in its place, which stops root too) leaves the
    previous tables as they were, and no temporary behind."""
    fake_results(tmp_path)
    out = tmp_path / "reports"
    out.mkdir()
    for name in ("cityscapes.md", "ade20k.md"):
        (out / name).write_text("previous\n")
    (out / "published_vs_reproduced.csv").mkdir()
    with pytest.raises(ReportWriteError, match=r"could not write .*published_vs_reproduced\.csv"):
        tables.write_tables(out, tmp_path / "results", load_published(), load_profile("smoke"))
    assert [(out / n).read_text() for n in ("cityscapes.md", "ade20k.md")] == ["previous\n"] * 2
    assert sorted(p.name for p in out.iterdir()) == [
        "ade20k.md",
        "cityscapes.md",
        "published_vs_reproduced.csv",
    ]
