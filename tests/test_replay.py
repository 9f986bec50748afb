"""Deterministic replay (`sage-runtime --replay IN.mcap --deterministic --record-results OUT.mcap`):
a real daemon records a real client with `sagectl record`; the recording is replayed by real
`sage-runtime` processes with the built-in vision, language and memory plugins, and their results
files are compared byte for byte (every header field included: in this mode `ts_ns`, `age_ms` and
`latency_ms` are virtual time too), one run with a CPU hog beside it."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest

pytest.importorskip("mcap")
from mcap.reader import make_reader  # noqa: E402

from sage_runtime.client import SensorPublisher  # noqa: E402
from sage_runtime.clock import VirtualClock  # noqa: E402
from sage_runtime.plugin.host import JobPolicy, PluginHost  # noqa: E402
from sage_runtime.plugin.contract import IRPPlugin, PluginInputs  # noqa: E402
from sage_runtime.records import Frame  # noqa: E402
from sage_runtime.replay import CostedPlugin  # noqa: E402
from tests.harness import SAGE_RUNTIME, SAGECTL, DaemonProcess, ipc_only, wait_for  # noqa: E402

CAMERA_FRAMES = 20
#: 15 virtual ms a step: vision and language jobs then end on their deadline or budget as well as
#: by their own halting rule, so the scheduling (not only the plugins' arithmetic) is compared.
REPLAY = {"plugins": {"enabled": ["vision", "language", "memory"]}, "replay": {"default_step_ms": 15}}


@pytest.fixture(scope="module")
def recording(tmp_path_factory) -> Path:
    """A daemon (no plugins) recorded by `sagectl record` while a client publishes 2 s of the
    demo's camera (10 Hz), IMU (10 Hz) and garbled speech commands (2 Hz)."""
    from sage_plugins.demo import DemoSources

    tmp = tmp_path_factory.mktemp("rec")
    d = DaemonProcess(tmp).start()
    out = tmp / "in.mcap"
    try:
        rec = subprocess.Popen([SAGECTL, "--socket", d.control_endpoint, "record", str(out), "--json"],
                               env=d.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_for(lambda: d.control().call("tap")["subscriptions"] == 1, timeout_s=20)
        send = DemoSources(d.ingest, rate_hz=10).generators()
        pub = SensorPublisher(d.ingest)
        sent = 0
        for k in range(CAMERA_FRAMES):
            send["camera"](pub, k)
            send["imu"](pub, 2 * k)
            sent += 2
            if k % 5 == 0:
                send["speech"](pub, k)
                sent += 1
            time.sleep(0.1)
        wait_for(lambda: d.control().call("tap")["sent"] == sent, timeout_s=10)
        rec.send_signal(signal.SIGINT)
        _, stderr = rec.communicate(timeout=30)
        assert rec.returncode == 0, stderr
        pub.close()
    finally:
        d.kill()
    return out


def replay(tmp: Path, recording: Path, config: dict[str, Any], name: str,
           received: list[bytes] | None = None) -> tuple[Path, str, float]:
    """One `sage-runtime --replay ... --deterministic --record-results` process: (results file, log,
    seconds). With `received`, a SUB on the replay's results socket appends what it gets."""
    import yaml

    run = tmp / name
    run.mkdir()
    cfg_path = run / "config.yaml"
    cfg = ipc_only(config)
    cfg["plugins"] = config["plugins"]
    cfg_path.write_text(yaml.safe_dump(cfg))
    out = run / "results.mcap"
    env = {**os.environ, "SAGE_RUNTIME_DIR": str(run / "run"), "SAGE_STATE_DIR": str(run / "state")}
    t0 = time.monotonic()
    proc = subprocess.Popen([SAGE_RUNTIME, "--replay", str(recording), "--deterministic", "--record-results",
                             str(out), "--config", str(cfg_path)], env=env, stderr=subprocess.PIPE, text=True)
    sub = None if received is None else threading.Thread(
        target=subscribe, args=(run / "run" / "replay" / "results.sock", proc, received))
    if sub is not None:
        sub.start()
    _, stderr = proc.communicate(timeout=300)
    took = time.monotonic() - t0
    if sub is not None:
        sub.join(10)
    assert proc.returncode == 0, stderr[-3000:]
    return out, stderr, took


def subscribe(path: Path, proc: subprocess.Popen, received: list[bytes]) -> None:
    """Connect to the results socket as soon as it exists; read until the replay has exited."""
    import zmq

    while not path.exists() and proc.poll() is None:
        time.sleep(0.005)
    sock = zmq.Context.instance().socket(zmq.SUB)
    sock.setsockopt(zmq.SUBSCRIBE, b"")
    sock.connect(f"ipc://{path}")
    try:
        while proc.poll() is None or sock.poll(200):
            if sock.poll(50):
                received.append(msgpack.packb(sock.recv_multipart(), use_bin_type=True))
    finally:
        sock.close(linger=0)


def messages(path: Path) -> list[tuple[str, int, bytes]]:
    with open(path, "rb") as f:
        return [(c.topic, m.log_time, m.data) for _, c, m in make_reader(f).iter_messages(log_time_order=True)]


def headers(msgs: list[tuple[str, int, bytes]]) -> list[dict[str, Any]]:
    return [msgpack.unpackb(msgpack.unpackb(data)[1]) for topic, _, data in msgs if topic == "/sage/results"]


@contextlib.contextmanager
def burning() -> Iterator[None]:
    """A CPU hog per core while held (the replay's scheduling must not depend on it)."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 1)]
    try:
        yield
    finally:
        for p in procs:
            p.kill()
            p.wait()


def test_two_replays_publish_identical_results_even_under_load(recording, tmp_path):
    live: list[bytes] = []
    first, log1, took1 = replay(tmp_path, recording, REPLAY, "quiet", received=live)
    with burning():
        second, _, took2 = replay(tmp_path, recording, REPLAY, "loaded")
    a, b = messages(first), messages(second)
    results = headers(a)
    by_plugin = {p: [h for h in results if h["plugin"] == p] for p in ("vision", "language", "memory")}
    assert all(by_plugin.values()), {p: len(v) for p, v in by_plugin.items()}
    assert sum(h["steps"] for h in by_plugin["vision"]) > 0 and sum(h["steps"] for h in by_plugin["language"]) > 0
    assert all(h["halt"] != "error" for h in results), [h.get("error") for h in results]
    assert a == b  # every message, byte for byte, at the same virtual log time
    published = int(log1.split(" messages published")[0].rsplit(" ", 1)[1])
    assert published == len(a)  # what the results socket sent is what the file holds
    # A subscriber that joined during warmup got the same messages, byte for byte (all, or a tail).
    assert live and live == [data for _, _, data in a][-len(live):], (len(live), len(a))
    print(f"replay: {len(results)} results, {len(a) - len(results)} state messages, {len(live)} received live, "
          f"{took1:.1f} s quiet, {took2:.1f} s under load")


def test_the_cost_model_decides_the_schedule(recording, tmp_path):
    """Dearer steps buy fewer of them: the replay follows its cost model, not the machine."""
    cheap, _, _ = replay(tmp_path, recording, {**REPLAY, "replay": {"default_step_ms": 1}}, "cheap")
    dear, _, _ = replay(tmp_path, recording, {**REPLAY, "replay": {"default_step_ms": 40}}, "dear")
    steps = {name: sum(h["steps"] for h in headers(messages(path)) if h["plugin"] == "vision")
             for name, path in (("cheap", cheap), ("dear", dear))}
    assert steps["cheap"] > steps["dear"], steps


def test_replay_refuses_what_it_cannot_play(tmp_path):
    bad = tmp_path / "not.mcap"
    bad.write_bytes(b"not an mcap file")
    env = {**os.environ, "SAGE_RUNTIME_DIR": str(tmp_path / "run")}
    for args, says in ((["--replay", str(bad), "--deterministic"], "not a readable recording"),
                       (["--replay", str(bad)], "--replay runs with --deterministic"),
                       (["--deterministic"], "go with --replay")):
        proc = subprocess.run([SAGE_RUNTIME, *args], env=env, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2 and says in proc.stderr, (args, proc.stderr)


class Counter(IRPPlugin):
    """A plugin whose energy halves per step and never converges, for the synchronous host."""

    name = "counter"
    max_steps = 10
    input_policy = "queue"

    def init_state(self, inputs: PluginInputs) -> Any:
        return 1.0 if inputs.frames else None

    def step(self, state: Any) -> Any:
        return state / 2

    def project(self, state: Any) -> Any:
        return state

    def energy(self, state: Any) -> float:
        return float(state)

    def halt(self, state: Any, history: list[float]) -> str | None:
        return None

    def outputs(self, state: Any) -> dict[str, Any]:
        return {"x": state}


def test_a_synchronous_host_steps_as_far_as_its_credit_in_virtual_time():
    lane = VirtualClock(10**18)
    plugin = CostedPlugin(Counter(), lane, step_ms=5.0)
    host = PluginHost(plugin, breaker_failures=3, breaker_cooldown_s=1.0, clock=lane, cost_clock=lane.monotonic_ns,
                      synchronous=True, policy=JobPolicy(max_age_ms=1000.0))
    assert host._thread is None
    host.cost.observe(5.0)
    host.init_cost.observe(5.0)
    host.submit(PluginInputs(tick=1, frames={"s": Frame("s", 0, 10**18, "text", "x")}))
    host.deposit(5.0 + 3 * 5.0)  # the start and three steps
    host.drain()
    assert host._job is not None and host._job.steps == 3 and lane.now_ns == 10**18 + 20_000_000
    host.deposit(100.0)
    host.drain()
    done = host.take_finished()
    assert [d.result.halt for d in done] == ["max_steps"] and done[0].result.steps == 10
    assert done[0].result.latency_ms == pytest.approx(55.0)  # the start and ten steps of 5 virtual ms
    assert done[0].result.atp_spent == pytest.approx(55.0)
    host.close()
