"""Errors of the calibration package."""

from __future__ import annotations

from nnflash.models.errors import NnflashError


class CostModelError(NnflashError, ValueError):
    """A cost model cannot be fitted, used, saved or loaded (the message says why, on one line)."""
