"""`sagectl record` / `sagectl replay` against real daemons: record while a client publishes, read
the file back with the mcap reader, replay into a second daemon and compare its counters."""

from __future__ import annotations

import json
import subprocess
import time

import msgpack
import numpy as np
import pytest

pytest.importorskip("mcap")
from mcap.reader import make_reader  # noqa: E402

from sage_runtime.client import SensorPublisher  # noqa: E402
from sage_runtime.wire import encode_ingest  # noqa: E402
from tests.harness import SAGECTL, DaemonProcess, wait_for  # noqa: E402

ECHO = {"plugins": {"enabled": ["tests.plugins_for_tests:Echo"]}}


def ctl(d: DaemonProcess, *args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([SAGECTL, "--socket", d.control_endpoint, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=d.env, **kw)


def frames() -> list[list[bytes]]:
    """What the client sends: 6 camera images, 12 IMU vectors, 3 text commands (fixed content)."""
    rng = np.random.default_rng(0)
    out = []
    for i in range(12):
        if i % 2 == 0:
            out.append(encode_ingest("cam", i // 2, "tensor", rng.integers(0, 255, (24, 32, 3), dtype=np.uint8),
                                     ts_ns=1_000_000 + i))
        out.append(encode_ingest("imu", i, "tensor", rng.standard_normal(6).astype(np.float32), ts_ns=2_000_000 + i))
        if i % 4 == 0:
            out.append(encode_ingest("op", i // 4, "text", f"command {i}", ts_ns=3_000_000 + i))
    return [[bytes(p) if not isinstance(p, bytes) else p for p in parts] for parts in out]


@pytest.fixture
def recorded(tmp_path):
    """Daemon A, a recorder with --results, and a client publishing 21 frames 20 ms apart."""
    (tmp_path / "a").mkdir()
    a = DaemonProcess(tmp_path / "a", ECHO).start()
    out = tmp_path / "rec.mcap"
    try:
        assert a.control().call("tap")["subscriptions"] == 0
        rec = ctl(a, "record", str(out), "--duration", "30", "--results", "--json")
        wait_for(lambda: a.control().call("tap")["subscriptions"] == 1, timeout_s=20)  # the tap knows it listens
        sent = frames()
        pub = SensorPublisher(a.ingest)
        for parts in sent:
            pub.send_parts(parts)
            time.sleep(0.02)
        wait_for(lambda: a.control().call("tap")["sent"] == len(sent), timeout_s=10)
        wait_for(lambda: a.status()["results"]["sent"] > 0, timeout_s=10)  # the recorder drains on stop
        rec.send_signal(2)  # Ctrl-C: the recorder finishes the file
        stdout, stderr = rec.communicate(timeout=30)
        assert rec.returncode == 0, stderr
        wait_for(lambda: a.control().call("tap")["subscriptions"] == 0, timeout_s=10)
        yield a, out, sent, json.loads(stdout)
    finally:
        a.kill()


def test_record_is_byte_exact_with_images_and_results(recorded):
    a, out, sent, summary = recorded
    assert summary["channels"]["/sage/ingest/cam"] == 6 and summary["channels"]["/sage/ingest/imu"] == 12
    with open(out, "rb") as f:
        reader = make_reader(f)
        by_topic: dict[str, list] = {}
        for schema, channel, message in reader.iter_messages(log_time_order=True):
            by_topic.setdefault(channel.topic, []).append((schema, channel, message))
    ingest = [list(msgpack.unpackb(m.data)) for t in sorted(by_topic) if t.startswith("/sage/ingest/")
              for _, _, m in by_topic[t]]
    assert sorted(map(tuple, ingest)) == sorted(map(tuple, sent))  # every part, byte for byte
    images = by_topic["/sage/image/cam"]
    assert len(images) == 6 and images[0][0].name == "foxglove.RawImage"
    img = json.loads(images[0][2].data)
    assert (img["width"], img["height"], img["encoding"], img["step"]) == (32, 24, "rgb8", 96)
    assert "/sage/image/imu" not in by_topic and "/sage/image/op" not in by_topic
    assert by_topic["/sage/results"]  # --results: the echo plugin's results
    cam_times = [m.log_time for _, _, m in by_topic["/sage/ingest/cam"]]
    assert cam_times == sorted(cam_times) and cam_times[-1] - cam_times[0] > 0.15e9  # receive times kept


def test_replay_into_a_second_daemon_gives_the_same_counters(recorded, tmp_path):
    a, out, sent, _ = recorded
    (tmp_path / "b").mkdir()
    b = DaemonProcess(tmp_path / "b", ECHO).start()
    try:
        t0 = time.monotonic()
        rep = ctl(b, "replay", str(out), "--speed", "2", "--json")
        stdout, stderr = rep.communicate(timeout=60)
        took = time.monotonic() - t0
        assert rep.returncode == 0, stderr
        assert json.loads(stdout)["sent"] == len(sent)
        assert took > 0.2  # 21 frames recorded ~20 ms apart, replayed at 2x: not all at once
        want = {s: a.status()["ingest"]["sensors"][s]["received"] for s in ("cam", "imu", "op")}
        wait_for(lambda: {s: x["received"] for s, x in b.status()["ingest"]["sensors"].items()} == want,
                 timeout_s=10)
        assert b.status()["ingest"]["rejected"] == {}
        seq = {s: b.status()["ingest"]["sensors"][s]["last_seq"] for s in want}
        assert seq == {"cam": 5, "imu": 11, "op": 2}
        rep = ctl(b, "replay", str(out), "--max", "--json")
        stdout, _ = rep.communicate(timeout=60)
        assert json.loads(stdout)["sent"] == len(sent)
        wait_for(lambda: b.status()["ingest"]["sensors"]["imu"]["received"] == 24, timeout_s=10)
    finally:
        b.kill()


def test_nothing_is_tapped_without_a_recorder(tmp_path):
    d = DaemonProcess(tmp_path).start()
    try:
        pub = SensorPublisher(d.ingest)
        pub.tensor("imu", np.zeros(6, np.float32))
        wait_for(lambda: d.status()["ingest"]["sensors"].get("imu", {}).get("received") == 1)
        assert d.control().call("tap")["sent"] == 0
    finally:
        d.kill()


def test_record_for_a_duration_and_only_the_named_sensors(tmp_path):
    d = DaemonProcess(tmp_path).start()
    out = tmp_path / "imu.mcap"
    try:
        rec = ctl(d, "record", str(out), "--duration", "4", "--sensors", "imu", "--json")
        wait_for(lambda: d.control().call("tap")["subscriptions"] == 1, timeout_s=20)
        pub = SensorPublisher(d.ingest)
        for i in range(5):
            pub.tensor("imu", np.full(6, i, np.float32))
            pub.tensor("imu2", np.zeros(6, np.float32))  # shares the prefix, not the id
            pub.tensor("cam", np.zeros((8, 8, 3), np.uint8))
        stdout, stderr = rec.communicate(timeout=30)  # ends by itself
        assert rec.returncode == 0, stderr
        assert json.loads(stdout)["channels"] == {"/sage/ingest/imu": 5}
        with open(out, "rb") as f:
            topics = {c.topic for c in make_reader(f).get_summary().channels.values()}
        assert topics == {"/sage/ingest/imu"}
        pub.close()
    finally:
        d.kill()


def test_status_counts_what_the_tap_sent_and_dropped(recorded):
    """The tap's counters (per sensor, recorders now and ever) are in the status document and the
    `sagectl status` table; the recorder's own summary says what the tap sent and dropped meanwhile."""
    a, _, sent, summary = recorded
    assert summary["tap"] == {"sent": len(sent), "dropped": 0}
    tap = a.status()["tap"]
    assert (tap["sent"], tap["dropped"], tap["subscriptions"], tap["subscribed_total"]) == (len(sent), 0, 0, 1)
    assert tap["sensors"] == {"cam": {"sent": 6, "dropped": 0}, "imu": {"sent": 12, "dropped": 0},
                              "op": {"sent": 3, "dropped": 0}}
    out = subprocess.run([SAGECTL, "--socket", a.control_endpoint, "status"], capture_output=True, text=True,
                         env=a.env, timeout=30).stdout
    assert f"tap  recorders 0 (ever 1)  sent {len(sent)}  dropped 0" in out


def test_the_tap_counts_frames_a_slow_recorder_loses(tmp_path):
    """A recorder that does not read: past SNDHWM the tap drops (counted per sensor), never blocks."""
    import asyncio

    import zmq
    import zmq.asyncio

    from sage_runtime.edges.tap import IngestTap

    async def scenario() -> dict:
        ctx = zmq.asyncio.Context()
        tap = IngestTap(ctx, tmp_path, sndhwm=4)
        task = asyncio.create_task(tap.run())
        sub = zmq.Context.instance().socket(zmq.SUB)
        sub.setsockopt(zmq.RCVHWM, 4)
        sub.setsockopt(zmq.SUBSCRIBE, b"tap/")
        sub.connect(tap.endpoint)
        for _ in range(200):  # until the tap has seen the subscription
            if tap.active:
                break
            await asyncio.sleep(0.01)
        assert tap.active
        payload = b"\0" * 65536
        for i in range(500):
            tap.publish("cam" if i % 2 else "imu", [b"sensor/x", b"h", payload])
        stats = tap.stats()
        task.cancel()
        sub.close(linger=0)
        tap.close()
        ctx.destroy(linger=0)
        return stats

    stats = asyncio.run(scenario())
    assert stats["sent"] + stats["dropped"] == 500 and stats["dropped"] > 0
    assert stats["sensors"]["cam"]["sent"] + stats["sensors"]["cam"]["dropped"] == 250
    assert stats["sensors"]["imu"]["dropped"] + stats["sensors"]["cam"]["dropped"] == stats["dropped"]
