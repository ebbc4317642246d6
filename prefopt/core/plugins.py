"""Plugins: packages of a higher layer that register themselves into registries of lower layers.

The ground-truth world, for example, registers its data source (``source: world``) with
:mod:`prefopt.data.registry` and its model names (``world:<task>``) with :mod:`prefopt.model.loading`.
A lower layer never imports the world; when a name it does not know may come from a plugin, its
registry calls :func:`load_plugin`, which imports the plugin's package by name (:mod:`importlib`).
"""

from __future__ import annotations

import importlib

PLUGINS: dict[str, str] = {"world": "prefopt.world"}
"""Plugin name → the package that registers it when imported."""


def load_plugin(name: str) -> bool:
    """Import the package of plugin ``name``; False when there is no such plugin."""
    module = PLUGINS.get(name)
    if module is None:
        return False
    importlib.import_module(module)
    return True
