"""The DIMSE front door: C-ECHO, C-STORE, C-FIND, C-MOVE, C-GET on the core.

- :mod:`~gateway.dimse.listener`: the pynetdicom Application Entity and the process that runs
  it (with the job worker beside it);
- :mod:`~gateway.dimse.handlers`: one handler per service, translating to ingest/query/retrieve;
- :mod:`~gateway.dimse.identifiers`: Q/R identifiers ↔ the query model;
- :mod:`~gateway.dimse.peers`: access control per calling AE, C-MOVE destinations;
- :mod:`~gateway.dimse.scu`: sending stored instances unchanged (C-GET/C-MOVE, and the
  forwarding plugin, :mod:`plugins.forwarding`);
- :mod:`~gateway.dimse.supervisor`: ``gateway serve``'s child process of the listener.

Importing this package does not import pynetdicom; the submodules that need it do.
"""
from __future__ import annotations

__all__ = ["handlers", "identifiers", "listener", "peers", "scu", "supervisor"]
