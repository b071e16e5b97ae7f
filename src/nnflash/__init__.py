"""nnflash: hardware-aware neural architecture design for edge devices (NN-Mass, NN-Degree, FLASH).

The host packages live in the repository's top-level folders and are imported under this name:
``nnflash.models`` (``models/``), ``nnflash.calibration`` (``calibration/``) and
``nnflash.controller`` (``controller/``). ``src/nnflash/`` holds this file and one symbolic link per
folder, so that the installed names never include a generic top-level ``models`` or ``controller``.
The on-device agent is a separate distribution, ``nnflash-agent``, imported as ``nnflash_agent``.
"""

from __future__ import annotations

__version__ = "0.1.0"
