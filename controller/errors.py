"""The project's exception hierarchy.

Every error nnflash raises on purpose derives from :class:`NnflashError`; the CLI turns one into a
single clear line and a non-zero exit code (a traceback only with ``--debug``). Subclasses also
derive from the natural built-in, so ``except ValueError`` in caller code still works.

The root, ``SpecError`` and ``ExportError`` are defined in :mod:`nnflash.models.errors` (``models`` is the
bottom of the host's dependency graph) and re-exported here, so there is exactly one
``NnflashError`` class for the CLI to catch. Cost-model errors are
:class:`nnflash.calibration.errors.CostModelError`. The agent has its own errors (it carries no host code).
"""

from __future__ import annotations

from typing import Optional

__all__ = [
    "NnflashError",
    "SpecError",
    "SpaceError",
    "ConfigError",
    "InventoryError",
    "TransportError",
    "RequestTimeout",
    "ProtocolViolation",
    "HostKeyError",
    "StoreError",
    "ExportError",
]


from nnflash.models.errors import ExportError, NnflashError, SpaceError, SpecError


class ConfigError(NnflashError, ValueError):
    """A configuration file or option is invalid."""


class InventoryError(ConfigError):
    """The device inventory is invalid, or a device is unknown / duplicated."""


class TransportError(NnflashError, ConnectionError):
    """A device could not be reached, the connection dropped, or a request timed out.

    ``request_id`` names the request that was in flight when it happened (None if none): its result
    may still be in the device's journal (ask with the ``results`` verb after reconnecting).
    """

    request_id: Optional[str] = None


class RequestTimeout(TransportError, TimeoutError):
    """A request got no answer within its ``timeout_s`` (the connection may still be usable)."""


class ProtocolViolation(TransportError):
    """The agent broke the wire protocol (a line that is not a response, one longer than the
    controller's cap, an answer to a request never sent, a malformed measurement): the device is
    not trusted any more; reconnecting does not help."""


class HostKeyError(TransportError):
    """A device's SSH host key is unknown (and not accepted) or has changed."""


class StoreError(NnflashError):
    """The results database cannot be opened, migrated or written."""
