"""zhongtai: an AI platform built as a small core that loads plugins.

Plugin authors import :data:`hookimpl` from here and nothing else is required::

    import zhongtai

    @zhongtai.hookimpl
    def register_routes(platform):
        return [my_controller]
"""

from zhongtai.hooks.markers import hookimpl, hookspec

__version__ = "0.1.0"
__all__ = ["__version__", "hookimpl", "hookspec"]
