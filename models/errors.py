"""Exceptions shared by the host packages.

``NnflashError`` is the root of every error the project raises on purpose. The CLI turns any of them
into one line on stderr and exit code 2; a traceback is shown only with ``--debug``. Subclasses mix in
the built-in exception a caller would naturally catch (a bad spec *is* a ``ValueError``).

This module lives in ``models`` because ``models`` is the bottom of the host's dependency graph
(spec -> metrics -> artifact -> measurement -> cost model -> search); ``controller.errors`` re-exports it.
"""

from __future__ import annotations


class NnflashError(Exception):
    """Root of all deliberate nnflash errors."""


class SpecError(NnflashError, ValueError):
    """An architecture spec is malformed or violates a constraint. The message names the field."""


class SpaceError(NnflashError, ValueError):
    """A search-space request cannot be met (unknown space, infeasible target or budget)."""


class ExportError(NnflashError):
    """A model could not be exported, or the export disagrees with the torch module."""
