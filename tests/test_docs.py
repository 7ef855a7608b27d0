"""Docs that are generated from code stay in sync with it."""

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
