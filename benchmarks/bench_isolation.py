"""What a worker process costs a plugin: a job's wall time per step (the whole job, its init
and outputs included, over its steps), in a thread and in a
worker (`plugins.isolation: process`), side by side in one run, for a plugin whose step is
almost nothing (Echo: the request's own cost) and for the built-in vision and language plugins
(real steps). Also the worker's start (spawn, imports, setup) and the ATP charged per step (the
worker's CPU, which includes unpickling its requests). Writes benchmarks/results/isolation.json.

    .venv/bin/python benchmarks/bench_isolation.py [--jobs 30]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import machine, pct, save  # noqa: E402
from sage_runtime.plugin.contract import PluginContext  # noqa: E402
from sage_runtime.plugin.runner import StepCost, run_plugin  # noqa: E402
from sage_runtime.plugin.worker import RemotePlugin  # noqa: E402


def _plugins() -> dict[str, type]:
    from sage_plugins.language.plugin import LanguagePlugin
    from sage_plugins.vision.plugin import VisionPlugin
    from tests.plugins_for_tests import Echo

    return {"echo": Echo, "vision": VisionPlugin, "language": LanguagePlugin}


def _per_step(plugin, cost_clock, jobs: int) -> dict[str, object]:
    """Wall and charged ms per step over `jobs` jobs of the plugin's own sample inputs."""
    wall, charged, steps = [], [], 0
    for seed in range(jobs):
        inputs = plugin.sample_inputs(seed)
        t0 = time.perf_counter()
        res = run_plugin(plugin, inputs, atp_ms=1e9, deadline_ns=2**62, cost=StepCost(), clock_ns=cost_clock,
                         max_steps=8)
        if res.halt == "error":
            raise RuntimeError(res.error)
        n = max(res.steps, 1)
        wall.append((time.perf_counter() - t0) * 1e3 / n)
        charged.append(res.atp_spent / n)
        steps += res.steps
    return {"wall_ms_per_step": pct(wall), "atp_per_step": pct(charged), "steps": steps}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=30)
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, cls in _plugins().items():
            ctx = PluginContext(torch.device("cpu"), cls.Options(), Path(tmp), logging.getLogger(name))
            local = cls()
            local.setup(ctx)
            remote = RemotePlugin(cls)
            t0 = time.perf_counter()
            remote.setup(ctx)
            start_s = time.perf_counter() - t0
            try:
                for p, clock in ((local, time.thread_time_ns), (remote, remote.cpu_ns)):  # warm both
                    _per_step(p, clock, 2)
                row = {"thread": _per_step(local, time.thread_time_ns, args.jobs),
                       "process": _per_step(remote, remote.cpu_ns, args.jobs), "worker_start_s": round(start_s, 3)}
            finally:
                remote.close()
            t, p = row["thread"]["wall_ms_per_step"]["p50_ms"], row["process"]["wall_ms_per_step"]["p50_ms"]
            row["process_over_thread_p50_ms"] = round(p - t, 4)
            rows[name] = row
            print(f"{name:9s} per step p50: thread {t:.3f} ms, process {p:.3f} ms (+{p - t:.3f}); "
                  f"worker start {start_s:.2f} s")
    print(save("isolation", {"machine": machine(), "args": vars(args), "plugins": rows}))


if __name__ == "__main__":
    main()
