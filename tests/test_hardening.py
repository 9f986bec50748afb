"""Issue 16: each attack found by a script against the real daemon, replayed as a bounded test.

Every test: a real daemon with small capacity budgets, a real ZeroMQ client doing the attack, then
the daemon must still be running and ticking, answer status within 1 s, have counted the refusal
under its own reason, and its RSS must have grown by less than the configured budget.
"""

from __future__ import annotations

import subprocess
import sys
import time

import msgpack
import numpy as np
import pytest
import zmq

from sage_runtime.client import SensorPublisher
from sage_runtime.wire import PROTOCOL_VERSION, encode_request
from tests.harness import SAGE_RUNTIME, DaemonProcess, wait_for

MIB = 1024 * 1024
SMALL = {
    "plugins": {"enabled": ["tests.plugins_for_tests:Echo"]},
    "tick": {"rate_hz": 50},
    "ingest": {"max_message_bytes": 2 * MIB},
    "capacity": {"max_sensors": 16, "mailbox_bytes": 24 * MIB, "sensor_bytes": 8 * MIB},
}


@pytest.fixture
def daemon(tmp_path):
    d = DaemonProcess(tmp_path, SMALL).start()
    yield d
    d.kill()


def rss(d: DaemonProcess) -> int:
    assert d.proc is not None
    with open(f"/proc/{d.proc.pid}/statm") as f:
        return int(f.read().split()[1]) * 4096


def connect(d: DaemonProcess) -> SensorPublisher:
    """A publisher the daemon is known to hear (a probe event it registered), not a sleep."""
    pub = SensorPublisher(d.ingest)

    def heard():
        pub.event("probe", "hello")
        return "probe" in d.status()["ingest"]["sensors"]
    wait_for(heard, timeout_s=10, interval_s=0.1)
    return pub


def still_fine(d: DaemonProcess) -> dict:
    """Running, ticking, and answering status within 1 s; returns that status."""
    assert d.proc is not None and d.proc.poll() is None, d.log()
    before = d.status()["tick"]["count"]
    t0 = time.monotonic()
    status = wait_for(lambda: (s := d.control(timeout_s=1.0).status())["tick"]["count"] > before and s,
                      timeout_s=5)
    assert time.monotonic() - t0 < 5
    t0 = time.monotonic()
    d.control(timeout_s=1.0).status()  # raises DaemonNotRunning past 1 s
    assert time.monotonic() - t0 < 1.0
    return status


def rejected(d: DaemonProcess, reason: str) -> int:
    return d.status()["ingest"]["rejected"].get(reason, 0)


def test_burst_of_new_sensor_ids_is_refused_past_max_sensors(daemon):
    """Was: 65+ new ids in one tick raised ValueError in salience and the daemon exited 1 (0.97 s)."""
    pub = connect(daemon)
    for i in range(200):
        pub.event(f"flood{i}", "x")
    wait_for(lambda: rejected(daemon, "sensor_limit") >= 200 - 15, timeout_s=10)
    status = still_fine(daemon)
    assert len(status["ingest"]["sensors"]) == 16
    assert status["health"] == "degraded"
    assert any("capacity.max_sensors" in r for r in status["health_reasons"])


def test_new_tensor_sensors_stop_at_the_mailbox_budget(daemon):
    """Was: each new sensor preallocated 4 slots of its first frame: 8 x 30.5 MiB cost +1.19 GiB."""
    pub = connect(daemon)
    still_fine(daemon)
    base = rss(daemon)
    frame = np.ones(450_000, dtype=np.float32)  # 1.7 MiB: a channel of 4 slots is 6.9 MiB
    for i in range(12):
        pub.tensor(f"big{i}", frame)
    wait_for(lambda: rejected(daemon, "mailbox_budget") >= 9, timeout_s=20)
    status = still_fine(daemon)
    cap = status["ingest"]["capacity"]
    assert cap["mailbox_bytes"] <= cap["mailbox_budget"] == 24 * MIB
    assert sum(1 for s in status["ingest"]["sensors"] if s.startswith("big")) == 3
    assert rss(daemon) - base < 24 * MIB + 8 * MIB  # the budget, plus one message in flight


def test_fifo_text_sensor_is_bounded_by_bytes_not_just_depth():
    """A fifo:64 text sensor of big frames would queue 64 of them; its byte budget evicts the oldest
    (counted as dropped) and a frame bigger than the whole budget is refused as sensor_budget."""
    from sage_runtime.config import CapacitySection, IngestSection
    from sage_runtime.edges.ingest import SensorTable
    from sage_runtime.mailbox import Mailbox
    from sage_runtime.wire import IngestMessage, WireError

    cap = CapacitySection(max_sensors=4, mailbox_bytes=2 * MIB, sensor_bytes=1 * MIB)
    table = SensorTable(IngestSection(max_sensors=4), Mailbox("cpu"), cap)
    text = "a" * (300 * 1024)
    for seq in range(10):
        table.admit(IngestMessage("chat", seq, 1, "text", text), len(text))
    chat = table.sensors["chat"]
    assert len(chat.queue) == 3 and chat.dropped == 7 and chat.reserved_bytes == 3 * len(text)
    with pytest.raises(WireError) as err:
        table.admit(IngestMessage("chat", 10, 1, "text", "b" * (MIB + 1)), MIB + 1)
    assert err.value.reason == "sensor_budget"
    frames, _ = table.take()
    assert len(frames["chat"]) == 3 and table.reserved_bytes == 0


def test_too_many_parts_or_bytes_are_refused_and_counted(daemon):
    """Was: 8 x 100 MiB parts were buffered whole (RSS 1,055 MiB) before the size check."""
    pub = connect(daemon)
    base = rss(daemon)
    header = msgpack.packb({"v": PROTOCOL_VERSION, "sensor": "p", "seq": 0, "ts_ns": 1, "kind": "text"})
    pub.send_parts([b"sensor/p", header, *([b"x" * 1024] * 40)])
    pub.send_parts([b"sensor/p", header, b"x" * (MIB + 1), b"y" * (MIB + 1)])
    wait_for(lambda: rejected(daemon, "too_many_parts") == 1 and rejected(daemon, "oversize") == 1, timeout_s=10)
    still_fine(daemon)
    assert rss(daemon) - base < 24 * MIB


def test_long_event_and_reward_strings_are_refused(daemon):
    """Was: an event `type` of 30 MiB made every status reply 31 MB; 20 reward targets of 30 MiB +659 MiB."""
    pub = connect(daemon)
    pub.event("bus", "t" * MIB, "critical")
    pub.reward("bus", 0.5, "r" * MIB)
    pub.event("bus", "fine", "info")
    wait_for(lambda: rejected(daemon, "too_long") == 2, timeout_s=10)
    status = still_fine(daemon)
    assert status["state"]["name"] != "CRISIS"
    assert len(msgpack.packb(daemon.control().call("status"), default=str)) < 256 * 1024


def test_control_request_with_many_parts_is_refused_before_assembly(daemon):
    """Was: a 600 x 1 MiB control request was accepted (RSS +600 MiB)."""
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(daemon.control_endpoint)
    try:
        base = rss(daemon)
        sock.send_multipart([b"", *([b"z" * 1024] * 600), encode_request("status")])
        sock.send_multipart([b"", b"q" * 40_000, b"q" * 40_000, encode_request("status")])  # over bytes
        wait_for(lambda: daemon.status()["control"]["refused"] == {"too_many_parts": 1, "oversize": 1},
                 timeout_s=10)
        still_fine(daemon)
        assert rss(daemon) - base < 16 * MIB
    finally:
        sock.close(linger=0)


def test_fifo_depth_times_frame_size_over_budget_fails_check_config(tmp_path):
    """Was: `policy: fifo:999999` with `max_shape [1024]` passed --check-config, then OOM 18 s after a frame."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text("ingest:\n  sensors:\n    cam: {kind: tensor, policy: 'fifo:999999', max_shape: [1024]}\n")
    out = subprocess.run([SAGE_RUNTIME, "--check-config", "--config", str(cfg)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 2
    assert "ingest.sensors.cam" in out.stderr and "capacity.sensor_bytes" in out.stderr


def test_max_sensors_is_one_number(tmp_path):
    for section in ("ingest", "salience"):
        cfg = tmp_path / f"{section}.yaml"
        cfg.write_text(f"{section}:\n  max_sensors: 300\n")
        out = subprocess.run([SAGE_RUNTIME, "--check-config", "--config", str(cfg)], capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 2 and "capacity.max_sensors" in out.stderr, out.stderr
    from sage_runtime.config import load_config

    cfg = load_config(environ={"SAGE_CAPACITY__MAX_SENSORS": "300"})
    assert cfg.ingest.max_sensors == cfg.salience.max_sensors == 300


def test_binary_keys_in_meta_are_refused_and_counted(daemon):
    """Was: a msgpack `bin` key in meta reached plugins and raised TypeError in the memory plugin."""
    pub = connect(daemon)
    header = msgpack.packb({"v": PROTOCOL_VERSION, "sensor": "m", "seq": 0, "ts_ns": 1, "kind": "text",
                            "meta": {b"raw": 1, "ok": {b"nested": 2}}}, use_bin_type=True)
    pub.send_parts([b"sensor/m", header, b"hello"])
    wait_for(lambda: rejected(daemon, "meta") == 1, timeout_s=10)
    assert "m" not in still_fine(daemon)["ingest"]["sensors"]


def test_a_huge_text_is_featurized_from_a_bounded_prefix():
    """Was: salience featurized a whole 30 MiB text: a 19,955 ms tick, the watchdog starved. The
    work is now that of the first max_elements characters; the length statistic still sees it all."""
    from sage_runtime.cognition.attention.adapters import text_features
    from sage_runtime.cognition.salience import N_STATS, featurize

    head = "the quick brown fox jumps over the lazy dog " * 400
    huge = head + "z" * (30 * MIB)
    a, b = featurize("text", huge, 64, 16384), featurize("text", huge[:16384], 64, 16384)
    assert np.array_equal(a[:64 - N_STATS], b[:64 - N_STATS])
    assert a[64 - N_STATS + 5] > b[64 - N_STATS + 5]  # log length: 30 MiB, not 16 KiB
    assert np.array_equal(text_features(huge, 128), text_features(head[:1024], 128))


def test_tcp_port_in_use_exits_2_naming_the_endpoint(tmp_path):
    """Was: exit 1 with a traceback."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        d = DaemonProcess(tmp_path, {"ingest": {"endpoints": [f"tcp://127.0.0.1:{port}"]}})
        d.start(wait=False)
        try:
            assert d.proc is not None and d.proc.wait(timeout=60) == 2
            log = d.log()
            assert f"tcp://127.0.0.1:{port}" in log and "ingest.endpoints" in log and "Traceback" not in log
        finally:
            d.kill()


def test_a_signal_in_the_first_moments_is_logged(tmp_path):
    """Was: SIGTERM in the first 0.3 s ended the process without a log line. The handler is now
    installed before the CLI's heavy imports (config alone is ~0.45 s); the signal is sent the moment
    /proc says it is caught, i.e. long before the daemon is ready."""
    import signal

    d = DaemonProcess(tmp_path, {})
    d.start(wait=False)
    assert d.proc is not None

    def caught():
        with open(f"/proc/{d.proc.pid}/status") as f:
            mask = next(int(line.split()[1], 16) for line in f if line.startswith("SigCgt:"))
        return mask & (1 << (signal.SIGTERM - 1))
    try:
        wait_for(caught, timeout_s=10, interval_s=0.002)
        d.signal(signal.SIGTERM)
        code = d.proc.wait(timeout=60)
        log = d.log()
        assert code == 0 and "SIGTERM" in log and "ready" not in log, (code, log)
    finally:
        d.kill()


def test_sagectl_outside_the_sockets_group_gets_a_clear_message(daemon, tmp_path):
    """Was: a PermissionError traceback and exit 1 (which sagectl documents as `degraded`)."""
    import os

    from sage_runtime import sagectl

    if os.getuid() != 0:
        pytest.skip("running sagectl as another user needs root")
    err = tmp_path / "stderr"
    pid = os.fork()
    if pid == 0:  # the child already holds the interpreter: drop to nobody, run sagectl's main
        code = 99
        f = open(err, "w")  # opened as root: nobody cannot reach pytest's 0700 tmp dir
        os.dup2(f.fileno(), 2)
        sys.stderr = f
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            code = sagectl.main(["--socket", str(daemon.run_dir / "control.sock"), "status"])
        except BaseException:  # noqa: BLE001 - a traceback is exactly what must not happen
            import traceback

            traceback.print_exc()
        finally:
            sys.stderr.flush()
            os._exit(code)
    _, raw = os.waitpid(pid, 0)
    text = err.read_text()
    assert os.waitstatus_to_exitcode(raw) == 2, text
    assert "permission denied" in text and "Traceback" not in text


def test_big_tensors_are_featurized_from_a_sample_with_the_same_features():
    """Was: 4 new 30.5 MiB vector sensors took a 550-1,180 ms tick (salience converted and fusion
    cleaned the whole tensor). Both now touch only the points they use; the features are unchanged."""
    import torch

    from sage_runtime.cognition.attention.adapters import resample
    from sage_runtime.cognition.salience import featurize

    rng = np.random.default_rng(0)
    vec = rng.normal(size=100_003).astype(np.float32)
    vec[::7] = np.nan
    clean = np.nan_to_num(vec)
    n, length = vec.size, 64
    pos = np.linspace(0.0, n - 1, length)
    lo = np.minimum(pos.astype(np.intp), n - 2)
    want = clean[lo] + (clean[lo + 1] - clean[lo]) * (pos - lo).astype(np.float32)
    assert np.allclose(resample(vec, length), want, atol=1e-6)
    img = torch.from_numpy(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8))
    assert np.allclose(featurize("tensor", img, 64, 16384), featurize("tensor", img.numpy().astype(np.float32), 64,
                                                                       16384), atol=1e-5)


def test_status_is_answered_within_1s_during_a_flood_of_big_frames(daemon):
    """Was: ingest drained every queued message before yielding, so a sender faster than the
    daemon kept `sagectl status` waiting (no reply within 5 s while 40 x 30 MiB texts arrived)."""
    import threading

    pub = connect(daemon)
    text = "f" * (int(1.9 * MIB))
    done = threading.Event()

    def flood():
        while not done.is_set():
            pub.text("flood", text)
    sender = threading.Thread(target=flood, daemon=True)
    sender.start()
    try:
        wait_for(lambda: daemon.status()["ingest"]["sensors"].get("flood", {}).get("received", 0) > 20, timeout_s=20)
        took = []
        for _ in range(10):
            t0 = time.monotonic()
            daemon.control(timeout_s=5.0).status()  # DaemonNotRunning past 5 s: the old starvation
            took.append(time.monotonic() - t0)
            time.sleep(0.1)
        # The median, not every call, within 1 s: the flooding thread shares this 2-core box with
        # the daemon, so a single reply can lose a scheduling slice (seen in whole-file runs).
        assert sorted(took)[len(took) // 2] < 1.0, took
    finally:
        done.set()
        sender.join(timeout=10)
    still_fine(daemon)


@pytest.mark.parametrize("parts, want", [
    ([b"a"] * 12, "too_many_parts"),
    ([b"a" * 600, b"b" * 600, b"c", b"d"], "oversize"),
    ([b"a" * 500, b"b" * 500], None),
])
def test_the_shared_bounded_receive_refuses_before_assembly_and_keeps_the_stream_aligned(parts, want):
    """Ingest and control read through one receive: a refused message leaves nothing kept and the
    next message arrives whole (its rest was read and dropped, not left to be taken as a new message)."""
    from sage_runtime.edges.receive import receive_bounded

    ctx = zmq.Context()  # its own: an inproc name is released asynchronously after close
    a, b = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
    try:
        a.bind("inproc://bounded-receive")
        b.connect("inproc://bounded-receive")
        b.send_multipart(parts)
        b.send_multipart([b"next", b"ok"])
        assert a.poll(5000)
        got = receive_bounded(a, 8, 1024)
        assert got.refused == want and got.count == len(parts) and got.size == sum(map(len, parts))
        assert [f.bytes for f in got.parts] == ([] if want else parts)
        after = receive_bounded(a, 8, 1024)
        assert after.refused is None and [f.bytes for f in after.parts] == [b"next", b"ok"]
    finally:
        a.close(linger=0)
        b.close(linger=0)
        ctx.term()
