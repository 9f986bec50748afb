"""Cognition per tick: what salience, the state machine, fusion, selection and allocation cost on
the compute thread, against the 10 ms tick budget.

Drives `Cognition.plan` + `settle` exactly as the orchestrator does, with the default config and
synthetic frames (a 64x64x3 camera, a 6-axis IMU, a text command, an occasional event) for 4
plugins. Baseline in the same process: a tick with no frames (recharge, state update, nothing to
plan). Reports p50/p99 per stage and in total, at 1 and 2 intra-op threads.

Run: .venv/bin/python benchmarks/bench_cognition.py [--ticks N]   (writes benchmarks/results/cognition.json)
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # as the daemon runs it (sage_runtime/cli.py)

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import machine, pct, save  # noqa: E402
from sage_runtime.cognition.plan import Cognition, PluginView  # noqa: E402
from sage_runtime.config import SageConfig  # noqa: E402
from sage_runtime.records import Frame, RunResult  # noqa: E402
from sage_runtime.mailbox import Mailbox  # noqa: E402

PLUGINS = ["vision", "language", "memory", "reasoning"]
SENSORS = {"cam": ("image", 30.0), "imu": ("vector", 100.0), "cmd": ("text", None), "bus": ("event", None)}
SCALE = (4, 8, 16, 32, 64)
READS = {"vision": ("cam",), "language": ("cmd",), "memory": ("cam", "imu"), "reasoning": ("cmd",)}


def extra_sensors(n: int) -> dict[str, tuple[str, float]]:
    """Sensors beyond the base four: alternately a 64x64x3 camera and a 6-axis IMU."""
    return {f"x{i}": (("image", 30.0) if i % 2 else ("vector", 100.0)) for i in range(n)}


def frames_for(tick: int, rng: np.random.Generator, extra: int = 0) -> dict[str, list[Frame]]:
    ts = time.time_ns()
    out = {"cam": [Frame("cam", tick, ts, "tensor", torch.from_numpy(rng.random((64, 64, 3), dtype=np.float32)))],
           "imu": [Frame("imu", tick, ts, "tensor", torch.from_numpy(rng.standard_normal(6).astype(np.float32)))]}
    for i in range(extra):
        shape = (64, 64, 3) if i % 2 else (6,)
        out[f"x{i}"] = [Frame(f"x{i}", tick, ts, "tensor", torch.from_numpy(rng.random(shape, dtype=np.float32)))]
    if tick % 10 == 0:
        out["cmd"] = [Frame("cmd", tick, ts, "text", f"go to waypoint {tick % 7}")]
    if tick % 50 == 0:
        out["bus"] = [Frame("bus", tick, ts, "event", {"type": "battery", "priority": "warning"})]
    return out


def run(ticks: int, threads: int, extra: int = 0) -> dict:
    torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    more = extra_sensors(extra)
    cfg = SageConfig()
    mailbox = Mailbox(torch.device("cpu"))
    with tempfile.TemporaryDirectory() as tmp:
        cog = Cognition(cfg, PLUGINS, mailbox, Path(tmp), torch.device("cpu"))
        stages: dict[str, list[float]] = {}
        total, idle = [], []
        for tick in range(1, ticks + 1):
            frames = frames_for(tick, rng, extra)
            views = {p: PluginView(2.0, tuple(s for s in READS[p] if s in frames)) for p in PLUGINS
                     if any(s in frames for s in READS[p])}
            sensors = {s: SENSORS.get(s) or more[s] for s in frames}
            t0 = time.perf_counter()
            plan = cog.plan(tick, frames, views, sensors, 8.0, 0.01, 0.0, {"memory": 0})
            for name in plan.order:  # what the tick does when each plugin's job comes back
                granted = plan.allocation[name]
                cog.record_result(name, RunResult(name, "converged", 3, 0.1, [1.0, 0.5, 0.1], {}, 1.0,
                                                  min(granted, 1.0), 3))
                cog.settle_account(granted, min(granted, 1.0), 0.0)
            cog.release_unused()
            total.append((time.perf_counter() - t0) * 1e3)
            for lease in plan.leases:
                lease.release()
            for stage, ms in plan.timings_ms.items():
                stages.setdefault(stage, []).append(ms)
            t1 = time.perf_counter()
            cog.plan(tick, {}, {}, {}, 8.0, 0.01, 0.0, {"memory": 0})
            cog.release_unused()
            idle.append((time.perf_counter() - t1) * 1e3)
        mailbox.close()
    warm = ticks // 10
    out = {"threads": threads, "sensors": 4 + extra, "tick_with_frames": pct(total[warm:]), "idle_tick_baseline": pct(idle[warm:]),
           "stages": {k: pct(v[warm:]) for k, v in stages.items()}}
    out["ratio_p50_vs_idle"] = round(out["tick_with_frames"]["p50_ms"] / max(out["idle_tick_baseline"]["p50_ms"],
                                                                            1e-6), 2)
    return out


def scaling(ticks: int) -> dict:
    """The step at 4 .. 64 sensors (1 thread), and its cost per added sensor (least squares)."""
    rows = []
    for n in SCALE:
        r = run(ticks, 1, n - 4)
        rows.append({"sensors": n, **{k: r["tick_with_frames"][k] for k in ("p50_ms", "p99_ms")}})
        print(f"  {n:>3} sensors: step p50 {rows[-1]['p50_ms']} ms p99 {rows[-1]['p99_ms']} ms")
    x = np.array([r["sensors"] for r in rows], dtype=float)
    slope = float(np.polyfit(x, [r["p50_ms"] for r in rows], 1)[0])
    print(f"  cost per added sensor (p50, least squares): {slope * 1e3:.1f} us")
    return {"rows": rows, "p50_ms_per_added_sensor": round(slope, 5)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ticks", type=int, default=3000)
    ap.add_argument("--profile", metavar="OUT", help="cProfile the 4-sensor run at 1 thread into OUT")
    args = ap.parse_args()
    if args.profile:
        import cProfile

        cProfile.runctx("run(args.ticks, 1)", globals(), {"args": args}, args.profile)
        return
    results = {"benchmark": "cognition", "machine": machine(), "ticks": args.ticks,
               "runs": [run(args.ticks, t) for t in (1, 2)]}
    results["per_sensor"] = scaling(max(args.ticks // 3, 200))
    for r in results["runs"]:
        t, b = r["tick_with_frames"], r["idle_tick_baseline"]
        print(f"threads={r['threads']}: tick with frames p50 {t['p50_ms']} ms p99 {t['p99_ms']} ms; "
              f"idle tick p50 {b['p50_ms']} ms p99 {b['p99_ms']} ms")
        for stage, s in r["stages"].items():
            print(f"    {stage:<11} p50 {s['p50_ms']} ms  p99 {s['p99_ms']} ms")
    print("saved", save("cognition", results))


if __name__ == "__main__":
    main()
