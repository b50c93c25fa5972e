"""Hooks: the plugin manager, the hook specifications, and domain events."""
