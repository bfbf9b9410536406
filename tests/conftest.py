"""Shared test set-up: ``services`` (where the real services are) and the integration apps'
directory are importable everywhere."""

from __future__ import annotations

import sys
from pathlib import Path

TESTS = Path(__file__).parent
APPS = TESTS / "integration" / "apps"
sys.path[:0] = [str(TESTS), str(APPS)]
