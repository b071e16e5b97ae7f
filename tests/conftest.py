"""Session-wide settings of the test suite.

The agent's disturbed gate (issue 12) stores a measurement as ``disturbed`` when the machine was busy
while it was timed. Only the tests about that gate should depend on how busy the test machine is
(they set their thresholds explicitly); every other test measures with the gate off, so a loaded CI
machine or a neighbour's burst cannot fail a test of, say, the SSH transport. Set here, before any
test starts, so that ``nnflash`` subprocesses inherit it too.
"""

from __future__ import annotations

import os

os.environ.setdefault("NNFLASH_DISTURBED_SHARE", "off")
