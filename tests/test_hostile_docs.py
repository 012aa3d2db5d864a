"""The README and docs/ pages as a newcomer meets them: short, every link reaching a file, every table what the
committed JSON gives; `--version`, and `--help` naming each option's default as the docs do."""
from __future__ import annotations

import argparse
import importlib.util
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README_MAX_LINES = 150  # issue 29's bar
LINK = re.compile(r"\]\(([^)\s]+)\)|<img [^>]*src=\"([^\"]+)\"")


def tables_module():
    spec = importlib.util.spec_from_file_location("docs_tables", ROOT / "docs" / "tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_readme_is_short():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines"


@pytest.mark.parametrize("page", pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_reaches_a_file(page):
    broken = []
    for m in LINK.finditer(page.read_text()):
        target = (m.group(1) or m.group(2)).split("#")[0]
        if not target or re.match(r"[a-z][a-z0-9+.-]*:", target):  # an anchor, or http:, mailto: ...
            continue
        if not (page.parent / target).exists():
            broken.append(target)
    assert not broken, f"{page.name} links to missing files: {broken}"


def test_tables_are_what_the_committed_json_gives():
    done = subprocess.run([sys.executable, "docs/tables.py", "--check"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_every_table_is_on_a_page():
    text = "\n".join(p.read_text() for p in pages())
    missing = [name for name in tables_module().TABLES if f"<!-- table:{name} -->" not in text]
    assert not missing, f"tables no page shows: {missing}"


def test_check_fails_on_a_stale_table_and_the_rewrite_mends_it(tmp_path, monkeypatch):
    """In a copy of the sources the tables read, a figure typed into a page over the generated one is found."""
    tables = tables_module()
    for rel in ("docs", "amnet/core/thresholds.json", "export/scopes"):
        src, dst = ROOT / rel, tmp_path / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.png", "*.mp4"))
        else:
            shutil.copy(src, dst)
    monkeypatch.setattr(tables, "ROOT", tmp_path)
    page = tmp_path / "docs" / "parity.md"
    good = page.read_text()
    limit = tables.load("amnet/core/thresholds.json")["int8"]["face.psnr_min"]
    typed = good.replace(f"| `int8` | face.psnr | ≥ | {limit:g} |", f"| `int8` | face.psnr | ≥ | {limit + 1:g} |")
    assert typed != good
    page.write_text(typed)
    assert tables.main(["--check"]) == 1
    assert page.read_text() == typed  # --check changes nothing
    assert tables.main([]) == 0
    assert page.read_text() == good


def test_version_prints_the_package_version(capsys):
    from amnet.cli.main import main

    try:
        expected = metadata.version("amnet-deploy")
    except metadata.PackageNotFoundError:
        from amnet import __version__ as expected
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"amnet-deploy {expected}"


def test_the_package_has_one_version():
    """pyproject.toml took its version from amnet.__version__, which the artifacts' provenance records."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" in project["project"].get("dynamic", [])
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "amnet.__version__"}


def test_help_names_every_default():
    from amnet.cli.main import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    silent = []
    for name, command in sub.choices.items():
        text = command.format_help()
        for action in command._actions:
            if action.option_strings and action.default not in (None, False, argparse.SUPPRESS):
                if "default" not in (action.help or "").lower():
                    silent.append(f"{name} {action.option_strings[-1]}")
        assert "%(default)" not in text
    assert not silent, f"options whose --help does not name their default: {silent}"
