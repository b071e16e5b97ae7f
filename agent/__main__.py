"""``python -m agent`` = ``nnflash-agent``."""

from __future__ import annotations

import sys

from agent.cli import main

sys.exit(main())
