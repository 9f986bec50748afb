"""Transport benchmark: frame-to-result latency through the daemon (over ZeroMQ, and with the bytes in a
shared-memory ring) against, in the same run, one raw
pyzmq hop and a minimal Python relay (benchmarks/relay.py: SUB -> PUB in its own process, the same
three-part message); ingest throughput vs raw pyzmq with the same high-water marks (every frame
ZeroMQ dropped is counted, on both sides); tick lateness at 100 Hz; the idle daemon's CPU use.

Run: .venv/bin/python benchmarks/bench_transport.py [--quick]   (writes benchmarks/results/transport.json)
"""

from __future__ import annotations

import argparse
import os
import subprocess
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


def relay_latency(tmp: Path, nbytes: int, n: int) -> list[float]:
    """Client PUB -> relay process (SUB -> PUB) -> client SUB: the frame -> result floor in Python."""
    in_ep, out_ep = f"ipc://{tmp}/relay-in.sock", f"ipc://{tmp}/relay-out.sock"
    proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("relay.py")), in_ep, out_ep],
                            stdout=subprocess.PIPE, text=True)
    try:
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError("relay did not start")
        ctx = zmq.Context.instance()
        pub, sub = ctx.socket(zmq.PUB), ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(out_ep)
        pub.connect(in_ep)
        connected(pub, sub)
        frame = np.zeros(nbytes, np.uint8)
        out = []
        for i in range(n + 5):
            t0 = time.perf_counter()
            pub.send_multipart(encode_ingest("relay", i, "tensor", frame, ts_ns=time.time_ns()), copy=False)
            if not sub.poll(5000):
                raise TimeoutError("relay: message lost")
            sub.recv_multipart(copy=False)
            if i >= 5:
                out.append((time.perf_counter() - t0) * 1e3)
        pub.send(b"stop")
        pub.close(1000)
        sub.close(0)
        proc.wait(10)
        return out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def daemon_latency(d: DaemonProcess, pub: SensorPublisher, sub: ResultSubscriber, nbytes: int, n: int,
                   shm: bool = False) -> list[float]:
    """Send one frame (over ZeroMQ, or its bytes through the sensor's shared-memory ring), wait for
    the result that names its seq; repeat. The shm time includes the client's copy into the ring."""
    frame = np.zeros(nbytes, np.uint8)
    sensor = f"{'shm' if shm else 'lat'}{nbytes}"
    send = pub.tensor_shm if shm else pub.tensor
    out = []
    for i in range(n + 5):
        t0 = time.perf_counter()
        seq = send(sensor, frame)
        while True:
            msg = sub.recv(timeout_s=2.0)
            if msg is None:
                raise TimeoutError(f"no result for {sensor} seq {seq}")
            if msg.outputs.get("seen", {}).get(sensor) == seq:
                break
        if i >= 5:
            out.append((time.perf_counter() - t0) * 1e3)
    return out


def daemon_rcvhwm() -> int:
    """The daemon's ingest ZMQ_RCVHWM under CONFIG (capacity.rcvhwm / receive_bytes, else libzmq's 1,000)."""
    try:
        from sage_runtime.config import CapacitySection, IngestSection, receive_hwm
    except ImportError:  # a tree from before capacity.rcvhwm: ingest.rcvhwm, 1000
        return 1000
    return receive_hwm(CapacitySection(), IngestSection().max_message_bytes)


def raw_throughput(tmp: Path, nbytes: int, n: int, hwm: int = 1000, rcvhwm: int = 1000) -> tuple[float, int]:
    """A receiver process that only takes messages (benchmarks/relay.py --count), with the daemon
    path's high-water marks (client SNDHWM `hwm`, daemon RCVHWM `rcvhwm`): the frames per second it got, and how
    many of the n sent ZeroMQ dropped at a high-water mark."""
    ep = f"ipc://{tmp}/rawtp-{nbytes}.sock"
    proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("relay.py")), "--count", ep, str(rcvhwm)],
                            stdout=subprocess.PIPE, text=True)
    try:
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError("raw receiver did not start")
        pub = zmq.Context.instance().socket(zmq.XPUB)
        pub.setsockopt(zmq.SNDHWM, hwm)
        pub.connect(ep)
        if not pub.poll(20000):  # the subscription: the connection is up
            raise TimeoutError("raw receiver never subscribed")
        pub.recv()
        frame = np.zeros(nbytes, np.uint8)
        for i in range(n):
            pub.send_multipart(encode_ingest("raw", i, "tensor", frame, ts_ns=1), copy=False)
        time.sleep(0.5)
        pub.send(b"stop")
        got, seconds = proc.stdout.readline().split()
        pub.close(1000)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return int(got) / max(float(seconds), 1e-9), n - int(got)


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


def latency_table(d: DaemonProcess, pub: SensorPublisher, sub: ResultSubscriber, tmp: Path, n_lat: int,
                  out: dict) -> None:
    """Raw hop, relay and daemon, size by size, interleaved in the same run."""
    print(f"{'size':>6} {'raw p50':>8} {'relay p50':>9} {'relay p99':>9} {'daemon p50':>10} {'daemon p99':>10}"
          f" {'over relay':>10} {'x relay':>7} {'shm p50':>8} {'shm p99':>8}")
    for name, nbytes in SIZES.items():
        n = n_lat if nbytes < (1 << 20) else max(10, n_lat // 4)
        raw = pct(raw_hop_latency(tmp, nbytes, n))
        rel = pct(relay_latency(tmp, nbytes, n))
        dae = pct(daemon_latency(d, pub, sub, nbytes, n))
        shm = pct(daemon_latency(d, pub, sub, nbytes, n, shm=True)) if hasattr(pub, "tensor_shm") else \
            {"n": 0, "p50_ms": float("nan"), "p99_ms": float("nan")}  # a tree without shared-memory ingest
        over, ratio = round(dae["p50_ms"] - rel["p50_ms"], 4), round(dae["p50_ms"] / rel["p50_ms"], 2)
        out[name] = {"raw_hop": raw, "python_relay": rel, "through_daemon": dae, "through_daemon_shm": shm,
                     "overhead_vs_relay_p50_ms": over, "ratio_vs_relay_p50": ratio,
                     "ratio_vs_raw_p50": round(dae["p50_ms"] / raw["p50_ms"], 2)}
        print(f"{name:>6} {raw['p50_ms']:>8.3f} {rel['p50_ms']:>9.3f} {rel['p99_ms']:>9.3f} {dae['p50_ms']:>10.3f}"
              f" {dae['p99_ms']:>10.3f} {over:>10.3f} {ratio:>7.2f} {shm['p50_ms']:>8.3f} {shm['p99_ms']:>8.3f}")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer samples (CI smoke)")
    args = ap.parse_args()
    n_lat = 30 if args.quick else 200
    n_tp = 500 if args.quick else 5000
    idle_s = 3.0 if args.quick else 30.0
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
            latency_table(d, pub, sub, tmp, n_lat, results["latency"])
            for name in ("64B", "64KiB"):
                nbytes = SIZES[name]
                raw_rate, raw_lost = raw_throughput(tmp, nbytes, n_tp, rcvhwm=daemon_rcvhwm())
                dae_rate, lost = daemon_throughput(d, pub, nbytes, n_tp)
                results["throughput"][name] = {"rcvhwm": daemon_rcvhwm(), "sndhwm": 1000, "raw_msgs_per_s": round(raw_rate), "daemon_msgs_per_s": round(dae_rate),
                                               "ratio": round(dae_rate / raw_rate, 3), "sent": n_tp,
                                               "raw_dropped_at_zmq_hwm": raw_lost, "dropped_at_zmq_hwm": lost}
                print(f"throughput {name}: raw {raw_rate:,.0f}/s ({raw_lost} of {n_tp} dropped at ZeroMQ HWM), "
                      f"daemon {dae_rate:,.0f}/s ({lost} of {n_tp} dropped at ZeroMQ HWM), "
                      f"ratio {dae_rate / raw_rate:.3f}")
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
