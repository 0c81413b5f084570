"""Hook specifications of the gateway's plugin system (pluggy marker "gateway").

Events carry what a consumer needs and no more: the settings, and the job queue
(:class:`gateway.services.jobs.JobService`) where plugins put their work. Work itself runs
in job handlers, which get the whole :class:`gateway.services.Services` of the worker.
"""
from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("gateway")
hookimpl = pluggy.HookimplMarker("gateway")


@hookspec
def instance_stored(outcome, settings, jobs):
    """An instance was stored (or replaced) and is visible; ``outcome`` is its InstanceOutcome."""


@hookspec
def instances_deleted(records, settings, jobs):
    """Instances were removed from the index and their blobs deleted."""


@hookspec
def upload_completed(upload, series, settings, jobs):
    """A zip upload was completed; ``series`` lists the (study, series) UIDs it holds."""


@hookspec
def register_job_handlers(services):
    """A list of :class:`gateway.services.jobs.JobHandler`, one per job kind the plugin queues."""


@hookspec
def derived_generators(settings):
    """A list of generators of derived objects (previews, thumbnails...): see
    :class:`plugins.previews.generators.Generator`. The ``previews`` job runs them all over
    each series, decoding every slice once."""
