"""The repository is self-contained: every reference it makes can be followed from a clone."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO / "docs" / "reference.md"
SECTION = re.compile(r"§(\d+(?:\.\d+)?)")


def tracked_text_files() -> dict[str, str]:
    try:
        out = subprocess.run(
            ["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    texts = {}
    for rel in out.splitlines():
        path = REPO / rel
        if path.suffix in {".pth", ".png", ".jpg", ".zip", ".db"} or not path.is_file():
            continue
        try:
            texts[rel] = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
    return texts


def test_no_tracked_file_points_outside_the_repository():
    offenders = [
        f"{rel}:{i}: {line.strip()}"
        for rel, text in tracked_text_files().items()
        if rel != "tests/test_docs.py"
        for i, line in enumerate(text.splitlines(), 1)
        if "../shared" in line or "shared/spec" in line or "fact sheet" in line.lower()
    ]
    assert not offenders, "references to a document outside the repository:\n" + "\n".join(
        offenders[:20]
    )


def test_every_section_reference_exists_in_the_reference_doc():
    headings = set()
    for line in REFERENCE.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            headings.update(SECTION.findall(line))
    used: dict[str, str] = {}
    for rel, text in tracked_text_files().items():
        for number in SECTION.findall(text):
            used.setdefault(number.rstrip("."), rel)
    missing = {n: rel for n, rel in used.items() if n not in headings}
    assert not missing, f"§ numbers with no heading in docs/reference.md: {missing}"
