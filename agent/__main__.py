"""``python -m agent`` = ``nnflash-agent``."""

from __future__ import annotations

import sys

from nnflash_agent.cli import main

sys.exit(main())
