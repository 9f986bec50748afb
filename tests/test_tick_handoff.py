"""The loop / plugin-thread hand-off in a real daemon: a job's result goes out as soon as the plugin
thread ends it (the event loop publishes it), not in the tick after; a frame costs one input tick."""

from __future__ import annotations

import pytest

from benchmarks.ack_plugin import Ack
from tests.harness import DaemonProcess, confirmed_subscriber
from tests.test_daemon_integration import connect_publisher


class OneStep(Ack):
    """The transport benchmark's one-step plugin (outputs the seq of each frame it answered),
    answering events too, so a confirmed subscriber's probes get results."""

    name = "onestep"
    accepts_kinds = frozenset({"event", "tensor"})


def config(rate_hz: float, wake_on_input: bool) -> dict:
    return {"plugins": {"enabled": ["tests.test_tick_handoff:OneStep"]},
            "tick": {"rate_hz": rate_hz, "wake_on_input": wake_on_input}}


def answer(sub, sensor: str, seq: int):
    while (msg := sub.recv(timeout_s=10.0)) is not None:
        if msg.outputs.get("seen", {}).get(sensor) == seq:
            return msg
    raise AssertionError(f"no result for {sensor} seq {seq}")


@pytest.fixture
def slow_ticks(tmp_path):
    # 2 Hz, periodic only: a result published in the tick after its job would arrive ~0.5 s late,
    # with the daemon's tick count already past the tick that dispatched the job.
    d = DaemonProcess(tmp_path, config(2.0, False)).start()
    yield d
    d.kill()


def test_result_is_published_before_the_next_tick(slow_ticks):
    d = slow_ticks
    pub = connect_publisher(d)
    sub = confirmed_subscriber(d.results, pub)
    for _ in range(3):
        seq = pub.event("door", "open")
        msg = answer(sub, "door", seq)
        # `tick` is the tick that handed the job its input; no tick has run since.
        assert d.status()["tick"]["count"] == msg.header["tick"]
    status = d.status()
    assert status["plugins"]["onestep"]["runs"] >= 3
    assert status["plugins"]["onestep"]["errors"] == 0
    sub.close()
    pub.close()


def test_a_frame_costs_one_input_tick(tmp_path):
    # 1 Hz periodic, wake on input: each frame starts one tick; its result needs none.
    d = DaemonProcess(tmp_path, config(1.0, True)).start()
    try:
        pub = connect_publisher(d)
        sub = confirmed_subscriber(d.results, pub)
        before = d.status()["tick"]["input_ticks"]
        for _ in range(5):
            answer(sub, "door", pub.event("door", "open"))
        # Each frame woke a tick of its own (one may land on the 1 s deadline and count as
        # periodic); no result needed another.
        assert 4 <= d.status()["tick"]["input_ticks"] - before <= 5
        sub.close()
        pub.close()
    finally:
        d.kill()
