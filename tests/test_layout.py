"""The test tree mirrors the package: every folder tests/<a>/<b> names a subpackage or module
src/darkknowledge/<a>/<b>; test files have unique basenames; no test module imports another
(fixtures live in conftest.py, shared helpers in support.py)."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent
PACKAGE = TESTS.parent / "src" / "darkknowledge"


def _folders(tests: Path) -> list[Path]:
    return sorted(
        p.relative_to(tests)
        for p in tests.rglob("*")
        if p.is_dir() and not any(part.startswith((".", "__")) for part in p.relative_to(tests).parts)
    )


def unmirrored_folders(tests: Path, package: Path) -> list[str]:
    """Folders under ``tests`` with no subpackage or module of the same path in ``package``."""
    return [
        str(rel)
        for rel in _folders(tests)
        if not (package / rel).is_dir() and not (package / rel).with_suffix(".py").is_file()
    ]


def _is_test_module(name: str) -> bool:
    stem = name.rsplit(".", 1)[-1]
    return stem.startswith("test_") or stem.endswith("_test")


def _python_files(tests: Path) -> list[Path]:
    return sorted(p for p in tests.rglob("*.py") if "__pycache__" not in p.parts)


def imports_of_test_modules(tests: Path) -> list[str]:
    """``file: module`` for every import of a test module by a file under ``tests``."""
    found = []
    for path in _python_files(tests):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                # ``from . import test_x`` names the module in the alias; ``from test_x import y`` in node.module
                names = [node.module] if node.module else [alias.name for alias in node.names]
            else:
                continue
            found += [f"{path.relative_to(tests)}: {name}" for name in names if _is_test_module(name)]
    return found


def duplicate_basenames(tests: Path) -> list[str]:
    """Basenames of test files that occur more than once (they would shadow each other on import)."""
    seen: dict[str, list[str]] = {}
    for path in _python_files(tests):
        if _is_test_module(path.stem):
            seen.setdefault(path.name, []).append(str(path.relative_to(tests)))
    return [f"{name}: {', '.join(paths)}" for name, paths in sorted(seen.items()) if len(paths) > 1]


# -- the repository --------------------------------------------------------------------


def test_test_folders_mirror_the_package():
    assert PACKAGE.is_dir()
    assert unmirrored_folders(TESTS, PACKAGE) == []


def test_no_test_module_imports_another():
    assert imports_of_test_modules(TESTS) == []


def test_test_file_basenames_are_unique():
    assert duplicate_basenames(TESTS) == []


# -- the checks themselves find what they look for ------------------------------------


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


def test_checks_catch_a_broken_layout(tmp_path):
    package, tests = tmp_path / "pkg", tmp_path / "tests"
    _write(package, {"engine/__init__.py": "", "engine/cache.py": "", "plugins.py": ""})
    _write(
        tests,
        {
            "conftest.py": "",
            "engine/test_cache.py": "from support import FAST\n",
            "engine/cache/test_build.py": "",  # mirrors the module engine/cache.py
            "plugins/example.py": "",  # mirrors the module plugins.py
            "engines/test_trainer.py": "import test_cache\n",  # no such subpackage; imports a test module
            "data/test_cache.py": "from engine.test_cache import helper\n",  # duplicate basename; test import
            "methods/test_kd.py": "from . import test_dkd\nimport os\n",
        },
    )
    assert unmirrored_folders(tests, package) == ["data", "engines", "methods"]
    assert imports_of_test_modules(tests) == [
        "data/test_cache.py: engine.test_cache",
        "engines/test_trainer.py: test_cache",
        "methods/test_kd.py: test_dkd",
    ]
    assert duplicate_basenames(tests) == ["test_cache.py: data/test_cache.py, engine/test_cache.py"]


def test_no_module_imports_conftest_by_name():
    """With a conftest.py per folder, ``conftest`` names whichever pytest imported last: helpers
    that test modules import live in ``support.py``."""
    offenders = [
        str(path.relative_to(TESTS))
        for path in _python_files(TESTS)
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path)))
        if isinstance(node, ast.ImportFrom)
        and node.module == "conftest"
        or isinstance(node, ast.Import)
        and any(a.name == "conftest" for a in node.names)
    ]
    assert offenders == []
