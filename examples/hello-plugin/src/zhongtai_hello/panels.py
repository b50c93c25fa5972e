"""The hello plugin's web UI: a page listing the project's greetings and a dashboard card.

Templates live in this package's ``templates/`` folder and are named ``hello/...`` by
the core; strings are translated from ``locale/zh/LC_MESSAGES/hello.po``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import func, select

from zhongtai.ui import Panel, View
from zhongtai_hello.models import Greeting


def _greetings(view: View) -> Mapping[str, Any]:
    if view.project is None:
        return {"items": [], "count": 0}
    with view.platform.db.transaction() as session:
        items = session.scalars(
            select(Greeting)
            .where(Greeting.project_id == view.project.id)
            .order_by(Greeting.id.desc())
            .limit(50)
        ).all()
        count = session.scalar(select(func.count()).where(Greeting.project_id == view.project.id))
        return {"items": [{"name": g.name, "at": g.created_at} for g in items], "count": count}


PANELS = [
    Panel(
        name="greetings",
        title={"en": "Greetings", "zh": "问候"},
        path="/greetings",
        template="greetings.html",
        icon="list",
        order=60,
        permission="hello.greeting.read",
        context=_greetings,
    ),
    Panel(
        name="greetings-card",
        title={"en": "Greetings", "zh": "问候"},
        kind="card",
        template="card.html",
        icon="list",
        order=60,
        permission="hello.greeting.read",
        context=_greetings,
    ),
]
