"""The real daemon as a subprocess, real ZeroMQ clients, real sagectl."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time

import msgpack
import numpy as np
import pytest

from sage_runtime import statefile
from sage_runtime.client import SensorPublisher
from sage_runtime.cognition.trust_store import TRUST_FILE
from sage_runtime.cognition.trust import TrustLedger
from tests.harness import SAGECTL, DaemonProcess, confirmed_subscriber, wait_for

ECHO = {"plugins": {"enabled": ["tests.plugins_for_tests:Echo"]}, "tick": {"rate_hz": 100}}


@pytest.fixture
def daemon(tmp_path):
    d = DaemonProcess(tmp_path, ECHO).start()
    yield d
    d.kill()


def connect_publisher(d: DaemonProcess) -> SensorPublisher:
    """Connect and wait out ZeroMQ's slow-joiner window with a probe sensor the daemon must see."""
    pub = SensorPublisher(d.ingest)
    def seen():
        pub.event("probe", "hello")
        return "probe" in d.status()["ingest"]["sensors"]
    wait_for(seen, timeout_s=10, interval_s=0.1)
    return pub


def sagectl_json(d: DaemonProcess) -> tuple[int, dict]:
    out = subprocess.run([SAGECTL, "--socket", str(d.run_dir / "control.sock"), "status", "--json"],
                         capture_output=True, text=True, timeout=20)
    return out.returncode, json.loads(out.stdout)


def test_three_sensors_flow_to_results_and_counters_add_up(daemon):
    pub = connect_publisher(daemon)
    sub = confirmed_subscriber(daemon.results, pub)
    sent = {"cam": 0, "mic": 0, "bus": 0}
    rng = np.random.default_rng(0)
    for i in range(300):
        pub.tensor("cam", rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
        sent["cam"] += 1
        if i % 5 == 0:
            pub.text("mic", f"command number {i}")
            sent["mic"] += 1
        if i % 10 == 0:
            pub.event("bus", "tick", "info", n=i)
            sent["bus"] += 1
        time.sleep(0.001)
    results = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        msg = sub.recv(timeout_s=0.5)
        if msg is None:
            break
        results.append(msg)
    assert results, "no result messages arrived"
    first = results[0]
    assert first.topic == "result/echo"
    assert set(first.header) >= {"v", "plugin", "tick", "ts_ns", "state", "energy", "steps", "halt", "atp",
                                 "latency_ms", "inputs", "outputs"}
    assert first.header["halt"] in ("converged", "quota", "deadline", "max_steps")
    assert first.outputs["summary"].shape == (3,)
    texts = " ".join(m.outputs["text"] for m in results)
    assert "command number 0" in texts

    def settled():
        status = daemon.status()
        s = status["ingest"]["sensors"]
        return status if all(s.get(k, {}).get("received") == n and s[k]["pending"] == 0 for k, n in sent.items()) \
            else None
    wait_for(settled, timeout_s=10)
    code, status = sagectl_json(daemon)
    assert code == 0 and status["schema_version"] == 1 and status["health"] == "ok", status["health_reasons"]
    sensors = status["ingest"]["sensors"]
    cam = sensors["cam"]
    assert cam["accepted"] + cam["skipped"] == sent["cam"] and cam["accepted"] > 0
    for fifo in ("mic", "bus"):
        assert sensors[fifo]["accepted"] == sent[fifo] and sensors[fifo]["dropped"] == 0
    assert status["ingest"]["rejected"] == {}
    for key in ("uptime_s", "state", "atp", "tick", "plugins"):
        assert key in status
    assert set(status["tick"]) >= {"rate_hz", "count", "p50_ms", "p99_ms", "budget_ms", "overruns"}
    assert status["plugins"]["echo"]["runs"] > 0 and status["plugins"]["echo"]["status"] == "ok"
    pub.close()
    sub.close()
    code, took = daemon.stop()
    assert code == 0 and took < 5.0, daemon.log()


ONE_SLOT = {
    "plugins": {"enabled": ["tests.plugins_for_tests:Echo", "tests.plugins_for_tests:Recorder"],
                "inputs": {"echo": ["cam"], "recorder": ["cmd"]}},
    "ingest": {"sensors": {"cmd": {"kind": "text", "policy": "fifo:16"}}},
    "metabolic": {"policies": {s: {"max_active_plugins": 1} for s in ("WAKE", "FOCUS", "REST")}},
    "attention": {"selector_alpha": 1.0},  # rank by trust alone: the seeded ledger decides
    "cognition": {"max_wait_s": 0.2, "abundant_fraction": None},  # one slot even with ATP to spare
    "tick": {"rate_hz": 100, "max_rate_hz": 100},  # the camera (500 Hz) brings echo a frame every tick
}


def test_requests_wait_for_a_plugin_that_is_not_scheduled_and_each_is_served_once(tmp_path):
    """One plugin slot per tick, a camera feeding `echo` every tick, commands (a fifo sensor)
    feeding `recorder`, and a trust ledger that makes the selector prefer echo: the commands
    must wait for recorder's turn (max_wait_s), not vanish in the ticks echo wins."""
    d = DaemonProcess(tmp_path, ONE_SLOT)
    ledger = TrustLedger()
    for _ in range(50):
        for state in ("WAKE", "FOCUS", "REST"):
            ledger.update_expert(state, "echo", 1.0)
            ledger.update_expert(state, "recorder", 0.0)
    d.state_dir.mkdir(parents=True, exist_ok=True)
    statefile.write_atomic(d.state_dir / TRUST_FILE, ledger.snapshot(), kind="trust")
    d.start()
    streaming = threading.Event()

    def camera() -> None:
        cam = SensorPublisher(d.ingest)  # its own socket: ZeroMQ sockets stay in one thread
        rng = np.random.default_rng(0)
        while streaming.is_set():
            cam.tensor("cam", rng.integers(0, 255, (16, 16, 3), dtype=np.uint8))
            time.sleep(0.002)
        cam.close()

    streaming.set()
    feeder = threading.Thread(target=camera, daemon=True)
    try:
        assert d.control().call("trust")["restore"] == "restored"
        feeder.start()
        pub = connect_publisher(d)
        n = 40
        for i in range(n):
            pub.text("cmd", f"command {i}")
            time.sleep(0.05)

        def served():
            status = d.status()
            return status if status["plugins"]["recorder"]["held_frames"] == 0 \
                and status["ingest"]["sensors"]["cmd"]["accepted"] == n else None
        status = wait_for(served, timeout_s=10)  # while the camera still streams
        delivered = [int(line.split()[1]) for line in
                     (d.state_dir / "plugins" / "recorder" / "delivered.txt").read_text().splitlines()
                     if line.startswith("cmd ")]
        assert sorted(delivered) == list(range(n)), "every command reaches the plugin exactly once"
        assert status["plugins"]["recorder"]["held_dropped"] == 0
        assert status["plugins"]["echo"]["runs"] > 0  # the camera kept its plugin busy meanwhile
        pub.close()
    finally:
        streaming.clear()
        if feeder.is_alive():
            feeder.join(5)
        code, _ = d.stop()
    assert code == 0, d.log()


def test_sagectl_commands_and_not_running_exit_code(daemon, tmp_path):
    sock = str(daemon.run_dir / "control.sock")
    for cmd in (["stats"], ["config"], ["plugins"]):
        out = subprocess.run([SAGECTL, "--socket", sock, *cmd], capture_output=True, text=True, timeout=20)
        assert out.returncode == 0, out.stderr
    human = subprocess.run([SAGECTL, "--socket", sock, "status"], capture_output=True, text=True, timeout=20)
    assert "tick" in human.stdout and "echo" in human.stdout
    code, took = daemon.stop()
    assert code == 0
    gone = subprocess.run([SAGECTL, "--socket", sock, "status"], capture_output=True, text=True, timeout=20)
    assert gone.returncode == 3 and "not running" in gone.stderr


def test_bad_input_is_rejected_counted_and_valid_frames_still_arrive(tmp_path):
    d = DaemonProcess(tmp_path, {**ECHO, "ingest": {"max_message_bytes": 1 << 20, "max_elements": 1 << 18}}).start()
    try:
        pid = d.status()["pid"]
        pub = connect_publisher(d)
        good = lambda i: pub.tensor("good", np.full((8,), i, np.float32))  # noqa: E731
        hdr = lambda **kw: msgpack.packb({"v": 1, "sensor": "x", "seq": 0, "ts_ns": 1, "kind": "tensor",  # noqa: E731
                                          "dtype": "float32", "shape": [2], **kw})
        f32 = np.ones(2, np.float32).tobytes()
        bad = {
            "part_count": [b"sensor/x", hdr()],
            "header_msgpack": [b"sensor/x", b"\xc1\xc1\xc1", f32],
            "header_type": [b"sensor/x", msgpack.packb("a string"), f32],
            "missing_key": [b"sensor/x", msgpack.packb({"v": 1, "sensor": "x", "ts_ns": 1, "kind": "tensor",
                                                         "dtype": "float32", "shape": [2]}), f32],
            "key_type": [b"sensor/x", hdr(seq="zero"), f32],
            "dtype": [b"sensor/x", hdr(dtype="float128"), f32],
            "payload_size": [b"sensor/x", hdr(), f32 + b"\0"],
            "shape": [b"sensor/x", hdr(shape=[-1, 2]), f32],
            "too_large": [b"sensor/x", hdr(shape=[1 << 16, 1 << 16]), f32],
            "oversize": [b"sensor/x", hdr(dtype="uint8", shape=[(1 << 20) + 10]), b"\0" * ((1 << 20) + 10)],
            "utf8": [b"sensor/x", hdr(kind="text"), b"\xff\xfe\xfd"],
            "non_finite": [b"sensor/x", hdr(), np.array([1, np.inf], np.float32).tobytes()],
            "sensor_id": [b"sensor/no spaces", hdr(sensor="no spaces"), f32],
            "version": [b"sensor/x", hdr(v=9), f32],
            "topic": [b"\xff\xfe", hdr(), f32],
            "kind": [b"sensor/x", hdr(kind="smell"), f32],
        }
        for i, (reason, parts) in enumerate(bad.items()):
            good(2 * i)
            pub.send_parts(parts)
            good(2 * i + 1)
            time.sleep(0.005)
        n_good = 2 * len(bad)

        def counted():
            s = d.status()
            return s if s["ingest"]["sensors"].get("good", {}).get("received") == n_good \
                and sum(s["ingest"]["rejected"].values()) == len(bad) else None
        status = wait_for(counted, timeout_s=10)
        assert status["ingest"]["rejected"] == {reason: 1 for reason in bad}
        assert "x" not in status["ingest"]["sensors"], "a rejected message must never register a sensor"
        assert status["pid"] == pid and d.proc.poll() is None
        good_s = status["ingest"]["sensors"]["good"]
        assert good_s["accepted"] + good_s["skipped"] + good_s["pending"] == n_good
        pub.close()
    finally:
        code, _ = d.stop()
    assert code == 0


def test_sigterm_during_load_exits_zero_quickly(daemon):
    pub = connect_publisher(daemon)
    for _ in range(50):
        pub.tensor("cam", np.zeros((120, 160, 3), np.uint8))
    code, took = daemon.stop()
    assert code == 0 and took < 5.0


def test_bad_config_exits_2_naming_the_key(tmp_path):
    d = DaemonProcess(tmp_path, {"tick": {"rate_hz": "fast"}})
    d.start(wait=False)
    assert d.proc.wait(timeout=30) == 2
    assert "tick.rate_hz" in d.log()


def test_a_second_daemon_on_the_same_runtime_dir_exits_3_and_leaves_the_first_alone(daemon, tmp_path):
    (tmp_path / "second").mkdir()
    second = DaemonProcess(tmp_path / "second", ECHO, env={"SAGE_RUNTIME_DIR": str(daemon.run_dir)})
    second.start(wait=False)
    assert second.proc.wait(timeout=60) == 3
    assert "another sage-runtime is running" in second.log() and "Traceback" not in second.log()
    assert daemon.status()["tick"]["count"] > 0  # its sockets were not removed by the refused one
    assert (daemon.run_dir / "control.sock").exists()


def test_a_plugin_whose_setup_fails_exits_2_naming_it(tmp_path):
    """--check-config passes (weights are not loaded there); the real start loads them and fails."""
    d = DaemonProcess(tmp_path, {"plugins": {"enabled": ["vision"],
                                             "options": {"vision": {"weights": str(tmp_path / "absent.pt")}}}})
    d.start(wait=False)
    assert d.proc.wait(timeout=60) == 2
    assert "plugin vision: setup failed" in d.log() and "Traceback" not in d.log()
    assert not (d.run_dir / "control.sock").exists()  # teardown ran: sockets removed


def test_sighup_applies_live_keys_and_reports_the_rest(daemon):
    import yaml
    cfg = yaml.safe_load(daemon.config_path.read_text())
    cfg["tick"]["rate_hz"] = 50
    cfg["results"]["sndhwm"] = 7
    daemon.config_path.write_text(yaml.safe_dump(cfg))
    daemon.signal(signal.SIGHUP)
    status = wait_for(lambda: (s := daemon.status())["last_reload"] and s, timeout_s=10)
    assert status["last_reload"]["ok"] is True
    assert "tick.rate_hz" in status["last_reload"]["applied"]
    assert "results.sndhwm" in status["last_reload"]["needs_restart"]
    wait_for(lambda: daemon.status()["tick"]["rate_hz"] == 50, timeout_s=5)
    daemon.config_path.write_text("tick: [not, a, map")
    daemon.signal(signal.SIGHUP)
    status = wait_for(lambda: (s := daemon.status())["last_reload"]["ok"] is False and s, timeout_s=10)
    assert "not valid YAML" in status["last_reload"]["error"]
    assert status["tick"]["rate_hz"] == 50  # the old config stays



def test_sighup_refuses_a_misspelt_or_mistyped_plugin_option_naming_it(daemon):
    import yaml
    cfg = yaml.safe_load(daemon.config_path.read_text())
    for options, key in (({"output_kbb": 1}, "plugins.options.echo.output_kbb: unknown key"),
                         ({"output_kb": "lots"}, "plugins.options.echo.output_kb")):
        cfg["plugins"]["options"] = {"echo": options}
        cfg["tick"]["rate_hz"] = 40  # would be applied live if the reload were accepted
        daemon.config_path.write_text(yaml.safe_dump(cfg))
        before = (daemon.status()["last_reload"] or {}).get("at")
        daemon.signal(signal.SIGHUP)
        status = wait_for(lambda: (s := daemon.status())["last_reload"] and s["last_reload"]["at"] != before and s,
                          timeout_s=10)
        assert status["last_reload"]["ok"] is False and key in status["last_reload"]["error"]
        assert status["tick"]["rate_hz"] == 100  # the running config stays
