"""The DICOM JSON text of search results, kept by what it is made from.

A result is a pure function of its index row and of the shape of the search (level, the
attributes returned, the RetrieveURL root), so the text made once for a row can be served
again for the same row and shape without any invalidation: a study that changes (a new
instance, new counts) has another row, hence another key. The keys hold the whole row,
its clinic and primary key included, and rows only reach here after the index applied the
asker's tenant scope, so nothing is shared that the asker's own search did not find.

What it saves: the OHIF study list (101 studies, newest first) is the same rows for every
viewer of a clinic; building and serialising their DICOM JSON in Python is most of the
time of such a request.
"""
from __future__ import annotations

import threading
from collections import deque
from typing import Hashable

# Bounded by the characters kept, keys and texts (about 2 KB a study), per process.
DEFAULT_MAX_CHARS = 16 * 1024 * 1024
# Larger entries (instances with every attribute) are not kept: few requests repeat them.
MAX_ITEM_CHARS = 32 * 1024


class RenderedRows:
    """A bounded map of key → text, oldest entry evicted first (reads take no lock)."""

    def __init__(self, max_chars: int = DEFAULT_MAX_CHARS):
        self.max_chars = max_chars
        self._texts: dict[Hashable, str] = {}
        self._order: deque[tuple[Hashable, int]] = deque()
        self._chars = 0
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> str | None:
        return self._texts.get(key)

    def put(self, key: Hashable, text: str, key_chars: int = 0) -> None:
        """Keep ``text``; ``key_chars``: the characters the key holds, counted in the bound too."""
        size = len(text) + key_chars
        if size > MAX_ITEM_CHARS or self.max_chars <= 0:
            return
        with self._lock:
            if key in self._texts:
                return
            self._texts[key] = text
            self._order.append((key, size))
            self._chars += size
            while self._chars > self.max_chars and self._order:
                old, old_size = self._order.popleft()
                del self._texts[old]
                self._chars -= old_size

    def __len__(self) -> int:
        return len(self._texts)
