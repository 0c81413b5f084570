"""A per-app plugin manager: built-in plugins plus those found in entry-point group gateway.plugins."""
from __future__ import annotations

import logging

import pluggy

from plugins import hookspecs

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "gateway.plugins"


def create_plugin_manager(*, load_entry_points: bool = True) -> pluggy.PluginManager:
    pm = pluggy.PluginManager("gateway")
    pm.add_hookspecs(hookspecs)
    if load_entry_points:
        pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    return pm
