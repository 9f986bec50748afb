"""`sage-runtime --demo` as a user runs it: steps per result and tick latency (issue 15's bar).

Starts the real daemon with `--demo` (all four built-in plugins, the demo's own sensor streams),
subscribes to its results over ZeroMQ for `--seconds`, and reports per plugin the median of the
results' `steps` header field, results per second and halts, plus the daemon's own tick p50/p99
from status. Bar: median steps >= 3 for vision and language with tick p99 within the budget.
Writes benchmarks/results/demo_steps.json.

Run: .venv/bin/python benchmarks/demo_steps.py [--seconds 40]
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sage_runtime.client import ResultSubscriber  # noqa: E402
from tests.harness import DaemonProcess  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "demo_steps.json"


def run(seconds: float) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        d = DaemonProcess(Path(tmp), args=["--demo"]).start(timeout_s=120)
        sub = ResultSubscriber(d.results, topics=("result/",))
        steps: dict[str, list[int]] = collections.defaultdict(list)
        halts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        try:
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                msg = sub.recv(timeout_s=0.1)
                if msg is not None:
                    name = msg.topic.split("/", 1)[1]
                    steps[name].append(int(msg.header["steps"]))
                    halts[name][msg.header["halt"]] += 1
            tick = d.status()["tick"]
        finally:
            sub.close()
            d.stop()
    return {"seconds": seconds,
            "plugins": {n: {"results": len(s), "results_per_s": round(len(s) / seconds, 2),
                            "steps_p50": statistics.median(s), "halts": dict(halts[n])}
                        for n, s in sorted(steps.items())},
            "tick": {k: tick.get(k) for k in ("p50_ms", "p99_ms", "p999_ms", "budget_ms", "overruns", "count")}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=40.0)
    out = run(ap.parse_args().seconds)
    print(json.dumps(out, indent=1))
    RESULTS.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
