"""Mailbox vs a plain queue.Queue of torch.from_numpy copies, measured in the same process.

Both sides copy every frame's bytes once (wire payload -> slot, or payload -> fresh array) and the
reader checks the first and last byte of what it got, so neither side can pass references along.

  round trip (one thread): write a frame, read it, release it; p50/p99/max per frame.
  cross-thread:            a writer thread sends one frame, a reader thread blocked in wait() (queue:
                           get()) takes it; latency from before the copy to the reader holding it.
  handoff (two threads):   a writer thread sends N frames to a reader thread with backpressure
                           (mailbox fifo: retry on DROPPED, reader blocks in wait(); queue: blocking
                           put and get); frames/s and GB/s.

Usage: .venv/bin/python benchmarks/bench_mailbox.py [--device cuda] [--quick]
Writes benchmarks/results/mailbox.json (mailbox_cuda.json for --device cuda).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import queue
import threading
import time
from pathlib import Path

import numpy as np
import torch

from sage_runtime.mailbox import Mailbox, WriteStatus

SIZES = {"64B": 64, "64KiB": 64 << 10, "1MiB": 1 << 20, "6MiB": 6 << 20}
DEPTH = 4
BLOCKS = 5


def payloads(nbytes: int) -> list[bytes]:
    """Two distinct frames, alternated, so a reader holding stale data is caught."""
    return [np.full(nbytes, v, dtype=np.uint8).tobytes() for v in (17, 42)]


def check(tensor: torch.Tensor, value: int) -> None:
    if int(tensor[0]) != value or int(tensor[-1]) != value:
        raise AssertionError(f"reader saw {int(tensor[0])}/{int(tensor[-1])}, expected {value}")


def percentiles(samples_ns: list[int]) -> dict[str, float]:
    us = np.asarray(samples_ns, dtype=np.float64) / 1e3
    return {"p50_us": round(float(np.percentile(us, 50)), 2), "p99_us": round(float(np.percentile(us, 99)), 2),
            "max_us": round(float(us.max()), 2), "n": int(us.size)}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.current_stream(device).synchronize()


def round_trip_mailbox(mb: Mailbox, nbytes: int, iters: int) -> list[int]:
    ch = mb.register(f"rt{nbytes}", dtype=torch.uint8, max_shape=(nbytes,), depth=DEPTH)
    frames = payloads(nbytes)
    cursor = -1
    samples = []
    for i in range(iters):
        frame, value = frames[i & 1], (17, 42)[i & 1]
        t0 = time.perf_counter_ns()
        ch.write_bytes(frame, (nbytes,))
        lease = ch.read_latest(cursor)
        tensor = lease.tensor
        sync(mb.device)  # CUDA: the frame is on the device when the round ends
        samples.append(time.perf_counter_ns() - t0)
        check(tensor, value)
        cursor = lease.seq
        lease.release()
    return samples


def round_trip_queue(device: torch.device, nbytes: int, iters: int) -> list[int]:
    q: queue.Queue[torch.Tensor] = queue.Queue(maxsize=DEPTH)
    frames = payloads(nbytes)
    samples = []
    for i in range(iters):
        frame, value = frames[i & 1], (17, 42)[i & 1]
        t0 = time.perf_counter_ns()
        tensor = torch.from_numpy(np.frombuffer(frame, dtype=np.uint8).copy())
        if device.type == "cuda":
            tensor = tensor.to(device)
        q.put(tensor)
        got = q.get()
        sync(device)
        samples.append(time.perf_counter_ns() - t0)
        check(got, value)
    return samples


def cross_thread_mailbox(mb: Mailbox, nbytes: int, n: int) -> list[int]:
    """Writer thread -> reader thread blocked in wait(); the writer sends the next frame once acked."""
    ch = mb.register(f"ct{nbytes}", dtype=torch.uint8, max_shape=(nbytes,), depth=DEPTH)
    frames = payloads(nbytes)
    ack = threading.Event()
    samples: list[int] = []

    first = ch.last_seq + 1  # the channel may hold frames from an earlier run

    def reader() -> None:
        cursor = first - 1
        for _ in range(n):
            ch.wait(cursor)
            with ch.read_latest(cursor) as lease:
                sync(mb.device)
                samples.append(time.perf_counter_ns() - lease.ts_ns)
                check(lease.tensor, (17, 42)[(lease.seq - first) & 1])
                cursor = lease.seq
            ack.set()

    thread = threading.Thread(target=reader)
    thread.start()
    for i in range(n):
        ch.write_bytes(frames[i & 1], (nbytes,), ts_ns=time.perf_counter_ns())
        ack.wait()
        ack.clear()
    thread.join()
    return samples


def cross_thread_queue(device: torch.device, nbytes: int, n: int) -> list[int]:
    q: queue.Queue[tuple[int, torch.Tensor]] = queue.Queue(maxsize=DEPTH)
    frames = payloads(nbytes)
    ack = threading.Event()
    samples: list[int] = []

    def reader() -> None:
        for i in range(n):
            t0, tensor = q.get()
            sync(device)
            samples.append(time.perf_counter_ns() - t0)
            check(tensor, (17, 42)[i & 1])
            ack.set()

    thread = threading.Thread(target=reader)
    thread.start()
    for i in range(n):
        t0 = time.perf_counter_ns()
        tensor = torch.from_numpy(np.frombuffer(frames[i & 1], dtype=np.uint8).copy())
        q.put((t0, tensor.to(device) if device.type == "cuda" else tensor))
        ack.wait()
        ack.clear()
    thread.join()
    return samples


def handoff_mailbox(mb: Mailbox, nbytes: int, n: int) -> tuple[float, int]:
    ch = mb.register(f"ho{nbytes}", dtype=torch.uint8, max_shape=(nbytes,), policy="fifo", depth=DEPTH,
                     on_full="drop_newest")
    frames = payloads(nbytes)
    retries = 0
    first = ch.last_seq + 1  # seqs go on from any earlier run; dropped writes use none

    def writer() -> None:
        nonlocal retries
        for i in range(n):
            while ch.write_bytes(frames[i & 1], (nbytes,)).status is WriteStatus.DROPPED:
                retries += 1
                time.sleep(0)

    t0 = time.perf_counter()
    thread = threading.Thread(target=writer)
    thread.start()
    got = 0
    while got < n:
        ch.wait(timeout=1.0)
        for lease in ch.pop_all():
            check(lease.tensor, (17, 42)[(lease.seq - first) & 1])
            lease.release()
            got += 1
    sync(mb.device)
    elapsed = time.perf_counter() - t0
    thread.join()
    return elapsed, retries


def handoff_queue(device: torch.device, nbytes: int, n: int) -> float:
    q: queue.Queue[torch.Tensor] = queue.Queue(maxsize=DEPTH)
    frames = payloads(nbytes)

    def writer() -> None:
        for i in range(n):
            tensor = torch.from_numpy(np.frombuffer(frames[i & 1], dtype=np.uint8).copy())
            q.put(tensor.to(device) if device.type == "cuda" else tensor)

    t0 = time.perf_counter()
    thread = threading.Thread(target=writer)
    thread.start()
    for i in range(n):
        check(q.get(), (17, 42)[i & 1])
    sync(device)
    elapsed = time.perf_counter() - t0
    thread.join()
    return elapsed


def rate(frames: int, nbytes: int, seconds: float) -> dict[str, float]:
    return {"frames_per_s": round(frames / seconds), "gb_per_s": round(frames * nbytes / seconds / 1e9, 3)}


def machine(device: torch.device) -> dict:
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    model = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")),
                 platform.processor())
    info = {"platform": platform.platform(), "cpu": model, "cpus": os.cpu_count(),
            "python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
            "torch_threads": torch.get_num_threads(), "device": str(device),
            "loadavg_1m": round(os.getloadavg()[0], 2)}  # other work on the machine skews the tails
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="fewer iterations (smoke run)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    device = torch.device(args.device)
    scale = 0.1 if args.quick else 1.0
    results = {}
    mb = Mailbox(device)
    print(f"{'':>6} | {'round trip p50/p99 us':^35} | {'cross-thread p50/p99 us':^35} | {'handoff frames/s':^15}")
    print(f"{'frame':>6} | {'mailbox':^17} {'queue':^17} | {'mailbox':^17} {'queue':^17} | "
          f"{'mailbox':>7} {'queue':>7}")
    for label, nbytes in SIZES.items():
        iters = max(30, int(min(20000, 4e9 / max(nbytes, 1 << 16)) * scale))
        n_cross = max(20, int(min(3000, 4e8 / max(nbytes, 1 << 16)) * scale))
        n_handoff = max(20, int(min(20000, 2e9 / max(nbytes, 1 << 16)) * scale))
        round_trip_mailbox(mb, nbytes, 10), round_trip_queue(device, nbytes, 10)  # warm up
        mail_ns: list[int] = []
        base_ns: list[int] = []
        for _ in range(BLOCKS):  # alternate blocks so both sides share the machine's noise (same below)
            mail_ns += round_trip_mailbox(mb, nbytes, iters // BLOCKS)
            base_ns += round_trip_queue(device, nbytes, iters // BLOCKS)
        mail, base = percentiles(mail_ns), percentiles(base_ns)
        cross_mail_ns: list[int] = []
        cross_base_ns: list[int] = []
        for _ in range(BLOCKS):
            cross_mail_ns += cross_thread_mailbox(mb, nbytes, n_cross // BLOCKS)
            cross_base_ns += cross_thread_queue(device, nbytes, n_cross // BLOCKS)
        cross_mail, cross_base = percentiles(cross_mail_ns), percentiles(cross_base_ns)
        mail_s, retries = handoff_mailbox(mb, nbytes, n_handoff)
        base_s = handoff_queue(device, nbytes, n_handoff)
        results[label] = {
            "bytes": nbytes,
            "round_trip": {"mailbox": mail, "queue": base, "p50_ratio": round(mail["p50_us"] / base["p50_us"], 3),
                           "p99_ratio": round(mail["p99_us"] / base["p99_us"], 3)},
            "cross_thread": {"mailbox": cross_mail, "queue": cross_base,
                             "p50_ratio": round(cross_mail["p50_us"] / cross_base["p50_us"], 3)},
            "handoff": {"frames": n_handoff, "mailbox": rate(n_handoff, nbytes, mail_s) | {"writer_retries": retries},
                        "queue": rate(n_handoff, nbytes, base_s)},
        }
        hand = results[label]["handoff"]
        print(f"{label:>6} | {mail['p50_us']:>7.1f} / {mail['p99_us']:<7.1f} {base['p50_us']:>7.1f} / "
              f"{base['p99_us']:<7.1f} | {cross_mail['p50_us']:>7.1f} / {cross_mail['p99_us']:<7.1f} "
              f"{cross_base['p50_us']:>7.1f} / {cross_base['p99_us']:<7.1f} | "
              f"{hand['mailbox']['frames_per_s']:>7} {hand['queue']['frames_per_s']:>7}")
    mb.close()
    name = "mailbox.json" if device.type == "cpu" else f"mailbox_{device.type}.json"
    out = args.out or Path(__file__).parent / "results" / name
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"benchmark": "mailbox", "machine": machine(device), "depth": DEPTH,
                               "quick": args.quick, "results": results}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
