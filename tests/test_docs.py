"""The docs cannot go stale silently: the settings reference is what its generator writes from the
Settings model, every relative link in the README and docs/ points at a file (and heading) that exists,
and the README stays a five-minute read."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README_MAX_LINES = 220
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
_FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def _generator():
    spec = importlib.util.spec_from_file_location("gen_settings", DOCS / "gen_settings.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_settings_reference_is_generated_from_the_model():
    committed = (DOCS / "settings.md").read_text()
    assert committed == _generator().render(), "docs/settings.md is stale: run .venv/bin/python docs/gen_settings.py"


def test_settings_reference_names_every_field_and_its_variable():
    from tasks.core.settings import Settings

    text = (DOCS / "settings.md").read_text()
    for section, info in Settings.model_fields.items():
        for name in info.annotation.model_fields:
            assert f"`{section}.{name}`" in text
            assert f"`CHAINSIGNAL_{section.upper()}__{name.upper()}`" in text


def test_meaning_comes_from_the_source_comment():
    notes, titles = _generator()._field_notes(
        "# ------------ a ruler\n"
        "class S:\n"
        "    # above,\n"
        "    # two lines\n"
        "    x: int = 1  # trailing\n"
        "\n"
        "    y: dict[str, int] = {\n"
        "        'a': 1,\n"
        "    }  # on the last line\n"
        "    z: int = 3\n"
    )
    assert titles == {"S": "a ruler"}
    assert notes["S"]["x"] == {"meaning": "above, two lines trailing", "annotation": "int"}
    assert notes["S"]["y"]["meaning"] == "on the last line"
    assert notes["S"]["z"]["meaning"] == ""


def _anchors(page: Path) -> set[str]:
    """The heading anchors GitHub (and mkdocs' toc) give a page: lowercase, punctuation dropped, spaces to dashes."""
    headings = re.findall(r"^#+ (.*)$", _FENCE.sub("", page.read_text()), re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def _pages() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]


@pytest.mark.parametrize("page", _pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page: Path):
    text = _FENCE.sub("", page.read_text())
    broken = []
    for target in _LINK.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # a URL or an anchor on the same page
        path, _, anchor = target.partition("#")
        linked = page.parent / path if path else page
        if not linked.exists():
            broken.append(target)
        elif anchor and linked.suffix == ".md" and anchor not in _anchors(linked):
            broken.append(target)
    assert not broken, f"{page.relative_to(ROOT)} links to missing files: {broken}"


def test_readme_is_a_five_minute_read():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) < README_MAX_LINES, f"README.md has {len(lines)} lines: move detail into docs/"


def test_mkdocs_nav_lists_every_page():
    nav = (ROOT / "mkdocs.yml").read_text()
    listed = set(re.findall(r":\s*([\w-]+\.md)\s*$", nav, re.M))
    assert listed == {p.name for p in DOCS.glob("*.md")}
