"""Shared test set-up: the integration apps' directory is importable everywhere."""

from __future__ import annotations

import sys
from pathlib import Path

APPS = Path(__file__).parent / "integration" / "apps"
sys.path.insert(0, str(APPS))
