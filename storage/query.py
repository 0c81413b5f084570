"""The one query model: what QIDO-RS, C-FIND and the fast API's lists ask the index.

Front doors parse their protocol into a :class:`Query`; index stores translate it
into their query language. Attribute names are DICOM keywords from
:mod:`storage.attributes`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

MatchKind = Literal["single", "wildcard", "uids", "range", "fuzzy"]


@dataclass(frozen=True)
class Match:
    keyword: str
    kind: MatchKind
    # single/wildcard/fuzzy: one string; uids: the list; range: (low or None, high or None)
    value: str | tuple[str, ...] | tuple[str | None, str | None]


@dataclass(frozen=True)
class SharedScope:
    """A study (or one series of it) of another clinic that the asker may see through a share."""

    clinic_id: str
    study_uid: str
    series_uid: str | None = None


@dataclass
class Query:
    """What to search. The tenant scope is ``clinic_id`` (the asker's own clinic; None: none of
    it) plus ``shared``: the studies/series of other clinics shared with the asker. A shared
    study whose UID the asker's own clinic also holds is hidden behind the own one."""

    level: Literal["study", "series", "instance"]
    clinic_id: str | None
    matches: list[Match] = field(default_factory=list)
    study_uid: str | None = None  # path scope: /studies/{study}/...
    series_uid: str | None = None  # path scope: .../series/{series}/instances
    limit: int = 1000
    offset: int = 0
    with_headers: bool = False  # instance level: also return each instance's DICOM JSON
    shared: tuple[SharedScope, ...] = ()
