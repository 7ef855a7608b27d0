"""Users' own methods, models and datasets, registered without editing the package.

A plugin is a Python module that registers on import (``@register_method``,
``@register_model(name)``, ``DATASETS.add(name, reader)``). It is found through

* the entry point groups ``darkknowledge.methods``, ``darkknowledge.models`` and
  ``darkknowledge.datasets`` of installed packages (each entry names a module, or a
  function called with no arguments);
* ``darkknowledge --plugin MODULE`` (repeatable), which also puts the module in the
  environment variable below, so that worker processes load it too;
* the environment variable ``DARKKNOWLEDGE_PLUGINS``: module names, comma-separated.

Plugins are loaded once per process, the first time a registry is listed or asked for a
name it does not have (so also in sweep workers), or explicitly by :func:`load_plugins`.
Worked example: docs/plugins.md.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterable
from importlib.metadata import entry_points
from types import ModuleType

from darkknowledge.errors import UserError

GROUPS = ("darkknowledge.methods", "darkknowledge.models", "darkknowledge.datasets")
ENV_VAR = "DARKKNOWLEDGE_PLUGINS"

_loaded: set[str] = set()
_discovered = False


def _env_modules() -> list[str]:
    return [m.strip() for m in os.environ.get(ENV_VAR, "").split(",") if m.strip()]


def _import(module: str, where: str) -> None:
    if module in _loaded:
        return
    if not module.strip() or not all(part.isidentifier() for part in module.split(".")):
        raise UserError(
            f"plugin {module!r} ({where}) is not a Python module name (dotted identifiers, e.g. my_pkg.dk_plugin)"
        )
    _loaded.add(module)
    try:
        importlib.import_module(module)
    except ImportError as exc:
        raise UserError(
            f"plugin {module!r} ({where}) cannot be imported: {exc}; install it or fix the module name"
        ) from None


def load_plugins(modules: Iterable[str] = ()) -> None:
    """Import the plugin ``modules`` (adding them to ``DARKKNOWLEDGE_PLUGINS`` for child
    processes), then, once per process, every entry point and module of the variable."""
    global _discovered
    modules = list(modules)
    if modules:
        os.environ[ENV_VAR] = ",".join(dict.fromkeys(_env_modules() + modules))
    for module in modules:
        _import(module, "--plugin")
    if _discovered:
        return
    _discovered = True
    for module in _env_modules():
        _import(module, ENV_VAR)
    for group in GROUPS:
        for ep in entry_points(group=group):
            key = f"{group}:{ep.name}"
            if key in _loaded:
                continue
            _loaded.add(key)
            try:
                target = ep.load()
            except ImportError as exc:
                raise UserError(
                    f"plugin entry point {ep.name!r} ({group} = {ep.value}) cannot be loaded: {exc}; "
                    "reinstall the package that declares it"
                ) from None
            if callable(target) and not isinstance(target, (ModuleType, type)):
                target()
