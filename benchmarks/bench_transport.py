"""Transport benchmark: frame-to-result latency through the daemon vs one raw pyzmq hop, ingest
throughput vs raw pyzmq, tick lateness at 100 Hz, and the idle daemon's CPU use.

Run: .venv/bin/python benchmarks/bench_transport.py [--quick]   (writes benchmarks/results/transport.json)
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import machine, pct, save  # noqa: E402
from sage_runtime.client import ResultSubscriber, SensorPublisher  # noqa: E402
from sage_runtime.wire import encode_ingest  # noqa: E402
from tests.harness import DaemonProcess, wait_for  # noqa: E402

SIZES = {"64B": 64, "64KiB": 64 * 1024, "1MiB": 1024 * 1024, "6MiB": 6 * 1024 * 1024}
CONFIG = {
    "plugins": {"enabled": ["benchmarks.ack_plugin:Ack"]},
    "tick": {"rate_hz": 100, "wake_on_input": True},
    "ingest": {"reject_non_finite": True},
}


def connected(pub: zmq.Socket, sub: zmq.Socket, timeout_s: float = 20.0) -> None:
    """Wait out ZeroMQ's slow joiner: probe until the subscriber hears one, then drain."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        pub.send_multipart(encode_ingest("probe", 0, "tensor", np.zeros(1, np.uint8), ts_ns=1))
        if sub.poll(100):
            while sub.poll(50):
                sub.recv_multipart()
            return
    raise TimeoutError("PUB/SUB never connected")


def raw_hop_latency(tmp: Path, nbytes: int, n: int) -> list[float]:
    """One PUB -> SUB hop over ipc, the same three-part message the daemon receives."""
    ctx = zmq.Context.instance()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    ep = f"ipc://{tmp}/raw-{nbytes}.sock"
    sub.bind(ep)
    pub = ctx.socket(zmq.PUB)
    pub.connect(ep)
    frame = np.zeros(nbytes, np.uint8)
    connected(pub, sub)
    out = []
    for i in range(n + 5):
        t0 = time.perf_counter()
        pub.send_multipart(encode_ingest("raw", i, "tensor", frame, ts_ns=time.time_ns()), copy=False)
        if not sub.poll(5000):
            raise TimeoutError("raw hop: message lost")
        sub.recv_multipart(copy=False)
        if i >= 5:
            out.append((time.perf_counter() - t0) * 1e3)
    pub.close(0)
    sub.close(0)
    return out


def daemon_latency(d: DaemonProcess, pub: SensorPublisher, sub: ResultSubscriber, nbytes: int, n: int) -> list[float]:
    """Send one frame, wait for the result that names its seq; repeat."""
    frame = np.zeros(nbytes, np.uint8)
    sensor = f"lat{nbytes}"
    out = []
    for i in range(n + 5):
        t0 = time.perf_counter()
        seq = pub.tensor(sensor, frame)
        while True:
            msg = sub.recv(timeout_s=2.0)
            if msg is None:
                raise TimeoutError(f"no result for {sensor} seq {seq}")
            if msg.outputs.get("seen", {}).get(sensor) == seq:
                break
        if i >= 5:
            out.append((time.perf_counter() - t0) * 1e3)
    return out


def raw_throughput(tmp: Path, nbytes: int, n: int) -> float:
    ctx = zmq.Context.instance()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.setsockopt(zmq.RCVHWM, 0)
    ep = f"ipc://{tmp}/rawtp-{nbytes}.sock"
    sub.bind(ep)
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.SNDHWM, 0)
    pub.connect(ep)
    connected(pub, sub)
    frame = np.zeros(nbytes, np.uint8)
    t0 = time.perf_counter()
    for i in range(n):
        pub.send_multipart(encode_ingest("raw", i, "tensor", frame, ts_ns=1), copy=False)
    for _ in range(n):
        sub.recv_multipart(copy=False)
    rate = n / (time.perf_counter() - t0)
    pub.close(0)
    sub.close(0)
    return rate


def daemon_throughput(d: DaemonProcess, pub: SensorPublisher, nbytes: int, n: int) -> tuple[float, int]:
    """Frames per second the daemon validates and admits (its `received` counter) while a client
    sends n as fast as ZeroMQ takes them, and how many ZeroMQ dropped at its high-water marks
    (the daemon never sees those: PUB/SUB drops silently when a queue is full)."""
    sensor = f"tp{nbytes}"
    frame = np.zeros(nbytes, np.uint8)
    t0 = time.perf_counter()
    for _ in range(n):
        pub.tensor(sensor, frame)
    last, last_change = -1, time.perf_counter()
    while time.perf_counter() - last_change < 1.0:  # until the counter has been still for 1 s
        got = d.status()["ingest"]["sensors"].get(sensor, {}).get("received", 0)
        if got != last:
            last, last_change = got, time.perf_counter()
        time.sleep(0.01)
    return last / (last_change - t0), n - last


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer samples (CI smoke)")
    args = ap.parse_args()
    n_lat = 30 if args.quick else 200
    n_tp = 500 if args.quick else 5000
    idle_s = 3.0 if args.quick else 10.0
    results: dict = {"machine": machine(), "config": CONFIG, "latency": {}, "throughput": {}}
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        d = DaemonProcess(tmp, CONFIG).start()
        try:
            pid = d.status()["pid"]
            # Idle first: tick lateness and CPU with nothing arriving.
            c0, t0 = cpu_seconds(pid), time.monotonic()
            time.sleep(idle_s)
            idle_cpu = (cpu_seconds(pid) - c0) / (time.monotonic() - t0)
            tick = d.status()["tick"]
            results["idle"] = {"seconds": idle_s, "cpu_share_of_one_core": round(idle_cpu, 4),
                               "tick_rate_hz": tick["rate_hz"], "lateness_p50_ms": tick["lateness_p50_ms"],
                               "lateness_p99_ms": tick["lateness_p99_ms"], "tick_p99_ms": tick["p99_ms"]}
            print(f"idle: cpu {idle_cpu:.2%} of one core, tick lateness p50 {tick['lateness_p50_ms']} ms "
                  f"p99 {tick['lateness_p99_ms']} ms")
            pub = SensorPublisher(d.ingest)
            sub = ResultSubscriber(d.results, topics=("result/",))
            wait_for(lambda: (pub.tensor("warm", np.zeros(1, np.uint8)), sub.recv(0.2))[1], timeout_s=20)
            print(f"{'size':>6} {'raw p50':>9} {'raw p99':>9} {'daemon p50':>11} {'daemon p99':>11} {'ratio p50':>9}")
            for name, nbytes in SIZES.items():
                n = n_lat if nbytes < (1 << 20) else max(10, n_lat // 4)
                raw = pct(raw_hop_latency(tmp, nbytes, n))
                dae = pct(daemon_latency(d, pub, sub, nbytes, n))
                ratio = round(dae["p50_ms"] / raw["p50_ms"], 2)
                results["latency"][name] = {"raw_hop": raw, "through_daemon": dae, "ratio_p50": ratio}
                print(f"{name:>6} {raw['p50_ms']:>9.3f} {raw['p99_ms']:>9.3f} {dae['p50_ms']:>11.3f}"
                      f" {dae['p99_ms']:>11.3f} {ratio:>9.2f}")
            for name in ("64B", "64KiB"):
                nbytes = SIZES[name]
                raw_rate = raw_throughput(tmp, nbytes, n_tp)
                dae_rate, lost = daemon_throughput(d, pub, nbytes, n_tp)
                results["throughput"][name] = {"raw_msgs_per_s": round(raw_rate), "daemon_msgs_per_s": round(dae_rate),
                                               "ratio": round(dae_rate / raw_rate, 3), "sent": n_tp,
                                               "dropped_at_zmq_hwm": lost}
                print(f"throughput {name}: raw {raw_rate:,.0f}/s daemon {dae_rate:,.0f}/s "
                      f"({lost} of {n_tp} dropped at ZeroMQ high-water marks)")
            status = d.status()
            results["daemon_after"] = {"tick": status["tick"], "rejected": status["ingest"]["rejected"]}
            pub.close()
            sub.close()
        finally:
            code, took = d.stop()
            results["shutdown"] = {"exit_code": code, "seconds": round(took, 3)}
    path = save("transport", results)
    print(f"saved {path}")


if __name__ == "__main__":
    main()
