"""A/B of the tick and the loop/plugin-thread hand-off: two source trees (e.g. a copy of main and
this branch), alternated round by round in one run: frame -> result p50/p99 at 64 B .. 6 MiB with
bench_transport's Python relay as the floor, idle CPU of the daemon (/proc/<pid>/stat) and its
tick p50/p99 while idle.

Run: .venv/bin/python benchmarks/bench_tick_ab.py --tree main=/tmp/main --tree mine=. [--rounds 2]
     [--idle-s 30] [--n 200]   (writes benchmarks/results/tick_ab.json)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]

#: One tree's measurement, run in a fresh interpreter with that tree first on sys.path.
CHILD = r"""
import json, sys, tempfile, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import numpy as np
from benchmarks import bench_transport as bt
from benchmarks.common import pct
from sage_runtime.client import ResultSubscriber, SensorPublisher
from tests.harness import DaemonProcess, wait_for
idle_s, n_lat = float(sys.argv[2]), int(sys.argv[3])
out = {"latency": {}}
with tempfile.TemporaryDirectory() as td:
    tmp = Path(td)
    d = DaemonProcess(tmp, bt.CONFIG).start()
    try:
        pid = d.status()["pid"]
        time.sleep(1.0)
        c0, t0 = bt.cpu_seconds(pid), time.monotonic()
        time.sleep(idle_s)
        out["idle_cpu"] = round((bt.cpu_seconds(pid) - c0) / (time.monotonic() - t0), 4)
        tick = d.status()["tick"]
        out["idle_tick"] = {k: tick[k] for k in ("p50_ms", "p99_ms", "lateness_p50_ms", "lateness_p99_ms")}
        pub = SensorPublisher(d.ingest)
        sub = ResultSubscriber(d.results, topics=("result/",))
        wait_for(lambda: (pub.tensor("warm", np.zeros(1, np.uint8)), sub.recv(0.2))[1], timeout_s=20)
        for name, nbytes in bt.SIZES.items():
            n = n_lat if nbytes < (1 << 20) else max(10, n_lat // 4)
            rel = pct(bt.relay_latency(tmp, nbytes, n))
            dae = pct(bt.daemon_latency(d, pub, sub, nbytes, n))
            out["latency"][name] = {"relay": rel, "daemon": dae,
                                    "over_relay_p50_ms": round(dae["p50_ms"] - rel["p50_ms"], 4)}
        tick = d.status()["tick"]
        out["busy_tick"] = {k: tick[k] for k in ("p50_ms", "p99_ms", "count", "input_ticks")}
        pub.close()
        sub.close()
    finally:
        d.stop()
print(json.dumps(out))
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tree", action="append", required=True, help="NAME=PATH of a source tree")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--idle-s", type=float, default=30.0)
    ap.add_argument("--n", type=int, default=200)
    args = ap.parse_args()
    trees = dict(t.split("=", 1) for t in args.tree)
    runs: dict[str, list] = {name: [] for name in trees}
    for r in range(args.rounds):
        for name, path in trees.items():  # alternated, so load drifts hit both
            got = subprocess.run([sys.executable, "-c", CHILD, str(Path(path).resolve()), str(args.idle_s),
                                  str(args.n)], capture_output=True, text=True, check=True)
            res = json.loads(got.stdout.strip().splitlines()[-1])
            runs[name].append(res)
            lat = " ".join(f"{k} {v['daemon']['p50_ms']:.3f}/{v['relay']['p50_ms']:.3f}"
                           for k, v in res["latency"].items())
            print(f"round {r} {name}: idle cpu {res['idle_cpu']:.2%} idle tick p50 {res['idle_tick']['p50_ms']} "
                  f"p99 {res['idle_tick']['p99_ms']} | daemon/relay p50 ms: {lat}", flush=True)
    path = HERE / "benchmarks" / "results" / "tick_ab.json"
    path.write_text(json.dumps({"trees": trees, "idle_s": args.idle_s, "n": args.n, "runs": runs}, indent=2))
    print(f"saved {path}")


if __name__ == "__main__":
    main()
