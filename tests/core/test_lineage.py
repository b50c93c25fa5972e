"""Lineage: edges between entities of any plugin, walked upstream and downstream."""

from __future__ import annotations

import itertools

import pytest

import zhongtai
from zhongtai.metadata.lineage import EntityRef, LineageEdge, record_edge


def _chain(platform):
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
            record_edge(session, EntityRef(sk, si), EntityRef(tk, ti), "produced")


def test_walk_downstream_and_upstream_with_depth(zt_client, zt_platform):
    _chain(zt_platform)
    down = zt_client.get("/api/v1/lineage?kind=data.version&id=ds@1&direction=downstream&depth=2")
    assert down.status_code == 200
    ids = {n["id"] for n in down.json()["nodes"]}
    assert ids == {"ds@1", "j1", "r1"}
    up = zt_client.get("/api/v1/lineage?kind=release.release&id=rel1&direction=upstream&depth=10")
    assert {n["id"] for n in up.json()["nodes"]} == {"ds@1", "j1", "r1", "m@1", "rel1"}
    assert len(up.json()["edges"]) == 4


def test_direction_is_respected(zt_client, zt_platform):
    _chain(zt_platform)
    body = zt_client.get("/api/v1/lineage?kind=train.run&id=r1&direction=upstream&depth=1").json()
    assert {n["id"] for n in body["nodes"]} == {"r1", "j1"}


def test_record_edge_over_http_is_idempotent_and_listed(zt_client):
    edge = {
        "source": {"kind": "data.version", "id": "a@1"},
        "target": {"kind": "train.run", "id": "r9"},
        "relation": "used_by",
    }
    first = zt_client.post("/api/v1/lineage/edges", json=edge)
    second = zt_client.post("/api/v1/lineage/edges", json=edge)
    assert first.status_code == 201
    assert first.json()["id"] == second.json()["id"]
    listed = zt_client.get("/api/v1/lineage/edges?kind=train.run&id=r9").json()
    assert [e["id"] for e in listed["items"]] == [first.json()["id"]]


def test_edges_are_paginated_with_a_cursor(zt_client, zt_platform):
    with zt_platform.db.transaction() as session:
        for i in range(5):
            record_edge(session, EntityRef("a", f"s{i}"), EntityRef("b", "t"), "to")
    seen, cursor = [], None
    while True:
        url = "/api/v1/lineage/edges?kind=b&limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = zt_client.get(url).json()
        seen += [e["source"]["id"] for e in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [f"s{i}" for i in range(5)]


@pytest.mark.parametrize(
    "query", ["kind=a", "id=x", "kind=a&id=x&depth=0", "kind=a&id=x&direction=sideways"]
)
def test_bad_queries_are_400(zt_client, query):
    assert zt_client.get(f"/api/v1/lineage?{query}").status_code == 400


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
