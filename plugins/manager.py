"""The plugin manager: every plugin, built-in or third-party, found in entry-point group gateway.plugins.

The built-in plugins (``plugins.forwarding``...) are declared in the package's own
``setup.cfg`` exactly as a third-party package declares its own, so that the gateway's
behaviour is what its plugins add. :meth:`gateway.services.Services.build` is the only
caller.
"""
from __future__ import annotations

import logging

import pluggy

from plugins import hookspecs

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "gateway.plugins"


def create_plugin_manager(*, load_entry_points: bool = True) -> pluggy.PluginManager:
    """A manager with the hook specifications and (unless told not to) every plugin."""
    pm = pluggy.PluginManager("gateway")
    pm.add_hookspecs(hookspecs)
    if load_entry_points:
        pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    return pm
