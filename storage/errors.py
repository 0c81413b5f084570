"""Errors raised by storage backends; the gateway services translate them."""


class StorageError(Exception):
    """A backend failed in a way the caller cannot fix by changing the request."""


class Unavailable(StorageError):
    """The backend cannot be reached or timed out; the operation may be retried."""


class Conflict(StorageError):
    """The write contradicts what is stored (e.g. a series already under another study)."""


class ObjectNotFound(StorageError, KeyError):
    """No object or row under that key."""


class VersionConflict(StorageError):
    """A conditional write found another version than the one it was made against (or a
    record where it meant to create one); ``current`` is the stored record, None when absent."""

    def __init__(self, message: str, current=None):
        super().__init__(message)
        self.current = current


class TooLarge(StorageError):
    """The item exceeds what the backend can keep in one record."""
