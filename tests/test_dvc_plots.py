"""``dvc plots show`` renders offline: the repository's HTML template carries vega, vega-lite and
vega-embed (vendor/vega/), and ``dvc_plots/`` is not a file git would commit."""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from test_reports_html import BROWSER_FLAGS, CHROMEDRIVER, CHROMIUM, browser_or_skip

REPO = Path(__file__).resolve().parents[1]
DVC = Path(sys.executable).with_name("dvc")
VENDORED = {"vega": "5.20.2", "vega-lite": "5.2.0", "vega-embed": "6.18.2"}


def test_template_is_configured_and_self_contained() -> None:
    config = (REPO / ".dvc" / "config").read_text(encoding="utf-8")
    (path,) = re.findall(r"^\s*html_template\s*=\s*(\S+)\s*$", config, re.M)
    template = (REPO / ".dvc" / path).resolve()  # DVC reads it relative to .dvc/
    assert template == REPO / "vendor" / "vega" / "template.html"
    page = template.read_text(encoding="utf-8")
    assert "{plot_divs}" in page and "{scripts}" not in page  # no CDN tags added by DVC
    packages = re.findall(r'<script data-package="([^"@]+)@([^"]+)">', page)
    assert dict(packages) == VENDORED
    assert not re.search(r"<script[^>]+src=", page)
    readme = (REPO / "vendor" / "vega" / "README.md").read_text(encoding="utf-8")
    for name, version in VENDORED.items():
        assert f"| {version} |" in readme
        licence = (REPO / "vendor" / "vega" / f"LICENSE-{name}.txt").read_text(encoding="utf-8")
        assert "Redistribution and use in source and binary forms" in licence  # BSD-3-Clause


def test_dvc_plots_output_is_ignored() -> None:
    found = subprocess.run(
        ["git", "check-ignore", "-q", "dvc_plots/index.html"], cwd=REPO, check=False
    )
    assert found.returncode == 0, "dvc_plots/ must be in .gitignore"


@pytest.mark.slow
def test_plots_render_in_headless_chromium_without_network(tmp_path: Path, clone_repo) -> None:
    webdriver = browser_or_skip()
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    root = clone_repo(tmp_path / "clone", git=True)  # the committed results/ hold the plots
    shown = subprocess.run(
        [str(DVC), "plots", "show"], cwd=root, capture_output=True, text=True, check=False
    )
    assert shown.returncode == 0, shown.stderr
    page = root / "dvc_plots" / "index.html"
    html = page.read_text(encoding="utf-8")
    assert "cdn.jsdelivr.net" not in html and "<script src=" not in html
    expected = len(re.findall(r"vegaEmbed\('#", html))  # one call per plot
    assert expected >= 4  # a run's training, lr and validation curves and per-class IoU

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    # every request that leaves the machine fails: the page has to render from the file alone
    offline = ("--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>")
    for flag in (*BROWSER_FLAGS, *offline, f"--user-data-dir={tempfile.mkdtemp(dir=tmp_path)}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    start = time.monotonic()
    try:
        driver.get(page.as_uri())
        # vega-embed draws on a canvas: count the canvases that hold more than a blank image
        drawn = (
            "return [...document.querySelectorAll('.vega-embed canvas')].filter(c => c.width > 50"
            " && c.toDataURL().length > 5000).length"
        )
        WebDriverWait(driver, 60).until(lambda d: d.execute_script(drawn) >= expected)
        assert len(driver.find_elements(By.CSS_SELECTOR, ".vega-embed")) == expected
        severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert not severe, f"console errors: {severe[:3]}"
    finally:
        driver.quit()
    assert time.monotonic() - start < 90
