"""Write template.html: DVC's plots page with vega, vega-lite and vega-embed inlined.

`dvc plots show` fills an HTML template (``plots.html_template`` in .dvc/config) and, by
default, loads the three libraries from a CDN, so the page is blank offline. This template has
no ``{scripts}`` placeholder (DVC then adds no CDN tags) and carries the libraries itself.

Run from anywhere with Python 3 (stdlib only; it needs the npm registry):
    python vendor/vega/build_template.py
The versions are the ones DVC's renderer asks the CDN for (dvc_render/vega.py); the tarballs
are checked against the sha256 below before anything is written. See README.md.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
REGISTRY = "https://registry.npmjs.org"
# package -> (version, file inside the tarball, sha256 of the tarball)
PACKAGES = {
    "vega": (
        "5.20.2",
        "package/build/vega.min.js",
        "d77deab01d6104b1239228720721f93003e60797d2faced7ffdd759fa70f989d",
    ),
    "vega-lite": (
        "5.2.0",
        "package/build/vega-lite.min.js",
        "f64ca4745f043447ac86b67dc9e9592ec2b85ac8b8dafc35faf970f142463e4b",
    ),
    "vega-embed": (
        "6.18.2",
        "package/build/vega-embed.min.js",
        "93aeee312e92077b0252ef026c0fe0ec8fa430c19825aeada6cd3a6804e68e1b",
    ),
}
PAGE = """<!DOCTYPE html>
<!-- DVC plots template of this repository (.dvc/config: plots.html_template), written by
     vendor/vega/build_template.py. Inlined, so that the page works offline: VERSIONS
     (BSD-3-Clause, vendor/vega/README.md). -->
<html>
<head>
    <meta charset="utf-8">
    {refresh_tag}
    <title>DVC plots (dnlrepro)</title>
SCRIPTS
    <style>
        body { font-family: system-ui, sans-serif; margin: 1rem; }
        table { border-spacing: 15px; }
    </style>
</head>
<body>
    {plot_divs}
</body>
</html>
"""


def fetch(name: str, version: str, member: str, sha256: str) -> tuple[str, str]:
    """(the minified script, the package's LICENSE) of ``name@version``, verified."""
    url = f"{REGISTRY}/{name}/-/{name}-{version}.tgz"
    with urllib.request.urlopen(url, timeout=120) as response:
        data = response.read()
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
        raise SystemExit(f"{url}: sha256 {digest}, expected {sha256}; nothing written")
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        script = tar.extractfile(member).read().decode("utf-8")
        licence = tar.extractfile("package/LICENSE").read().decode("utf-8")
    if "</script" in script.lower() or "{plot_divs}" in script or "{refresh_tag}" in script:
        raise SystemExit(f"{url}: {member} cannot be inlined into the template as is")
    return script, licence


def main() -> None:
    scripts, versions = [], []
    for name, (version, member, sha256) in PACKAGES.items():
        script, licence = fetch(name, version, member, sha256)
        (HERE / f"LICENSE-{name}.txt").write_text(licence, encoding="utf-8")
        scripts.append(f'    <script data-package="{name}@{version}">{script}</script>')
        versions.append(f"{name} {version}")
    # str.replace, not str.format: the scripts are full of braces, and DVC fills {plot_divs}
    page = PAGE.replace("VERSIONS", ", ".join(versions)).replace("SCRIPTS", "\n".join(scripts))
    (HERE / "template.html").write_text(page, encoding="utf-8")
    print(f"wrote {HERE / 'template.html'} ({', '.join(versions)})")


if __name__ == "__main__":
    main()
