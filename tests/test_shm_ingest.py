"""Shared-memory ingest through a real daemon: frames whose bytes wait in a client's ring arrive
intact, are validated, counted and limited like ZeroMQ frames, a rewritten slot is never used, and
rings are cleaned up when the client or the daemon is killed with -9 (real processes)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import msgpack
import numpy as np
import pytest

from sage_runtime.client import ResultSubscriber, SensorPublisher
from sage_runtime.shm import SHM_DIR, ShmWriter
from sage_runtime.wire import encode_ingest_shm
from tests.harness import REPO, DaemonProcess, wait_for

MIRROR = {"plugins": {"enabled": ["tests.plugins_for_tests:Mirror"]}, "tick": {"rate_hz": 100}}


def rings_of(pid: int) -> list[str]:
    return sorted(n for n in os.listdir(SHM_DIR) if n.startswith(f"sage-{pid}-"))


def mirrored(sub: ResultSubscriber, sensor: str, seq: int, timeout_s: float = 10.0) -> np.ndarray:
    """The image of the first result whose inputs name `sensor` at `seq`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        msg = sub.recv(0.5)
        if msg is not None and msg.header.get("inputs", {}).get(sensor) == seq:
            return msg.outputs["image"]
    raise TimeoutError(f"no result for {sensor} seq {seq}")


@pytest.fixture()
def daemon(tmp_path: Path):
    d = DaemonProcess(tmp_path, {**MIRROR, "ingest": {"max_message_bytes": 4 << 20}}).start()
    yield d
    d.kill()


def test_frames_through_shared_memory_arrive_intact_and_count_like_zeromq(daemon: DaemonProcess) -> None:
    pub = SensorPublisher(daemon.ingest)
    sub = ResultSubscriber(daemon.results, topics=("result/",))
    rng = np.random.default_rng(0)
    try:
        for i in range(6):  # more frames than slots: the ring wraps
            img = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
            seq = pub.tensor_shm("cam", img)
            np.testing.assert_array_equal(mirrored(sub, "cam", seq), img)
        st = daemon.status()["ingest"]
        assert st["sensors"]["cam"]["received"] == 6 and st["rejected"] == {}
        (name,) = rings_of(os.getpid())
        assert st["shm"]["rings"][name]["slots"] == 4 and st["shm"]["opened"] == 1
    finally:
        pub.close()
        sub.close()
    assert rings_of(os.getpid()) == []  # close() unlinked the ring
    wait_for(lambda: daemon.status()["ingest"]["shm"]["closed"] == 1, timeout_s=10)  # and the daemon unmapped it


def test_large_zeromq_frames_adopted_by_the_mailbox_arrive_intact(daemon: DaemonProcess) -> None:
    """Over the socket a large frame's zmq buffer becomes the mailbox slot (no copy) and reaches the
    plugin as it is: each of a run of different frames must come back pixel for pixel."""
    pub = SensorPublisher(daemon.ingest)
    sub = ResultSubscriber(daemon.results, topics=("result/",))
    rng = np.random.default_rng(1)
    try:
        for _ in range(6):
            img = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
            np.testing.assert_array_equal(mirrored(sub, "zcam", pub.tensor("zcam", img)), img)
    finally:
        pub.close()
        sub.close()


def send_raw(pub: SensorPublisher, header_extra: dict, payload: bytes = b"", shape=(4,)) -> None:
    header = {"v": 1, "sensor": "bad", "seq": 0, "ts_ns": 1, "kind": "tensor", "dtype": "float32",
              "shape": list(shape), **header_extra}
    pub.send_parts([b"sensor/bad", msgpack.packb(header), payload])


def test_bad_references_and_bad_data_are_rejected_with_reasons(daemon: DaemonProcess) -> None:
    pub = SensorPublisher(daemon.ingest)
    ring = ShmWriter(f"sage-{os.getpid()}-bad", 64, slots=2)
    try:
        slot, gen = ring.write(np.array([1, np.nan, 3, 4], dtype=np.float32))
        pub.send_parts(encode_ingest_shm("bad", 0, "float32", (4,), ring.name, slot, gen, ts_ns=1))
        send_raw(pub, {"shm": {"name": "sage-nobody-here", "slot": 0, "gen": 2}})
        send_raw(pub, {"shm": {"name": "../etc/passwd", "slot": 0, "gen": 2}})
        send_raw(pub, {"shm": {"name": ring.name, "slot": 5, "gen": 2}})
        send_raw(pub, {"shm": {"name": ring.name, "slot": 0, "gen": 3}})
        send_raw(pub, {"shm": {"name": ring.name, "slot": slot, "gen": gen}}, payload=b"x" * 16)
        send_raw(pub, {"shm": {"name": ring.name, "slot": slot, "gen": gen}}, shape=(1 << 20,))  # 4 MiB > 4 MiB - header
        # the ring may wrap only once the daemon has read those (a wrapped slot is torn, by design)
        wait_for(lambda: sum(daemon.status()["ingest"]["rejected"].values()) == 7, timeout_s=10)
        old_slot, old_gen = ring.write(np.ones(4, np.float32))
        ring.write(np.ones(4, np.float32))
        ring.write(np.ones(4, np.float32))  # the ring of 2 slots wrapped: old_slot holds a newer frame
        pub.send_parts(encode_ingest_shm("bad", 1, "float32", (4,), ring.name, old_slot, old_gen, ts_ns=1))
        want = {"non_finite": 1, "shm": 4, "payload_size": 1, "oversize": 1, "shm_torn": 1}
        wait_for(lambda: sum(daemon.status()["ingest"]["rejected"].values()) >= sum(want.values()), timeout_s=10)
        assert daemon.status()["ingest"]["rejected"] == want
        assert "bad" not in daemon.status()["ingest"]["sensors"]  # nothing admitted, nothing registered
    finally:
        ring.close()
        pub.close()


def test_undeclared_sensor_is_refused_like_over_zeromq(tmp_path: Path) -> None:
    d = DaemonProcess(tmp_path, {**MIRROR, "ingest": {"allow_undeclared": False}}).start()
    pub = SensorPublisher(d.ingest)
    try:
        pub.tensor_shm("stranger", np.zeros(8, np.float32))
        assert wait_for(lambda: d.status()["ingest"]["rejected"].get("undeclared"), timeout_s=10) == 1
    finally:
        pub.close()
        d.kill()


CLIENT = textwrap.dedent("""
    import sys, time
    import numpy as np
    from sage_runtime.client import SensorPublisher
    pub = SensorPublisher(sys.argv[1], connect_timeout_s=30)
    i = 0
    while True:
        pub.tensor_shm("cam", np.full((64, 64, 3), i % 256, np.uint8))
        if i == 0:
            print(next(iter(pub._rings.values())).name, flush=True)
        i += 1
        time.sleep(0.01)
""")


LONER = textwrap.dedent("""
    import os, time
    from sage_runtime.shm import ShmWriter
    print(ShmWriter(f"sage-{os.getpid()}-loner", 4096).name, flush=True)
    time.sleep(600)
""")


def start_client(endpoint: str, script: str = CLIENT) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", script, endpoint], stdout=subprocess.PIPE, text=True, env=env)
    return proc, proc.stdout.readline().strip()


def test_client_killed_with_9_its_ring_is_unmapped_and_unlinked(daemon: DaemonProcess) -> None:
    proc, name = start_client(daemon.ingest)
    try:
        assert name and os.path.exists(os.path.join(SHM_DIR, name))
        wait_for(lambda: name in (daemon.status()["ingest"]["shm"]["rings"] or {}), timeout_s=10)
        received = daemon.status()["ingest"]["sensors"]["cam"]["received"]
        assert received >= 1
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    # The periodic sweep of dead clients' rings may unlink the file before the reader's own sweep
    # unmaps it: wait for both.
    wait_for(lambda: not os.path.exists(os.path.join(SHM_DIR, name))
             and name not in daemon.status()["ingest"]["shm"]["rings"], timeout_s=10)
    st = daemon.status()["ingest"]["shm"]
    assert name not in st["rings"] and st["closed"] == 1
    assert daemon.proc.poll() is None  # the daemon runs on


def test_daemon_killed_with_9_the_client_carries_on_with_the_next_daemon(tmp_path: Path) -> None:
    first = DaemonProcess(tmp_path, MIRROR).start()
    pub = SensorPublisher(first.ingest)
    sub = ResultSubscriber(first.results, topics=("result/",))
    try:
        seq = pub.tensor_shm("cam", np.full((32, 32, 3), 7, np.uint8))
        assert mirrored(sub, "cam", seq)[0, 0, 0] == 7
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait()
        (name,) = rings_of(os.getpid())  # the client's ring is the client's: still there, still usable
        second = DaemonProcess(tmp_path, MIRROR).start()
        try:
            sub2 = ResultSubscriber(second.results, topics=("result/",))

            def delivered() -> bool:  # ZeroMQ reconnects on its own; the new daemon maps the same ring
                s = pub.tensor_shm("cam", np.full((32, 32, 3), 9, np.uint8))
                try:
                    return mirrored(sub2, "cam", s, timeout_s=0.5)[0, 0, 0] == 9
                except TimeoutError:
                    return False
            wait_for(delivered, timeout_s=20, interval_s=0.1)
            assert name in second.status()["ingest"]["shm"]["rings"]
            sub2.close()
        finally:
            second.kill()
    finally:
        pub.close()
        sub.close()
        first.kill()
    assert rings_of(os.getpid()) == []


def test_rings_of_clients_that_died_unwatched_are_unlinked_at_start(tmp_path: Path) -> None:
    proc, name = start_client("", LONER)  # no daemon: the ring is made, nothing maps it
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert os.path.exists(os.path.join(SHM_DIR, name))
    live = ShmWriter(f"sage-{os.getpid()}-alive", 64)
    try:
        d = DaemonProcess(tmp_path, MIRROR).start()
        d.kill()
        assert "unlinked 1 shared-memory ring" in d.log() or name in d.log()
        assert not os.path.exists(os.path.join(SHM_DIR, name)) and os.path.exists(live.path)  # live owner's kept
    finally:
        live.close()


def test_a_slot_rewritten_during_the_copy_is_never_published(tmp_path: Path) -> None:
    """The seqlock is checked after the copy: a writer that came back during it (simulated by
    writing the ring from inside the copy) costs the frame, and nothing is admitted."""
    from sage_runtime.edges.shm_ingest import ShmIngest
    from sage_runtime.wire import WireError, decode_ingest

    ring = ShmWriter(f"sage-{os.getpid()}-race", 4096, slots=2)

    class Racing(ShmIngest):
        racing = False

        def _copy_out(self, view):
            out = super()._copy_out(view)
            if self.racing:
                ring.write(np.zeros(1024, np.float32))
                ring.write(np.zeros(1024, np.float32))  # back in the same slot, mid-read
            return out

    edge = Racing(limit=4, reject_non_finite=True, directory=str(tmp_path))
    try:
        for racing in (False, True):
            edge.racing = racing
            slot, gen = ring.write(np.full(1024, 5, np.float32))
            msg = decode_ingest(encode_ingest_shm("cam", 0, "float32", (1024,), ring.name, slot, gen, ts_ns=1))
            if racing:
                with pytest.raises(WireError) as err:
                    edge.resolve(msg)
                assert err.value.reason == "shm_torn" and edge.torn == 1
            else:
                assert float(edge.resolve(msg).array().min()) == 5.0
    finally:
        edge.close()
        ring.close()
