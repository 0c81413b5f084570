"""The fast API's front door, under ``/api/v1``: the clinic's own viewer and its administrators.

A front door like :mod:`dicomweb`: thin blueprints (flask-smorest, with marshmallow schemas
in :mod:`proprietary.schemas`, so that ``/api/openapi.json`` describes every body) over the
core services. It never imports another front door.

- :mod:`proprietary.uploads`: zip uploads of whole studies, resumable, with progress events;
- :mod:`proprietary.archives`: zip downloads of whole studies, series and slice ranges (byte ranges, resume);
- :mod:`proprietary.previews`: preview streams and thumbnails of series, their status and progress;
- :mod:`proprietary.shares`: shares of studies and series (users, clinics, links);
- :mod:`proprietary.signed_urls`: URLs usable without an Authorization header;
- :mod:`proprietary.audit`: the audit log;
- :mod:`proprietary.admin`: the job queue and its forwards;
- :mod:`proprietary.users`, :mod:`proprietary.projects`, :mod:`proprietary.annotations`,
  :mod:`proprietary.masks`: the caller's user record, projects, annotations, AI mask groups and masks;
- :mod:`proprietary.blob_uploads`: the gateway's own signed upload URLs (filesystem blob store);
- :mod:`proprietary.metadata`: image metadata (viewer state, annotations, tags) with optimistic locking.
"""
from __future__ import annotations

from proprietary import (
    admin,
    archives,
    audit,
    blob_uploads,
    masks,
    metadata,
    previews,
    projects,
    shares,
    signed_urls,
    uploads,
    users,
)
# Not "from proprietary import annotations": that name is the __future__ feature here.
from proprietary.annotations import blp as annotations_blp

BLUEPRINTS = (uploads.blp, archives.blp, previews.blp, shares.blp, signed_urls.blp, audit.blp, admin.blp, users.blp, projects.blp,
              annotations_blp, masks.blp, blob_uploads.blp, metadata.blp)


def init_app(app, api) -> None:
    for blueprint in BLUEPRINTS:
        api.register_blueprint(blueprint)
