"""Bearer tokens verified recently, so that a client sending the same token on every request
(a viewer: hundreds of requests a minute) pays for one signature check, not one each.

An entry is keyed by the exact token text and remembers the principal, the ``kid`` and the
very key object that verified the signature. It is used only while

- the token has not expired (``exp``, without the leeway a fresh verification would grant),
  and the entry is younger than ``max_age`` seconds;
- the provider still trusts that same key object under that ``kid`` (``current_key``): a key
  retired or replaced (the local key file read again, the JWKS fetched again) ends every
  entry it verified, so a cached token is refused exactly when a fresh verification would be.

A token verified once is therefore accepted no longer than without this cache; what is
saved is only the work. Refusals are never kept. The map is bounded (``max_entries``; the
oldest entry goes first) and per process.
"""
from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Any, Callable

from auth.base import Principal

DEFAULT_MAX_ENTRIES = 4096
DEFAULT_MAX_AGE = 60.0  # seconds


class VerifiedTokens:
    def __init__(self, *, max_entries: int = DEFAULT_MAX_ENTRIES, max_age: float = DEFAULT_MAX_AGE,
                 clock: Callable[[], float] = time.time):
        self.max_entries = max_entries
        self.max_age = max_age
        self.clock = clock
        self._entries: OrderedDict[str, tuple[Principal, str, Any, float]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, token: str, current_key: Callable[[str], Any]) -> Principal | None:
        """The principal of ``token`` if it was verified recently and its key is still trusted."""
        entry = self._entries.get(token)
        if entry is None:
            return None
        principal, kid, key, until = entry
        if self.clock() < until and current_key(kid) is key:
            return principal
        with self._lock:
            self._entries.pop(token, None)
        return None

    def put(self, token: str, principal: Principal, kid: str, key: Any, exp: float) -> None:
        if self.max_entries <= 0 or self.max_age <= 0:
            return
        until = min(float(exp), self.clock() + self.max_age)
        with self._lock:
            self._entries[token] = (principal, kid, key, until)
            self._entries.move_to_end(token)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
