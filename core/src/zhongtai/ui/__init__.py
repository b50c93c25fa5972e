"""The web UI: server-rendered pages that plugins add panels to (see :mod:`.panels`)."""

from zhongtai.ui.panels import Panel, Redirect, View

__all__ = ["Panel", "Redirect", "View"]
