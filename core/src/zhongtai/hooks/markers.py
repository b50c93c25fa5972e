"""The pluggy markers. Kept in their own module so importing them is cheap."""

import pluggy

PROJECT = "zhongtai"

hookspec = pluggy.HookspecMarker(PROJECT)
"""Marks a hook specification (used in :mod:`zhongtai.hooks.hookspecs`, or by a plugin
that declares hooks for other plugins)."""

hookimpl = pluggy.HookimplMarker(PROJECT)
"""Marks a plugin's implementation of a hook."""
