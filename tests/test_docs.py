"""Docs that are generated from code stay in sync with it; links between them resolve."""

import re
from pathlib import Path

from darkknowledge.config import config_reference_markdown

ROOT = Path(__file__).resolve().parents[1]


def test_config_reference_is_up_to_date():
    """docs/config.md lists every config key and method parameter with its default;
    regenerate with `python -m darkknowledge.config > docs/config.md`."""
    assert (ROOT / "docs" / "config.md").read_text() == config_reference_markdown() + "\n"


def test_readme_names_the_two_commands_and_every_subcommand():
    from darkknowledge.cli.main import COMMANDS

    readme = (ROOT / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme
    for name in COMMANDS:
        assert f"darkknowledge {name}" in readme, name


def heading_anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives a page's headings: lower case, punctuation dropped, spaces as
    hyphens; a repeated heading gets -1, -2, ... Fenced code is not searched."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    for line in re.sub(r"```.*?```", "", markdown, flags=re.S).splitlines():
        heading = re.match(r"#{1,6}\s+(.*)", line)
        if heading:
            slug = re.sub(r"[^\w\- ]", "", heading.group(1).strip().lower()).replace(" ", "-")
            found.add(f"{slug}-{seen[slug]}" if slug in seen else slug)
            seen[slug] = seen.get(slug, 0) + 1
    return found


def broken_links(pages: list[Path], root: Path) -> list[str]:
    """``page: target`` for every relative link to a missing file or to a missing heading of a page."""
    broken = []
    for page in pages:
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):  # https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            dest = page.parent / path if path else page
            if not dest.exists() or (
                anchor and dest.suffix == ".md" and anchor not in heading_anchors(dest.read_text())
            ):
                broken.append(f"{page.relative_to(root)}: {target}")
    return broken


def test_links_in_the_readme_and_docs_resolve():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    assert broken_links(pages, ROOT) == []


def test_broken_links_are_found(tmp_path):
    page = tmp_path / "a.md"
    (tmp_path / "b.md").write_text("# Speed and memory (`bench --lm`)\n## Notes\n## Notes\n")
    page.write_text(
        "[ok](b.md#speed-and-memory-bench---lm) [ok](b.md#notes-1) [ok](https://x.org/y#z) [self](#top)\n# Top\n"
        "[gone](c.md) [no heading](b.md#speed) [third](b.md#notes-2)\n```\n[in code](d.md)\n```\n"
    )
    assert broken_links([page], tmp_path) == ["a.md: c.md", "a.md: b.md#speed", "a.md: b.md#notes-2"]
