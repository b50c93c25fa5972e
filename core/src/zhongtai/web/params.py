"""Typed markers for route handler arguments.

Declare the platform in a handler as ``platform: PlatformDep``; Litestar injects the
app's :class:`~zhongtai.platform.Platform` by that name.
"""

from __future__ import annotations

from typing import Annotated, TypeAlias

from litestar.di import Dependency

from zhongtai.platform import Platform

PlatformDep: TypeAlias = Annotated[Platform, Dependency(kind="named")]

__all__ = ["PlatformDep"]
