"""The plugin registry and the built-in plugins (preview generators, event consumers)."""
from plugins.hookspecs import hookimpl
from plugins.manager import create_plugin_manager

__all__ = ["create_plugin_manager", "hookimpl"]
