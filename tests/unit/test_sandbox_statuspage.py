"""The worker status page: a worker that dies mid-request leaves exact, readable state."""

from __future__ import annotations

import asyncio
import os
import threading

import pytest
from _sandboxkit import Recorder, guest

from agent.runtime import worker as worker_module
from agent.runtime.protocol import (
    FrameDecoder,
    Load,
    Result,
    decode_message,
    encode_invoke_batch,
    encode_message,
)
from agent.runtime.statuspage import HOST_WAIT, RUNNING, StatusPage
from agent.runtime.wapc import WapcInstance
from agent.runtime.workerproc import Request, RequestKind, WorkerProcess


class _Died(BaseException):
    """Stands in for SIGKILL: unwinds the worker without any of its cleanup."""


class _Mortal(WapcInstance):
    def invoke(self, operation: str, payload: bytes) -> bytes:
        if operation == "die":
            raise _Died
        return super().invoke(operation, payload)


def _run_until_death(monkeypatch: pytest.MonkeyPatch, requests: bytes) -> tuple[StatusPage, bytes]:
    """Run a worker in this process on ``requests`` until an invocation of "die"."""
    monkeypatch.setattr("agent.runtime.wapc.WapcInstance", _Mortal)
    monkeypatch.setattr(worker_module, "FLUSH_AGE_S", 60.0)  # a slow test box must not flush
    page, fd = StatusPage.create()
    os.close(fd)
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    os.write(in_w, requests)
    received = bytearray()
    reader = threading.Thread(target=lambda: received.extend(_read_all(out_r)))
    reader.start()
    try:
        with pytest.raises(_Died):
            worker_module.Worker(in_r, out_w, page).run()
    finally:
        for fd in (in_r, in_w, out_w):
            os.close(fd)
        reader.join()
        os.close(out_r)
    return page, bytes(received)


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks)


def _results(data: bytes) -> list[int]:
    return [
        m.req_id for m in map(decode_message, FrameDecoder().feed(data)) if isinstance(m, Result)
    ]


def test_answers_held_when_a_worker_dies_are_in_its_spill_area(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    items = [(i, "a", "echo", b"x" * i) for i in range(2, 7)] + [(7, "a", "die", b"")]
    requests = encode_message(Load(1, "a", guest("echo"), 65536)) + encode_invoke_batch(items)
    page, piped = _run_until_death(monkeypatch, requests)
    try:
        # The dying request is on the stack, running; its predecessors' answers were held
        # back (batched), not lost: they are in the spill area.
        top = page.top()
        assert top is not None and (top.req_id, top.state) == (7, RUNNING)
        assert page.stack() == [7]
        spilled = _results(page.spilled())
        assert spilled, "the echo answers should have been batched, not written one by one"
        assert sorted(_results(piped) + spilled) == [1, 2, 3, 4, 5, 6]
    finally:
        page.close()


async def test_the_agent_salvages_answers_and_knows_what_had_started(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    items = [(2, "a", "echo", b"two"), (3, "a", "die", b""), (4, "a", "echo", b"four")]
    requests = encode_message(Load(1, "a", guest("echo"), 65536)) + encode_invoke_batch(items)
    page, _ = _run_until_death(monkeypatch, requests)
    loop = asyncio.get_running_loop()

    replies: list[object] = []
    worker = WorkerProcess(
        "t",
        memory_limit_mb=0,
        host_call_handler=Recorder(),
        on_reply=lambda w, r, m: replies.append(m),
        on_exit=lambda w: None,
    )
    futures = {req_id: loop.create_future() for req_id in (2, 3, 4)}
    for req_id, future in futures.items():
        worker.inflight[req_id] = Request(
            req_id, "a", 0, RequestKind.INVOKE, "echo", b"", b"", 1.0, 1e9, future
        )
    worker._page = page  # as if it had spawned that worker
    worker._teardown()  # the process is gone: read its page
    assert futures[2].result().payload == b"two"  # delivered although never piped
    assert not futures[3].done() and not futures[4].done()
    assert worker.started == [3]  # 3 had started (fails); 4 never did (is resent)
    assert sorted(worker.inflight) == [3, 4]


def test_a_page_reads_back_what_a_worker_wrote() -> None:
    page, fd = StatusPage.create()
    os.close(fd)
    try:
        assert page.top() is None and page.stack() == [] and page.spilled() == b""
        page.ints[8], page.ints[9] = 11, 12  # ids of two entries
        page.ints[8 + 32], page.ints[9 + 32] = HOST_WAIT, RUNNING
        page.floats[1], page.floats[33] = 5.0, 0.25
        page.ints[1] = 2  # depth
        assert page.stack() == [11, 12]
        assert page.top() == (12, RUNNING, 5.0, 0.25)
        page.ints[1] = 10**6  # garbage depth from a corrupt worker: ignored
        assert page.top() is None
    finally:
        page.close()
