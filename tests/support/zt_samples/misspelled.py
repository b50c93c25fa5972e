"""A plugin implementing a hook that does not exist (a typo of register_routes)."""

import zhongtai


@zhongtai.hookimpl
def register_route():
    return []
