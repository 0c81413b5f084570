"""Hook specifications of the gateway's plugin system (pluggy marker "gateway")."""
from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("gateway")
hookimpl = pluggy.HookimplMarker("gateway")


@hookspec
def instance_stored(outcome, services):
    """An instance was stored (or replaced) and is visible; ``outcome`` is its InstanceOutcome."""


@hookspec
def instances_deleted(records, services):
    """Instances were removed from the index and their blobs deleted."""
