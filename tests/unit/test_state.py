"""Desired state: round trip, atomic replacement, corrupt files moved aside."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.lattice.control_codec import LinkDefinition
from agent.state import DesiredActor, DesiredState, StateStore

ACTOR = DesiredActor("MABC", "file:///opt/a.wasm", "ab" * 32, 2, {"team": "greenhouse"})
LINK = LinkDefinition("MABC", "wasmcloud:keyvalue", "VPROV", "default", {"URL": "redis://x"})


def test_round_trip(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.json")
    assert store.load() == DesiredState()
    store.save(DesiredState((ACTOR,), (LINK,)))
    loaded = store.load()
    assert loaded.actors[0] == ACTOR and loaded.links[0] == LINK
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


@pytest.mark.parametrize(
    "text",
    [
        "{not json",
        "[]",
        json.dumps({"version": 99}),
        json.dumps({"version": 1, "actors": [{"actor_id": "M"}]}),
        json.dumps({"version": 1, "actors": [{
            "actor_id": "M", "actor_ref": "r", "module_sha256": "s", "count": 0}]}),
        json.dumps({"version": 1, "links": [{"actor_id": "M", "provider_id": 1}]}),
    ],
)  # fmt: skip
def test_corrupt_state_is_kept_aside(
    tmp_path: Path, text: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "state.json"
    path.write_text(text)
    assert StateStore(path).load() == DesiredState()
    kept = [p for p in tmp_path.iterdir() if p.name.startswith("state.json.corrupt-")]
    assert len(kept) == 1 and kept[0].read_text() == text
    assert "is invalid" in caplog.text
