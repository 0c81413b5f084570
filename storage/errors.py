"""Errors raised by storage backends; the gateway services translate them."""


class StorageError(Exception):
    """A backend failed in a way the caller cannot fix by changing the request."""


class Unavailable(StorageError):
    """The backend cannot be reached or timed out; the operation may be retried."""


class Conflict(StorageError):
    """The write contradicts what is stored (e.g. a series already under another study)."""


class ObjectNotFound(StorageError, KeyError):
    """No object or row under that key."""
