"""Zenoh bridge benchmark: frame-to-result latency and throughput through a daemon's Zenoh edge vs a
raw Zenoh put/subscribe echo in the same run, and the bridge's publish hop vs the ZeroMQ one.

Topology: this process opens a Zenoh peer listening on a loopback port; the daemon (robot `bench`,
Ack plugin) and a raw peer (a second process: subscribe `raw/in`, put the same bytes on `raw/out`;
count what arrives on `raw/tp`) both connect to it, so each path is one TCP hop each way.
Latency is a round trip on both (frame in, result or echo back); throughput is one way on both
(a blocking burst, counted by the receiver: the daemon's ingest `received`, the raw peer's count).

Also the same daemon's frame-to-result latency over ZeroMQ ipc (bench_transport's measurement), so
the bridge's cost shows against both raw Zenoh and the existing transport.

Run: .venv/bin/python benchmarks/bench_zenoh.py [--quick]   (writes benchmarks/results/zenoh.json)
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import msgpack
import numpy as np
import zenoh

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import machine, pct, save  # noqa: E402
from benchmarks.bench_transport import daemon_latency  # noqa: E402
from sage_runtime.client import ResultSubscriber, SensorPublisher  # noqa: E402
from sage_runtime.wire import encode_ingest  # noqa: E402
from tests.harness import DaemonProcess, wait_for  # noqa: E402

SIZES = {"64B": 64, "64KiB": 64 * 1024, "1MiB": 1024 * 1024}
RAW_ECHO = """
import json, sys, threading, zenoh
conf = zenoh.Config()
conf.insert_json5("mode", '"peer"')
conf.insert_json5("connect/endpoints", json.dumps([sys.argv[1]]))
conf.insert_json5("listen/endpoints", "[]")
conf.insert_json5("scouting/multicast/enabled", "false")
s = zenoh.open(conf)
pub = s.declare_publisher("raw/out", congestion_control=zenoh.CongestionControl.BLOCK)
sub = s.declare_subscriber("raw/in", lambda x: pub.put(x.payload, attachment=x.attachment))
count = [0]
def on_tp(x):
    count[0] += 1
tp = s.declare_subscriber("raw/tp", on_tp)
q = s.declare_queryable("raw/count", lambda query: query.reply("raw/count", str(count[0]).encode()))
tok = s.liveliness().declare_token("raw/alive")
sys.stdin.read()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Inbox:
    """Samples on one key expression, waited on with a condition (Zenoh calls back on its threads)."""

    def __init__(self, session: zenoh.Session, key: str) -> None:
        self.cond = threading.Condition()
        self.items: list[tuple[float, bytes, bytes]] = []
        self.sub = session.declare_subscriber(key, self._on)

    def _on(self, sample: zenoh.Sample) -> None:
        att = sample.attachment.to_bytes() if sample.attachment is not None else b""
        with self.cond:
            self.items.append((time.perf_counter(), sample.payload.to_bytes(), att))
            self.cond.notify_all()

    def wait_for(self, predicate, timeout_s: float = 5.0):
        with self.cond:
            if not self.cond.wait_for(lambda: predicate(self.items), timeout=timeout_s):
                raise TimeoutError("no such sample")
            return predicate(self.items)


def raw_latency(session: zenoh.Session, inbox: Inbox, nbytes: int, n: int) -> list[float]:
    frame = np.zeros(nbytes, np.uint8).tobytes()
    out = []
    for i in range(n + 5):
        header = msgpack.packb({"seq": i})
        inbox.items.clear()
        t0 = time.perf_counter()
        session.put("raw/in", frame, attachment=header)
        inbox.wait_for(lambda items: any(att == header for _, _, att in items))
        if i >= 5:
            out.append((time.perf_counter() - t0) * 1e3)
    return out


def seen(items: list, sensor: str, seq: int) -> bool:
    return any(msgpack.unpackb(att)["outputs"][0]["value"].get(sensor) == seq for _, _, att in items)


def bridge_latency(session: zenoh.Session, inbox: Inbox, nbytes: int, n: int) -> list[float]:
    """Put a frame on `sage/bench/sensor/<s>`, wait for the Ack result that names its seq."""
    sensor = f"zlat{nbytes}"  # bench_transport's daemon_latency uses lat<nbytes>
    frame = np.zeros(nbytes, np.uint8)
    out = []
    for i in range(n + 5):
        _, header, payload = encode_ingest(sensor, i, "tensor", frame, ts_ns=time.time_ns())
        inbox.items.clear()
        t0 = time.perf_counter()
        session.put(f"sage/bench/sensor/{sensor}", bytes(payload), attachment=header)
        inbox.wait_for(lambda items: seen(items, sensor, i))
        if i >= 5:
            out.append((time.perf_counter() - t0) * 1e3)
    return out


def quiet_count(count, quiet_s: float = 1.0) -> tuple[int, float]:
    """Poll `count()` until it has not changed for `quiet_s`; (last value, when it last changed)."""
    last, changed = -1, time.perf_counter()
    while time.perf_counter() - changed < quiet_s:
        got = count()
        if got != last:
            last, changed = got, time.perf_counter()
        time.sleep(0.01)
    return last, changed


def raw_throughput(session: zenoh.Session, nbytes: int, n: int) -> dict:
    """One way, as the bridge's ingest: a blocking burst on `raw/tp`; the echo process counts what it
    receives (asked with a query until the count stops changing)."""
    frame = np.zeros(nbytes, np.uint8).tobytes()
    pub = session.declare_publisher("raw/tp", congestion_control=zenoh.CongestionControl.BLOCK)
    base = _raw_count(session)
    t0 = time.perf_counter()
    for i in range(n):
        pub.put(frame, attachment=msgpack.packb({"seq": i}))
    got, end = quiet_count(lambda: _raw_count(session) - base)
    pub.undeclare()
    return {"msgs_per_s": round(got / (end - t0), 1), "sent": n, "received": got}


def _raw_count(session: zenoh.Session) -> int:
    return next(int(r.ok.payload.to_bytes()) for r in session.get("raw/count", timeout=5.0) if r.ok is not None)


def bridge_throughput(session: zenoh.Session, d: DaemonProcess, nbytes: int, n: int) -> dict:
    """Frames per second the daemon admits (its ingest `received` counter) from a blocking burst;
    frames past `zenoh.max_pending` waiting for the loop are dropped and counted."""
    dropped0 = d.status()["zenoh"]["ingest_dropped_backlog"]
    sensor = f"tp{nbytes}"
    frame = np.zeros(nbytes, np.uint8)
    pub = session.declare_publisher(f"sage/bench/sensor/{sensor}", congestion_control=zenoh.CongestionControl.BLOCK)
    t0 = time.perf_counter()
    for i in range(n):
        _, header, payload = encode_ingest(sensor, i, "tensor", frame, ts_ns=1)
        pub.put(bytes(payload), attachment=header)
    got, end = quiet_count(lambda: d.status()["ingest"]["sensors"].get(sensor, {}).get("received", 0))
    pub.undeclare()
    dropped = d.status()["zenoh"]["ingest_dropped_backlog"] - dropped0
    return {"frames_per_s": round(got / (end - t0), 1), "sent": n, "admitted": got, "dropped_backlog": dropped}


def publish_hop(session: zenoh.Session, d: DaemonProcess, inbox: Inbox, seconds: float) -> dict:
    """Same results, two transports: arrival over Zenoh minus arrival over ZeroMQ, matched by tick,
    while frames arrive at 100 Hz."""
    zmq_at: dict[int, float] = {}
    sub = ResultSubscriber(d.results, topics=("result/",))
    stop = threading.Event()

    def pump() -> None:
        while not stop.is_set():
            msg = sub.recv(timeout_s=0.2)
            if msg is not None and msg.topic == "result/ack":
                zmq_at[msg.header["tick"]] = time.perf_counter()
    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    time.sleep(1.0)  # the SUB socket's join; results before it are not counted
    inbox.items.clear()
    frame = np.zeros(64, np.uint8)
    end, i = time.monotonic() + seconds, 0
    while time.monotonic() < end:
        _, header, payload = encode_ingest("hop", i, "tensor", frame, ts_ns=time.time_ns())
        session.put("sage/bench/sensor/hop", bytes(payload), attachment=header)
        i += 1
        time.sleep(0.01)
    time.sleep(0.5)
    stop.set()
    thread.join()
    sub.close()
    deltas = [(at - zmq_at[h["tick"]]) * 1e3 for at, _, att in list(inbox.items)
              if (h := msgpack.unpackb(att))["tick"] in zmq_at]
    return {"zenoh_minus_zmq_ms": pct(deltas), "results_matched": len(deltas)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer samples (smoke)")
    args = ap.parse_args()
    n_lat, n_tp = (30, 200) if args.quick else (200, 2000)
    port = free_port()
    endpoint = f"tcp/127.0.0.1:{port}"
    conf = zenoh.Config()
    conf.insert_json5("mode", '"peer"')
    conf.insert_json5("listen/endpoints", json.dumps([endpoint]))
    conf.insert_json5("scouting/multicast/enabled", "false")
    session = zenoh.open(conf)
    ready = threading.Event()
    lv = session.liveliness().declare_subscriber("sage/bench/alive", lambda s: ready.set(), history=True)
    raw_ready = threading.Event()
    lv_raw = session.liveliness().declare_subscriber("raw/alive", lambda s: raw_ready.set(), history=True)
    with tempfile.TemporaryDirectory() as tmp:
        d = DaemonProcess(Path(tmp), {
            "plugins": {"enabled": ["benchmarks.ack_plugin:Ack"]},
            "tick": {"rate_hz": 100, "wake_on_input": True},
            # throughput sensors queue (the slots are allocated up front: depth x frame size)
            "ingest": {"sensors": {f"tp{n}": {"policy": f"fifo:{depth}", "dtype": "uint8", "max_shape": [n]}
                                   for n, depth in ((64, 1024), (65536, 128), (1048576, 16))}},
            "zenoh": {"enabled": True, "robot_id": "bench", "connect": [endpoint]}})
        echo = subprocess.Popen([sys.executable, "-c", RAW_ECHO, endpoint], stdin=subprocess.PIPE)
        try:
            d.start()
            if not (ready.wait(60) and raw_ready.wait(60)):
                raise TimeoutError("daemon or raw echo never joined")
            results = Inbox(session, "sage/bench/result/ack")
            raw_out = Inbox(session, "raw/out")
            report: dict = {"machine": machine(), "zenoh": "eclipse-zenoh (python) " + getattr(zenoh, "__version__", ""),
                            "note": "2 shared CPU cores under other jobs: figures are noisy", "sizes": {}}
            pub = SensorPublisher(d.ingest)
            sub = ResultSubscriber(d.results, topics=("result/",))
            wait_for(lambda: (pub.tensor("warm", np.zeros(1, np.uint8)), sub.recv(0.2))[1], timeout_s=20)
            for name, nbytes in SIZES.items():
                raw = pct(raw_latency(session, raw_out, nbytes, n_lat))
                bridge = pct(bridge_latency(session, results, nbytes, n_lat))
                while sub.recv(timeout_s=0.2) is not None:  # results of the Zenoh runs queued here too
                    pass
                zmq_path = pct(daemon_latency(d, pub, sub, nbytes, n_lat))
                tp_n = n_tp if nbytes <= 65536 else n_tp // 10
                report["sizes"][name] = {
                    "latency": {"raw_zenoh_echo": raw, "bridge_frame_to_result": bridge,
                                "zeromq_frame_to_result": zmq_path,
                                "bridge_over_raw_p50": round(bridge["p50_ms"] / raw["p50_ms"], 2),
                                "bridge_over_zeromq_p50": round(bridge["p50_ms"] / zmq_path["p50_ms"], 2)},
                    "throughput": {"raw_zenoh_put_subscribe": raw_throughput(session, nbytes, tp_n),
                                   "bridge_ingest": bridge_throughput(session, d, nbytes, tp_n)},
                }
                print(name, json.dumps(report["sizes"][name]), flush=True)
            pub.close()
            sub.close()
            report["publish_hop"] = publish_hop(session, d, results, 5.0 if args.quick else 15.0)
            report["daemon_zenoh_counters"] = d.status()["zenoh"]
            print("publish hop", json.dumps(report["publish_hop"]))
        finally:
            echo.kill()
            d.stop()
            del lv, lv_raw
            session.close()
    print("wrote", save("zenoh", report))


if __name__ == "__main__":
    main()
