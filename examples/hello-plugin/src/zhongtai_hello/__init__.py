"""An example zhongtai plugin: a route, a table, a setting, a CLI command and an event.

The entry point (``zhongtai.plugins`` → ``hello = "zhongtai_hello.plugin"``) names
:mod:`zhongtai_hello.plugin`, which holds every hook implementation; the other
modules hold what those hooks hand to the core. See ``docs/plugins.md`` for the
walk-through.
"""

PLUGIN_NAME = "hello"
"""The entry-point name: the URL prefix, table prefix, migration branch and settings prefix."""
