"""Panels: the pages and dashboard cards that plugins (and the core) add to the web UI.

A plugin returns :class:`Panel` objects from ``register_panels``; the core builds the
routes, the navigation and the dashboard from them. A page's ``context`` function
gathers what its template shows, from a :class:`View` of the request; ``on_post``,
if given, handles the page's form and returns a :class:`Redirect` or the context to
render again (with ``errors`` by field). Both run in a worker thread and may use the
database through ``view.platform``; access checks go through ``view.access`` as in
any route (another project's object → :class:`~zhongtai.identity.access.NotFound`,
which the UI shows as its not-found page).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from litestar import Request

    from zhongtai.identity.guard import Access
    from zhongtai.platform import Platform

__all__ = ["Panel", "Redirect", "View"]

NAME = re.compile(r"^[a-z][a-z0-9-]{0,40}$")


@dataclasses.dataclass
class Redirect:
    """What ``on_post`` returns when the form succeeded: where to go next."""

    url: str
    flash: str | None = None


@dataclasses.dataclass
class View:
    """One request to a panel: who asks, in which project, with which parameters."""

    request: Request[Any, Any, Any]
    platform: Platform
    access: Access
    locale: str
    gettext: Callable[[str], str]
    project: Any  # the current project (identity.models.Project) or None
    projects: list[Any]  # the projects the user can see, for the switcher
    params: Mapping[str, Any]  # the route's path parameters
    form: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def query(self) -> Mapping[str, str]:
        return self.request.query_params

    def url(self, target: str, /, **query: Any) -> str:
        """A URL of the UI with the current project kept in the query (any name may be
        a query parameter, ``path`` too)."""
        from urllib.parse import urlencode

        if self.project is not None:
            query.setdefault("project", self.project.id)
        pairs = {k: v for k, v in query.items() if v not in (None, "")}
        return target + ("?" + urlencode(pairs) if pairs else "")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Panel:
    """A page (with a navigation entry) or a dashboard card.

    Attributes:
        name: Unique within the plugin (``[a-z][a-z0-9-]*``).
        title: ``{"en": ..., "zh": ...}`` (or ``zh-CN``); English is the fallback.
        path: The page's route under ``/ui/<plugin>`` (``/ui`` for the core), with
            Litestar path parameters (``/jobs/{job_id:str}``). Cards have none.
        template: A file in the plugin's ``templates/`` folder.
        kind: ``page`` or ``card``.
        icon: An icon of the core's set (see ``templates/core/icons.html``).
        permission: What it takes to see it: a project permission (checked on the
            current project), a site permission (superusers), or None (any
            signed-in user).
        context: ``View -> dict`` for the template.
        on_post: ``View -> Redirect | dict``; the form's fields are in ``view.form``.
        nav: Whether a page has a navigation entry (pages with path parameters never do).
        order: Position in the navigation and on the dashboard (lower first).
    """

    name: str
    title: Mapping[str, str]
    template: str
    path: str = ""
    kind: Literal["page", "card"] = "page"
    icon: str = "square"
    permission: str | None = None
    context: Callable[[View], Mapping[str, Any]] | None = None
    on_post: Callable[[View], Redirect | Mapping[str, Any]] | None = None
    nav: bool = True
    order: int = 100

    def __post_init__(self) -> None:
        if not NAME.match(self.name):
            raise ValueError(f"panel name {self.name!r}: use [a-z][a-z0-9-]*")
        if "en" not in self.title:
            raise ValueError(f"panel {self.name!r}: the title needs an English text ('en')")
        if self.kind == "page" and not self.path.startswith("/"):
            raise ValueError(f"panel {self.name!r}: a page's path starts with '/'")

    def title_in(self, locale: str) -> str:
        """The title in ``locale`` (``zh-CN`` falls back to ``zh``), else English."""
        return self.title.get(locale) or self.title.get(locale.split("-")[0]) or self.title["en"]

    @property
    def in_nav(self) -> bool:
        return self.kind == "page" and self.nav and "{" not in self.path
