"""Domain exceptions. They carry no wire codes: each protocol adapter maps them itself."""

from __future__ import annotations


class SolentError(Exception):
    """Base of every error Solent raises on purpose."""


class ConfigurationError(SolentError):
    """A setting is missing, unknown or invalid; the message says what to fix."""


class NotFound(SolentError):
    """The trust, node, patient, study, series or instance does not exist."""


class AlreadyExists(SolentError):
    """Creating something whose key is taken."""


class InvalidInput(SolentError):
    """A request or value is malformed; the message is safe to show to the caller."""


class ListenerUnavailable(SolentError):
    """A port `solent serve` must listen on cannot be bound; the message names the setting."""


class StorageError(SolentError):
    """The blob store failed to read or write."""


class IndexUnavailable(SolentError):
    """The index could not be reached or is locked for longer than we wait."""
