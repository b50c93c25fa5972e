"""Lineage: edges between entities of any plugin, walked upstream and downstream."""

from __future__ import annotations

import itertools

import pytest

import zhongtai
from zhongtai.metadata.lineage import EntityRef, LineageEdge, record_edge


@pytest.fixture
def member(zt_identity):
    """A developer of one project: ``(headers, project id)``."""
    user, project = zt_identity.project_with("developer")
    return zt_identity.headers(user), project.id


def _chain(platform, project_id):
    """dataset version -> training job -> run -> model version -> release."""
    nodes = [
        ("data.version", "ds@1"),
        ("jobs.job", "j1"),
        ("train.run", "r1"),
        ("serve.model_version", "m@1"),
        ("release.release", "rel1"),
    ]
    with platform.db.transaction() as session:
        for (sk, si), (tk, ti) in itertools.pairwise(nodes):
            record_edge(
                session, EntityRef(sk, si), EntityRef(tk, ti), "produced", project_id=project_id
            )


def test_walk_downstream_and_upstream_with_depth(zt_client, zt_platform, member):
    headers, project = member
    _chain(zt_platform, project)
    down = zt_client.get(
        "/api/v1/lineage?kind=data.version&id=ds@1&direction=downstream&depth=2", headers=headers
    )
    assert down.status_code == 200
    ids = {n["id"] for n in down.json()["nodes"]}
    assert ids == {"ds@1", "j1", "r1"}
    up = zt_client.get(
        "/api/v1/lineage?kind=release.release&id=rel1&direction=upstream&depth=10",
        headers=headers,
    )
    assert {n["id"] for n in up.json()["nodes"]} == {"ds@1", "j1", "r1", "m@1", "rel1"}
    assert len(up.json()["edges"]) == 4


def test_direction_is_respected(zt_client, zt_platform, member):
    headers, project = member
    _chain(zt_platform, project)
    body = zt_client.get(
        "/api/v1/lineage?kind=train.run&id=r1&direction=upstream&depth=1", headers=headers
    ).json()
    assert {n["id"] for n in body["nodes"]} == {"r1", "j1"}


def test_lineage_of_another_project_is_invisible(zt_client, zt_platform, zt_identity, member):
    _headers, project = member
    _chain(zt_platform, project)
    outsider, _ = zt_identity.project_with("owner")
    other = zt_identity.headers(outsider)
    walked = zt_client.get("/api/v1/lineage?kind=train.run&id=r1", headers=other)
    assert walked.status_code == 200
    assert walked.json()["edges"] == []
    assert walked.json()["nodes"] == [{"kind": "train.run", "id": "r1"}]  # only the root asked for
    listed = zt_client.get("/api/v1/lineage/edges?kind=train.run", headers=other)
    assert listed.json()["items"] == []
    edge = {
        "source": {"kind": "a", "id": "1"},
        "target": {"kind": "b", "id": "2"},
        "relation": "to",
        "project": project,
    }
    assert zt_client.post("/api/v1/lineage/edges", json=edge, headers=other).status_code == 404


def test_lineage_needs_credentials_and_viewers_cannot_record(zt_client, zt_identity):
    assert zt_client.get("/api/v1/lineage?kind=a&id=1").status_code == 401
    viewer, project = zt_identity.project_with("viewer")
    edge = {
        "source": {"kind": "a", "id": "1"},
        "target": {"kind": "b", "id": "2"},
        "relation": "to",
        "project": project.id,
    }
    headers = zt_identity.headers(viewer)
    assert zt_client.post("/api/v1/lineage/edges", json=edge, headers=headers).status_code == 403
    assert zt_client.get("/api/v1/lineage/edges?kind=a", headers=headers).json()["items"] == []


def test_record_edge_over_http_is_idempotent_and_listed(zt_client, member):
    headers, project = member
    edge = {
        "source": {"kind": "data.version", "id": "a@1"},
        "target": {"kind": "train.run", "id": "r9"},
        "relation": "used_by",
        "project": project,
    }
    first = zt_client.post("/api/v1/lineage/edges", json=edge, headers=headers)
    second = zt_client.post("/api/v1/lineage/edges", json=edge, headers=headers)
    assert first.status_code == 201
    assert first.json()["id"] == second.json()["id"]
    listed = zt_client.get("/api/v1/lineage/edges?kind=train.run&id=r9", headers=headers).json()
    assert [e["id"] for e in listed["items"]] == [first.json()["id"]]


def test_edges_are_paginated_with_a_cursor(zt_client, zt_platform, member):
    headers, project = member
    with zt_platform.db.transaction() as session:
        for i in range(5):
            record_edge(
                session, EntityRef("a", f"s{i}"), EntityRef("b", "t"), "to", project_id=project
            )
    seen, cursor = [], None
    while True:
        url = "/api/v1/lineage/edges?kind=b&limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = zt_client.get(url, headers=headers).json()
        seen += [e["source"]["id"] for e in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [f"s{i}" for i in range(5)]


@pytest.mark.parametrize(
    "query", ["kind=a", "id=x", "kind=a&id=x&depth=0", "kind=a&id=x&direction=sideways"]
)
def test_bad_queries_are_400(zt_client, member, query):
    response = zt_client.get(f"/api/v1/lineage?{query}", headers=member[0])
    assert response.status_code == 400


class Recorder:
    def __init__(self):
        self.events = []

    @zhongtai.hookimpl
    def on_event(self, event):
        self.events.append(event)


class Raiser:
    @zhongtai.hookimpl
    def on_event(self, event):
        raise RuntimeError("handler broke")


def test_events_are_delivered_after_commit_and_a_failing_handler_stops_none(
    zt_register_plugin, zt_app_factory
):
    recorder = Recorder()
    zt_register_plugin(Raiser(), name="raiser")
    zt_register_plugin(recorder, name="recorder")
    platform = zt_app_factory().state["platform"]
    with platform.db.transaction() as session:
        record_edge(session, EntityRef("a", "1"), EntityRef("b", "2"), "to")
        assert recorder.events == []  # nothing before the commit
    assert [e.name for e in recorder.events] == ["lineage.edge.created"]
    assert recorder.events[0].to_dict()["target"] == {"kind": "b", "id": "2"}


def test_no_event_from_a_rolled_back_transaction(zt_register_plugin, zt_app_factory):
    recorder = Recorder()
    zt_register_plugin(recorder, name="recorder")
    platform = zt_app_factory().state["platform"]
    with pytest.raises(RuntimeError), platform.db.transaction() as session:
        record_edge(session, EntityRef("a", "1"), EntityRef("b", "2"), "to")
        raise RuntimeError("abort")
    assert recorder.events == []
    with platform.db.transaction() as session:
        assert session.query(LineageEdge).count() == 0


def test_an_edge_committed_meanwhile_elsewhere_loses_none_of_the_callers_edges(
    zt_register_plugin, zt_app_factory, monkeypatch
):
    """Two requests recording the same edge at once (MLflow's runs/create and set-tag,
    say): the one whose insert comes second keeps its other edges and emits no second
    event for the shared one."""
    from sqlalchemy.orm import Session

    recorder = Recorder()
    zt_register_plugin(recorder, name="recorder")
    platform = zt_app_factory().state["platform"]
    shared, own = (
        (EntityRef("a", "1"), EntityRef("b", "2")),
        (EntityRef("a", "3"), EntityRef("b", "2")),
    )
    with platform.db.transaction() as session:  # the other request, committed first
        first = record_edge(session, *shared, "to").id
    real = Session.scalar
    misses = iter([None])

    def lookup_before_the_other_commit(self, *args, **kwargs):
        value = real(self, *args, **kwargs)
        return next(misses, value) if value is not None else value

    with platform.db.transaction() as session:
        record_edge(session, *own, "to")
        monkeypatch.setattr(Session, "scalar", lookup_before_the_other_commit)
        assert record_edge(session, *shared, "to").id == first
        monkeypatch.undo()
    with platform.db.session() as session:
        stored = sorted((e.source_id, e.target_id) for e in session.query(LineageEdge))
    assert stored == [("1", "2"), ("3", "2")]
    created = [e.to_dict()["source"]["id"] for e in recorder.events]
    assert created == ["1", "3"]
