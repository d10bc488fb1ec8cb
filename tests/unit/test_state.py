"""Desired state: round trip, atomic replacement, corrupt files moved aside."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.errors import StateError
from agent.lattice.control_codec import LinkDefinition
from agent.state import DesiredActor, DesiredState, StateKeeper, StateStore

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


@pytest.mark.parametrize(
    "content",
    [
        b"\xff\xfe not utf-8",
        json.dumps({"version": 1, "actors": [{
            "actor_id": "M", "actor_ref": "file:///tmp/a\u0000b", "module_sha256": "s"}]}).encode(),
    ],
)  # fmt: skip
def test_unusable_state_is_moved_aside_not_fatal(tmp_path: Path, content: bytes) -> None:
    # Regression: non-UTF-8 or a NUL in a reference crash-looped the agent.
    path = tmp_path / "state.json"
    path.write_bytes(content)
    assert StateStore(path).load() == DesiredState()
    assert not path.exists()
    assert len(list(tmp_path.glob("state.json.corrupt-*"))) == 1


def test_a_directory_in_place_of_the_state_file_is_moved_aside(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.mkdir()
    store = StateStore(path)
    assert store.load() == DesiredState()
    store.save(DesiredState((ACTOR,)))  # the path is free again
    assert store.load().actors == (ACTOR,)


def _failing_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Make state writes fail with ENOSPC while the returned flag is set."""
    import errno

    import agent.state

    full = [True]
    real = agent.state.write_atomic

    def write(path: Path, data: bytes, **kwargs: object) -> None:
        if full[0]:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, data)

    monkeypatch.setattr(agent.state, "write_atomic", write)
    return full


def test_keeper_writes_intents_before_the_work_and_settles_them(tmp_path: Path) -> None:
    running: list[DesiredActor] = []
    store = StateStore(tmp_path / "state.json")
    keeper = StateKeeper(store, lambda: DesiredState(tuple(running)))
    token = keeper.begin("start", "nats-os://B/echo", count=2)
    pending = store.load().actors
    assert [(a.actor_ref, a.count, a.actor_id) for a in pending] == [("nats-os://B/echo", 2, "")]
    running.append(ACTOR)
    keeper.settle(token)
    assert store.load().actors == (ACTOR,)
    token = keeper.begin("scale", ACTOR.actor_ref, actor_id=ACTOR.actor_id, count=5)
    assert store.load().actors[0].count == 5
    keeper.settle(token)
    token = keeper.begin("scale", ACTOR.actor_ref, actor_id=ACTOR.actor_id, count=0)
    assert store.load().actors == ()


def test_keeper_refuses_an_intent_the_disk_refuses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    full = _failing_store(tmp_path, monkeypatch)
    keeper = StateKeeper(StateStore(tmp_path / "state.json"), DesiredState)
    with pytest.raises(StateError, match="No space left"):
        keeper.begin("start", "nats-os://B/echo")
    assert not keeper.saved and "No space" in (keeper.error or "")
    assert keeper.desired().actors == ()  # nothing half-recorded in memory either
    full[0] = False
    assert keeper.try_save() and keeper.saved


def test_keeper_keeps_failed_restores_with_their_reason(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.json")
    keeper = StateKeeper(store, DesiredState)
    keeper.restore_failed(ACTOR, "untrusted issuer")
    keeper.save()
    (kept,) = store.load().actors
    assert kept.error == "untrusted issuer" and kept.actor_id == ACTOR.actor_id
    assert keeper.forget_failed(ACTOR.actor_id)
    keeper.save()
    assert store.load().actors == ()
