"""Threads or processes for plugin jobs: does a 10 ms tick keep its bound while plugins compute?

The tick thread runs a tick-sized piece of work (Python bookkeeping plus small torch ops, about
what cognition does) every 10 ms; beside it, N plugin workers run back-to-back steps of either
pure-Python work (holds the GIL but for the switch interval) or torch work (a conv net forward
and backward, which releases the GIL inside ops, like the vision plugin's step). Workers are
threads (at several `sys.setswitchinterval` values) or processes (no shared GIL). Reports the
tick's duration and lateness p50/p99/p99.9 and the workers' steps per second, per setting, with
the baseline of no workers measured in the same run. Writes benchmarks/results/tick_gil.json.

    nice -n 15 .venv/bin/python benchmarks/bench_tick_gil.py [--seconds 6] [--workers 3]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

from sage_runtime.plugin.priority import raise_tick_priority

RESULTS = Path(__file__).parent / "results" / "tick_gil.json"


def python_step() -> None:
    x = 0
    for i in range(60_000):  # ~5-10 ms of bytecode
        x += i * i % 7


def torch_step(net: torch.nn.Module, x: torch.Tensor) -> None:
    x = x.clone().requires_grad_(True)
    net(x).square().mean().backward()


def make_torch() -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 32, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv2d(32, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(32, 3, 3, padding=1))
    return net, torch.rand(1, 3, 48, 64)


def worker(kind: str, stop: object, counter: object) -> None:
    torch.set_num_threads(1)
    if hasattr(os, "sched_setscheduler"):
        try:  # as plugin threads do: never inherit the tick's SCHED_FIFO
            os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
        except OSError:
            pass
    net, x = make_torch()
    while not stop.is_set():
        python_step() if kind == "python" else torch_step(net, x)
        if isinstance(counter, list):
            counter[0] += 1  # type: ignore[index]
        else:
            with counter.get_lock():
                counter.value += 1


def tick_work(q: torch.Tensor, k: torch.Tensor) -> None:
    """About one cognition tick: a few small SDPA calls and dict bookkeeping."""
    for _ in range(4):
        torch.nn.functional.scaled_dot_product_attention(q, k, k)
    d = {f"s{i}": {"total": i * 0.1} for i in range(8)}
    sorted(d, key=lambda n: d[n]["total"])


def run_tick(seconds: float) -> dict[str, float]:
    q, k = torch.rand(1, 1, 1, 16), torch.rand(1, 1, 8, 16)
    period = 0.01
    durations, lateness = [], []
    t_end = time.perf_counter() + seconds
    next_deadline = time.perf_counter() + period
    while time.perf_counter() < t_end:
        delay = next_deadline - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        start = time.perf_counter()
        lateness.append(max(start - next_deadline, 0.0) * 1e3)
        tick_work(q, k)
        durations.append((time.perf_counter() - start) * 1e3)
        next_deadline += period
        if time.perf_counter() > next_deadline:
            next_deadline = time.perf_counter() + period
    d, late = np.array(durations), np.array(lateness)
    return {"ticks": len(d), "tick_p50_ms": float(np.percentile(d, 50)), "tick_p99_ms": float(np.percentile(d, 99)),
            "tick_p999_ms": float(np.percentile(d, 99.9)), "late_p99_ms": float(np.percentile(late, 99)),
            "tick_plus_late_p99_ms": float(np.percentile(d + late, 99))}


def measure(mode: str, kind: str, workers: int, seconds: float, switch_ms: float) -> dict[str, object]:
    sys.setswitchinterval(switch_ms / 1e3)
    if mode == "thread":
        stop_t = threading.Event()
        counter: list[int] = [0]
        pool = [threading.Thread(target=worker, args=(kind, stop_t, counter), daemon=True) for _ in range(workers)]
        stop_ev: object = stop_t
    else:
        ctx = mp.get_context("spawn")
        stop_ev = ctx.Event()
        shared = ctx.Value("i", 0)
        pool = [ctx.Process(target=worker, args=(kind, stop_ev, shared), daemon=True) for _ in range(workers)]
    for p in pool:
        p.start()
    tick_sched = raise_tick_priority()  # what the daemon does for its tick thread
    time.sleep(1.0 if mode == "process" else 0.2)  # spawned processes import torch first
    base = counter[0] if mode == "thread" else shared.value
    out = run_tick(seconds)
    steps = (counter[0] if mode == "thread" else shared.value) - base
    stop_ev.set()  # type: ignore[attr-defined]
    for p in pool:
        p.join(5)
    return {"mode": mode, "work": kind, "workers": workers, "switch_interval_ms": switch_ms, "tick_sched": tick_sched,
            "worker_steps_per_s": round(steps / seconds, 1), **{k: round(v, 3) if isinstance(v, float) else v
                                                                 for k, v in out.items()}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--workers", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = [measure("thread", "python", 0, args.seconds, 5.0)]
    for kind in ("python", "torch"):
        for switch_ms in (5.0, 1.0, 0.2):
            rows.append(measure("thread", kind, args.workers, args.seconds, switch_ms))
        rows.append(measure("process", kind, args.workers, args.seconds, 5.0))
    for r in rows:
        print(f"{r['mode']:8s} {r['work']:7s} x{r['workers']} switch {r['switch_interval_ms']:>4} ms: tick p50 "
              f"{r['tick_p50_ms']:.2f} p99 {r['tick_p99_ms']:.2f} p99.9 {r['tick_p999_ms']:.2f} ms, late p99 "
              f"{r['late_p99_ms']:.2f} ms, worker steps/s {r['worker_steps_per_s']}")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({"machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                                               "torch": torch.__version__, "loadavg": os.getloadavg(),
                                               "note": "shared, loaded machine: figures are noisy"},
                                   "rows": rows}, indent=1))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
