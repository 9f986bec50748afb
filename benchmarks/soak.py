"""Soak: the real daemon under sustained load, watched for leaks, stalls and drops (issue 7, item 3).

The daemon runs as a subprocess in its own temporary runtime dir (ipc endpoints only) with every
built-in plugin enabled. `--publishers` separate processes each publish one set of demo streams
(camera, IMU, garbled speech commands, Sudoku puzzles; `sage_plugins.demo`) through real ZeroMQ PUB
sockets at `--rate-multiplier` times the rate their sensors are declared at. Every `--interval`
seconds it samples the daemon's RSS, open fds (/proc/<pid>/fd), threads (/proc/<pid>/status), CPU,
and from `status` over the control socket: tick p99/max, overruns, per-sensor counters and
rejections; a subscriber counts the results each plugin publishes. Each sample also records the
machine's load (1-minute load average, Linux CPU pressure) and how long the daemon's threads sat
runnable waiting for a CPU, so a stall can be told apart from a box busy with other work.

Criteria (exit code 1 when any fails; all measured after `--warmup` unless said otherwise):
- RSS growth < 5% (largest sample vs the first sample after warmup);
- fd and thread counts flat (max == min);
- no tick-loop stall over 100 ms while under load that the box's load does not explain: the
  daemon's `tick.stalls_over_100ms` counter may rise after the publishers start only in a sample
  where the daemon's threads waited runnable for a CPU at least as long as the stall's excess over
  100 ms (`explained_by_load`: another process had the CPU, not the daemon stalling itself);
- drops only where a `latest` sensor superseded a frame: no fifo overflow, no rejection, no seq
  gap, no result the daemon failed to publish, no request dropped while it waited for its plugin
  to be scheduled or in a plugin's own queue;
- every built-in plugin published results, and the daemon exits 0 on SIGTERM;
- tick p99 <= its budget in every `--interval` window after warmup (issue 15), read exactly from
  the daemon's counters: at most 1 % of a window's ticks overran (`tick.overruns`, ticks longer
  than the period); and tick p99.9 <= 15 ms (1.5 periods at 100 Hz) over the run after warmup: at
  most 0.1 % of its ticks took longer (`tick.over_1_5x_budget`).
Also reported: puzzles sent and reasoning answers that are final (`summary.puzzles`).

Run: .venv/bin/python benchmarks/soak.py [--duration 600] [--rate-multiplier 3] [--interval 5]
Writes benchmarks/results/soak.json and soak.png (or --out PATH and the .png beside it).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_transport import cpu_seconds  # noqa: E402
from benchmarks.common import machine, save  # noqa: E402
from sage_runtime.client import ResultSubscriber  # noqa: E402
from sage_runtime.config import SageConfig  # noqa: E402
from sage_plugins.demo import BUILTIN_PLUGINS, STREAMS, DemoSources, sensor_declarations  # noqa: E402
from tests.harness import DaemonProcess, wait_for  # noqa: E402

STALL_MS = 100.0
RSS_GROWTH_LIMIT_PCT = 5.0


def publish(endpoint: str, rate_hz: float, seed: int, prefix: str, ready: Any, go: Any, stop: Any,
            sent: Any) -> None:
    """One publisher process: a set of demo streams from `go` until `stop`; reports what it sent.

    The generators' imports (torch among them) happen before `ready`, so the publishers' own start
    does not compete with the daemon for CPU once the load is on."""
    import sage_plugins.language  # noqa: F401
    import sage_plugins.reasoning.sudoku  # noqa: F401
    import sage_runtime.client  # noqa: F401

    src = DemoSources(endpoint, rate_hz, seed=seed, prefix=prefix)
    ready.put(prefix)
    go.wait()
    src.start()
    while not stop.wait(0.5):
        if src.error is not None:
            break
    src.stop()
    sent.put({"prefix": prefix, "sent": src.sent, "error": repr(src.error) if src.error else None})


class ResultCounter(threading.Thread):
    """Reads every result the daemon publishes (so none back up) and counts them per plugin, with
    the largest `dropped` a plugin that queues its own input (language, reasoning) reported, and
    the reasoning answers that are final (`finished`; a cut-short run is continued later)."""

    def __init__(self, endpoint: str) -> None:
        super().__init__(name="results", daemon=True)
        self.sub = ResultSubscriber(endpoint, topics=("result/",))
        self.counts: dict[str, int] = {}
        self.errors: dict[str, int] = {}
        self.queue_dropped: dict[str, int] = {}
        self.puzzles_finished = 0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            msg = self.sub.recv(timeout_s=0.2)
            if msg is None:
                continue
            name = msg.header["plugin"]
            self.counts[name] = self.counts.get(name, 0) + 1
            if msg.header["halt"] == "error":
                self.errors[name] = self.errors.get(name, 0) + 1
            if isinstance(dropped := msg.outputs.get("dropped"), int):
                self.queue_dropped[name] = max(self.queue_dropped.get(name, 0), dropped)
            if name == "reasoning" and msg.outputs.get("finished") is True:
                self.puzzles_finished += 1

    def stop(self) -> None:
        self._halt.set()
        self.join(2.0)
        self.sub.close()


def proc_sample(pid: int) -> dict[str, Any]:
    """RSS, threads and open fds of a live process, from /proc."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return {"rss_mb": round(int(fields["VmRSS"].split()[0]) / 1024, 2), "threads": int(fields["Threads"]),
            "fds": len(list(Path(f"/proc/{pid}/fd").iterdir()))}


def workers_sample(pid: int) -> dict[str, Any]:
    """The daemon's plugin worker processes (plugins.isolation: process): how many, and their RSS
    summed; a worker that leaks shows here, not in the daemon's own RSS."""
    rss_kb, count = 0, 0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
            if int(stat[stat.rindex(")") + 2:].split()[1]) != pid:
                continue
            if b"sage_runtime.plugin.worker" not in (proc / "cmdline").read_bytes():
                continue
            fields = dict(line.split(":", 1) for line in (proc / "status").read_text().splitlines() if ":" in line)
            rss_kb += int(fields["VmRSS"].split()[0])
            count += 1
        except (OSError, ValueError, KeyError, IndexError):
            continue  # a process that just ended
    return {"workers": count, "workers_rss_mb": round(rss_kb / 1024, 2)}


def runqueue_wait_s(pid: int) -> float:
    """Seconds the process's threads have spent runnable but waiting for a CPU (schedstat), summed:
    when this grows about as fast as the wall clock, the machine, not the daemon, holds the ticks up."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue  # a thread that just ended, or no schedstat in this kernel
    return total / 1e9


def cpu_pressure() -> float | None:
    """Share of the last 10 s in which some runnable task waited for a CPU (Linux PSI), in %: a
    stall seen while this is high may be the machine's other load, not the daemon."""
    try:
        line = Path("/proc/pressure/cpu").read_text().splitlines()[0]
    except (OSError, IndexError):
        return None
    return float(dict(kv.split("=") for kv in line.split()[1:])["avg10"])


def status_sample(status: dict[str, Any]) -> dict[str, Any]:
    """The figures the soak tracks from one `status` reply."""
    tick, ingest = status["tick"], status["ingest"]
    sensors = {sid: {k: s[k] for k in ("received", "accepted", "skipped", "dropped", "seq_gaps")}
               for sid, s in ingest["sensors"].items()}
    return {
        "state": (status.get("state") or {}).get("name"), "health": status["health"],
        "tick": {k: tick.get(k, 0) for k in ("count", "p50_ms", "p99_ms", "max_ms", "overruns", "over_1_5x_budget",
                                             "missed_periods", "stalls_over_100ms", "lateness_p99_ms",
                                             "deadline_miss_rate")},
        "sensors": sensors, "rejected": dict(ingest["rejected"]),
        "results_failed": status["results"]["failed"],
        "plugins": {n: {k: p[k] for k in ("status", "runs", "errors", "hangs", "held_frames", "held_dropped", "waiting_s")}
                    for n, p in status["plugins"].items()},
    }


def tick_windows(after: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per sampling window after warmup: ticks run and the share of them that overran the period
    (the window's p99 is within budget exactly when that share is <= 1 %)."""
    out = []
    for a, b in zip(after, after[1:]):
        n = b["tick"]["count"] - a["tick"]["count"]
        over = b["tick"]["overruns"] - a["tick"]["overruns"]
        if n > 0:
            out.append({"t_s": b["t_s"], "ticks": n, "overruns": over, "over_budget_share": round(over / n, 5)})
    return out


def explained_by_load(sample: dict[str, Any], interval_s: float) -> bool:
    """True when, over the sample's interval, the daemon's threads waited runnable for a CPU at least
    as long as the worst tick ran past 100 ms: the box's other work can account for the stall."""
    excess_s = max((sample["tick"]["max_ms"] or 0.0) - 100.0, 0.0) / 1e3
    waited_s = (sample["runqueue_wait"] or 0.0) * max(interval_s, 0.0)
    return waited_s >= excess_s


def summarise(samples: list[dict[str, Any]], warmup_s: float, startup_stalls: int, final: dict[str, Any],
              reports: list[dict[str, Any]], exit_code: int) -> dict[str, Any]:
    after = [s for s in samples if s["t_s"] >= warmup_s] or samples[-1:]
    base = after[0]
    rss_max = max(s["rss_mb"] for s in after)
    growth = 100.0 * (rss_max - base["rss_mb"]) / base["rss_mb"]
    workers_max = max(s.get("workers_rss_mb", 0.0) for s in after)
    workers_growth = 100.0 * (workers_max - base["workers_rss_mb"]) / base["workers_rss_mb"] \
        if base.get("workers_rss_mb") else 0.0
    fds = [s["fds"] for s in after]
    threads = [s["threads"] for s in after]
    # The daemon counts ticks over 100 ms; each sample where the count rose records how many.
    stalls, prev, t_prev = [], startup_stalls, 0.0
    for s in samples:
        cur = s["tick"]["stalls_over_100ms"]
        if cur > prev:
            stalls.append({"t_s": s["t_s"], "count": cur - prev, "tick_max_ms": s["tick"]["max_ms"],
                           "cpu_pressure_pct": s["cpu_pressure_pct"], "loadavg_1m": s["loadavg_1m"],
                           "runqueue_wait": s["runqueue_wait"],
                           "explained_by_load": explained_by_load(s, s["t_s"] - t_prev)})
        prev = max(prev, cur)
        t_prev = s["t_s"]
    sensors = final["sensors"]
    sent = {sid: n for r in reports for sid, n in r["sent"].items()}
    drops = {
        "latest_superseded": sum(s["skipped"] for s in sensors.values()),
        "fifo_overflow_or_no_slot": sum(s["dropped"] for s in sensors.values()),
        "rejected": final["rejected"],
        "seq_gaps": sum(s["seq_gaps"] for s in sensors.values()),
        "results_not_published": final["results_failed"],
        "held_past_fifo_depth": sum(p["held_dropped"] for p in final["plugins"].values()),
        "plugin_queue_overflow": sum(samples[-1]["queue_dropped"].values()),
        "sent_not_received": sum(sent.values()) - sum(s["received"] for s in sensors.values()),
    }
    results_after = {p: after[-1]["results"].get(p, 0) - base["results"].get(p, 0) for p in BUILTIN_PLUGINS}
    p99s = [s["tick"]["p99_ms"] for s in after if s["tick"]["p99_ms"] is not None]
    windows = tick_windows(after)
    worst = max(windows, key=lambda w: w["over_budget_share"], default=None)
    ticks_after = after[-1]["tick"]["count"] - base["tick"]["count"]
    over_15 = after[-1]["tick"]["over_1_5x_budget"] - base["tick"]["over_1_5x_budget"]
    criteria = {
        "tick_p99_within_budget_every_window": {
            "value": worst, "limit": "<= 1% of each window's ticks over the period",
            "ok": bool(windows) and all(w["over_budget_share"] <= 0.01 for w in windows)},
        "tick_p999_within_1_5x_budget": {
            "value": {"ticks": ticks_after, "over_1_5x": over_15}, "limit": "<= 0.1% of ticks over 1.5 periods",
            "ok": ticks_after > 0 and over_15 <= 0.001 * ticks_after},
        "rss_growth_pct": {"value": round(growth, 2), "limit": f"< {RSS_GROWTH_LIMIT_PCT}",
                           "ok": growth < RSS_GROWTH_LIMIT_PCT},
        "workers_rss_growth_pct": {"value": round(workers_growth, 2), "limit": f"< {RSS_GROWTH_LIMIT_PCT}",
                                   "workers": [base.get("workers", 0), after[-1].get("workers", 0)],
                                   "ok": workers_growth < RSS_GROWTH_LIMIT_PCT
                                   and base.get("workers", 0) == after[-1].get("workers", 0)},
        "fds_flat": {"value": [min(fds), max(fds)], "ok": min(fds) == max(fds)},
        "threads_flat": {"value": [min(threads), max(threads)], "ok": min(threads) == max(threads)},
        # A stall the daemon's threads spent at least as long waiting for a CPU (runnable, not
        # running) is the box's load, not the daemon's; only the others fail the soak.
        "stalls_over_100ms": {"value": sum(s["count"] for s in stalls),
                              "not_explained_by_load": sum(s["count"] for s in stalls if not s["explained_by_load"]),
                              "ok": all(s["explained_by_load"] for s in stalls)},
        "drops_only_latest_superseded": {
            "value": {k: v for k, v in drops.items() if k not in ("latest_superseded", "sent_not_received")},
            "ok": not (drops["fifo_overflow_or_no_slot"] or drops["rejected"] or drops["seq_gaps"]
                       or drops["results_not_published"] or drops["held_past_fifo_depth"]
                       or drops["plugin_queue_overflow"])},
        "every_plugin_published": {"value": results_after, "ok": all(results_after.values())},
        "publishers_ok": {"value": [r["error"] for r in reports if r["error"]],
                          "ok": bool(reports) and not any(r["error"] for r in reports)},
        "clean_exit": {"value": exit_code, "ok": exit_code == 0},
    }
    return {
        "passed": all(c["ok"] for c in criteria.values()), "criteria": criteria,
        "warmup_s": warmup_s, "samples": len(samples),
        "rss_mb": {"first": samples[0]["rss_mb"], "after_warmup": base["rss_mb"], "max_after_warmup": rss_max,
                   "last": samples[-1]["rss_mb"]},
        "workers_rss_mb": {"after_warmup": base.get("workers_rss_mb"), "max_after_warmup": workers_max,
                           "last": samples[-1].get("workers_rss_mb")},
        "fds": {"min": min(fds), "max": max(fds)}, "threads": {"min": min(threads), "max": max(threads)},
        "tick": {"p99_ms_max": max(p99s, default=None), "p99_ms_median": sorted(p99s)[len(p99s) // 2] if p99s else None,
                 "max_ms": final["tick"]["max_ms"], "overruns": final["tick"]["overruns"],
                 "missed_periods": final["tick"]["missed_periods"], "ticks": final["tick"]["count"]},
        "tick_windows": windows,
        "stalls": stalls, "startup_stalls": startup_stalls, "drops": drops,
        "results_by_plugin": samples[-1]["results"], "result_errors_by_plugin": samples[-1]["result_errors"],
        "puzzles": {"sent": sum(n for sid, n in sent.items() if sid.endswith(".puzzle")),
                    "finished_answers": samples[-1]["puzzles_finished"]},
        "plugin_errors": {n: p["errors"] for n, p in final["plugins"].items()},
        "plugin_hangs": {n: p["hangs"] for n, p in final["plugins"].items()},
        "states_seen": sorted({s["state"] for s in samples if s["state"]}),
        "cpu_share_of_one_core_mean": round(sum(s["cpu"] for s in after) / len(after), 3),
        "machine_load": {"loadavg_1m_max": max(s["loadavg_1m"] for s in samples),
                         "daemon_runqueue_wait_mean": round(sum(s["runqueue_wait"] for s in after) / len(after), 3),
                         "cpu_pressure_pct_max": max((s["cpu_pressure_pct"] or 0.0 for s in samples), default=None),
                         "cpu_count": os.cpu_count()},
    }


def plot(samples: list[dict[str, Any]], summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s["t_s"] for s in samples]
    fig, axes = plt.subplots(4, 2, figsize=(12, 13), sharex=True)
    panels = [
        ("RSS (MiB)", {"rss": [s["rss_mb"] for s in samples]}),
        ("machine (other load makes stalls too)", {"load avg 1 min": [s["loadavg_1m"] for s in samples],
                                                   "CPU pressure % / 10": [None if s["cpu_pressure_pct"] is None
                                                                           else s["cpu_pressure_pct"] / 10
                                                                           for s in samples],
                                                   "daemon runqueue wait (s/s)": [s["runqueue_wait"]
                                                                                  for s in samples]}),
        ("open fds", {"fds": [s["fds"] for s in samples]}),
        ("threads", {"threads": [s["threads"] for s in samples]}),
        ("tick (ms)", {"p99": [s["tick"]["p99_ms"] for s in samples],
                       "max (all-time)": [s["tick"]["max_ms"] for s in samples]}),
        ("per second", {"overruns": _rate(samples, lambda s: s["tick"]["overruns"]),
                        "ticks": _rate(samples, lambda s: s["tick"]["count"])}),
        ("frames per second", {"received": _rate(samples, lambda s: sum(x["received"] for x in s["sensors"].values())),
                               "latest superseded": _rate(samples,
                                                          lambda s: sum(x["skipped"] for x in s["sensors"].values())),
                               "dropped": _rate(samples, lambda s: sum(x["dropped"] for x in s["sensors"].values()))}),
        ("results per second", {p: _rate(samples, lambda s, p=p: s["results"].get(p, 0)) for p in BUILTIN_PLUGINS}),
    ]
    for ax, (title, series) in zip(axes.flat, panels):
        for label, ys in series.items():
            ax.plot(t, [float("nan") if y is None else y for y in ys], label=label)
        ax.axvline(summary["warmup_s"], color="grey", linestyle=":", linewidth=1)
        ax.set_title(title)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    axes[2, 0].axhline(STALL_MS, color="red", linestyle="--", linewidth=1)
    for ax in axes[-1]:
        ax.set_xlabel("seconds under load (dotted: end of warmup)")
    failed = [k for k, c in summary["criteria"].items() if not c["ok"]]
    verdict = "PASS" if summary["passed"] else "FAIL: " + ", ".join(failed)
    fig.suptitle(f"sage-runtime soak: {verdict}; RSS growth {summary['criteria']['rss_growth_pct']['value']}% "
                 f"after warmup, stalls {len(summary['stalls'])}")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _rate(samples: list[dict[str, Any]], value: Any) -> list[float | None]:
    out: list[float | None] = [None]
    for a, b in zip(samples, samples[1:]):
        out.append((value(b) - value(a)) / max(b["t_s"] - a["t_s"], 1e-9))
    return out


def main() -> int:
    # SIGTERM unwinds like an exception, so the finally below stops the daemon and the publishers:
    # a soak killed by default SIGTERM left its 3 publishers running into the next soak (6x load)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    nominal = SageConfig().demo.rate_hz
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=600.0, help="seconds under load (default 600)")
    ap.add_argument("--rate-multiplier", type=float, default=3.0, help="times the declared sensor rates (default 3)")
    ap.add_argument("--interval", type=float, default=5.0, help="seconds between samples (default 5)")
    ap.add_argument("--publishers", type=int, default=3, help="publisher processes, one set of demo streams each")
    ap.add_argument("--nominal-hz", type=float, default=nominal, help=f"declared demo rate (default {nominal})")
    ap.add_argument("--warmup", type=float, default=None,
                    help="seconds excluded from growth/flatness (default: 20%% of duration, 2 intervals to 120 s)")
    ap.add_argument("--out", type=Path, default=None, help="JSON path (default benchmarks/results/soak.json)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a config override for an A/B soak, e.g. tick.gil_switch_interval_ms=0.2 (YAML value)")
    args = ap.parse_args()
    warmup = args.warmup if args.warmup is not None else min(max(2 * args.interval, 0.2 * args.duration), 120.0)
    rate = args.nominal_hz * args.rate_multiplier
    prefixes = [f"pub{i}" for i in range(args.publishers)]
    config = {
        "plugins": {"enabled": list(BUILTIN_PLUGINS)},
        "ingest": {"allow_undeclared": False,
                   "sensors": {k: v for p in prefixes for k, v in sensor_declarations(args.nominal_hz, p).items()}},
    }
    for item in args.set:
        key, _, value = item.partition("=")
        *path, leaf = key.split(".")
        node = config
        for part in path:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value)
    run: dict[str, Any] = {"machine": machine(), "args": {k: str(v) if isinstance(v, Path) else v
                                                          for k, v in vars(args).items()},
                           "warmup_s": warmup, "publish_rate_hz": rate, "config": config}
    ctx = mp.get_context("spawn")
    samples: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="sage-soak-") as td:
        d = DaemonProcess(Path(td), config).start(timeout_s=120)
        counter = ResultCounter(d.results)
        counter.start()
        ready, go, stop, sent_q = ctx.Queue(), ctx.Event(), ctx.Event(), ctx.Queue()
        pubs = [ctx.Process(target=publish, args=(d.ingest, rate, i, p, ready, go, stop, sent_q), name=p,
                            daemon=True) for i, p in enumerate(prefixes)]
        reports: list[dict[str, Any]] = []
        final = None
        try:
            pid = d.status()["pid"]
            startup_stalls = d.status()["tick"]["stalls_over_100ms"]
            for proc in pubs:
                proc.start()
            for _ in pubs:
                ready.get(timeout=120)
            go.set()
            # Time zero: every publisher's first frames reached the daemon.
            wait_for(lambda: len(d.status()["ingest"]["sensors"]) == len(STREAMS) * len(prefixes), timeout_s=60,
                     interval_s=0.2)
            t0 = time.monotonic()
            cpu_prev, wait_prev, t_prev = cpu_seconds(pid), runqueue_wait_s(pid), t0
            k = 0
            while True:
                now = time.monotonic() - t0
                target = k * args.interval
                if now < target:
                    time.sleep(target - now)
                if d.proc.poll() is not None:
                    raise RuntimeError(f"daemon exited with {d.proc.returncode} during the soak:\n{d.log()[-4000:]}")
                sample = {"t_s": round(time.monotonic() - t0, 2), **proc_sample(pid), **workers_sample(pid),
                          "cpu_pressure_pct": cpu_pressure(), "loadavg_1m": os.getloadavg()[0]}
                cpu, wait, tn = cpu_seconds(pid), runqueue_wait_s(pid), time.monotonic()
                sample["cpu"] = round((cpu - cpu_prev) / max(tn - t_prev, 1e-9), 3)
                sample["runqueue_wait"] = round((wait - wait_prev) / max(tn - t_prev, 1e-9), 3)
                cpu_prev, wait_prev, t_prev = cpu, wait, tn
                sample.update(status_sample(d.status()))
                sample["results"], sample["result_errors"] = dict(counter.counts), dict(counter.errors)
                sample["queue_dropped"] = dict(counter.queue_dropped)
                sample["puzzles_finished"] = counter.puzzles_finished
                samples.append(sample)
                t = sample["tick"]
                print(f"t={sample['t_s']:>6.1f}s rss {sample['rss_mb']:>7.1f} MiB workers {sample['workers_rss_mb']:>7.1f} MiB fds {sample['fds']:>3} "
                      f"threads {sample['threads']:>3} cpu {sample['cpu']:.2f} tick p99 {t['p99_ms']} "
                      f"max {t['max_ms']} "
                      f"overruns {t['overruns']} state {sample['state']} results {sum(counter.counts.values())}",
                      flush=True)
                if target >= args.duration:
                    break
                k += 1
            stop.set()
            reports = [sent_q.get(timeout=30) for _ in pubs]
            for proc in pubs:
                proc.join(10)
            run["publishers"] = reports
            total = sum(n for r in reports for n in r["sent"].values())
            try:  # let what is in flight arrive before the final count
                wait_for(lambda: sum(s["received"] for s in d.status()["ingest"]["sensors"].values()) >= total,
                         timeout_s=5, interval_s=0.1)
            except TimeoutError:
                pass  # the shortfall is reported as drops.sent_not_received
        finally:
            stop.set()
            try:
                if d.proc.poll() is None:
                    final = status_sample(d.status())
                    final["stage_max_ms"] = {k: v["max_ms"] for k, v in d.control().call("stats")["stages"].items()}
                counter.stop()
            finally:  # never leave a daemon or a publisher behind
                exit_code, took = d.stop()
                for proc in pubs:
                    if proc.is_alive():
                        proc.kill()
            run["shutdown"] = {"exit_code": exit_code, "seconds": round(took, 3)}
            run["daemon_log_tail"] = d.log()[-4000:]
    if final is None:
        print("soak aborted: the daemon was gone at the end", file=sys.stderr)
        return 2
    summary = summarise(samples, warmup, startup_stalls, final, reports, exit_code)
    run.update(summary=summary, final=final, samples=samples)
    if args.out is None:
        path = save("soak", run)
    else:
        path = args.out
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(run, indent=2))
    png = path.with_suffix(".png")
    plot(samples, summary, png)
    print(json.dumps({k: summary[k] for k in ("passed", "criteria", "rss_mb", "fds", "threads", "tick", "drops",
                                              "stalls", "machine_load")},
                     indent=2))
    print(f"saved {path} and {png}")
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
