"""The dashboard's static files: shipped in the wheel, and nothing inline that the
Content-Security-Policy would block."""

from __future__ import annotations

import fnmatch
import re
import tomllib
from pathlib import Path

from worker.ops.dashboard import load_static

STATIC = Path(__file__).resolve().parents[2] / "worker" / "ops" / "static"


def test_every_static_file_is_package_data_and_served() -> None:
    """pyproject.toml's package data takes every file of worker/ops/static, and the API loads
    each of them (a new file that the wheel would leave out fails here)."""
    pyproject = tomllib.loads((STATIC.parents[2] / "pyproject.toml").read_text())
    setuptools = pyproject["tool"]["setuptools"]
    assert "worker.ops.static" in setuptools["packages"]
    globs = setuptools["package-data"]["worker.ops.static"]
    files = sorted(p.name for p in STATIC.iterdir() if p.name != "__pycache__")
    assert files
    for name in files:
        assert any(fnmatch.fnmatch(name, g) for g in globs), name
    assert sorted(load_static()) == files


def test_the_pages_have_no_inline_script_or_style() -> None:
    """Every script and stylesheet is a file ('self'): no inline <script>, <style>, style=
    attribute or on* handler, which the CSP refuses."""
    for page in STATIC.glob("*.html"):
        html = page.read_text()
        scripts = re.findall(r"<script\b[^>]*>", html)
        assert scripts, page.name
        assert all('src="/static/' in s for s in scripts), page.name
        assert "<style" not in html, page.name
        assert not re.search(r"\sstyle=", html), page.name
        assert not re.search(r"\son[a-z]+=", html), page.name


def test_the_script_never_writes_html_from_data() -> None:
    """Values reach the page as text (textContent), never parsed as HTML."""
    for script in STATIC.glob("*.js"):
        code = script.read_text()
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
            assert sink not in code, f"{script.name}: {sink}"
