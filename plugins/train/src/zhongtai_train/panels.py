"""The train plugin's web UI pages (experiments, runs, comparison)."""

from __future__ import annotations

from zhongtai.ui import Panel

PANELS: list[Panel] = []
