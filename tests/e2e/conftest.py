"""The end-to-end suite: its helper modules beside this file are importable by name
(``claude_sandbox``, ``fake_api``), as tests/conftest.py does for the suite's own."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
