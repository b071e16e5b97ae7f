"""nnflash on-device agent: measures latency (and energy) of exported models, speaks JSON lines.

Light by design: the standard library, numpy, psutil and the inference runtime it uses; runtimes and
meter drivers are imported lazily. Never torch, never the host packages.
"""

from __future__ import annotations

__version__ = "0.1.0"
