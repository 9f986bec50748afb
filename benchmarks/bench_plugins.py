"""All built-in plugins: time per step, steps to halt, and quality against ground truth.

Runs each `benchmarks/plugins/<name>.py` in its own process (so one plugin's threads and caches
do not colour another's timings), collects the JSON each prints, prints a one-screen summary and
saves everything to benchmarks/results/plugins.json. The per-plugin scripts document their
ground truth and the baseline they run in the same process.

Run: .venv/bin/python benchmarks/bench_plugins.py [--quick] [--only vision,memory]

With --only, the other plugins' entries of an existing results file of the same kind (full or
quick) are kept, each with the time it was measured, so one plugin can be re-measured alone.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import RESULTS, machine, save  # noqa: E402

HERE = Path(__file__).resolve().parent / "plugins"
PLUGINS = ("vision", "language", "memory", "reasoning")


def run_one(name: str, quick: bool) -> dict[str, Any]:
    cmd = [sys.executable, str(HERE / f"{name}.py"), *(["--quick"] if quick else [])]
    t0 = time.monotonic()
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=HERE.parents[1])
    if out.returncode != 0:
        return {"error": f"exit {out.returncode}", "stderr_tail": out.stderr[-2000:]}
    # The scripts print one JSON document last; anything before it is progress output.
    text = out.stdout[out.stdout.index("{"):] if "{" in out.stdout else ""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        return {"error": f"no JSON on stdout ({exc})", "stdout_tail": out.stdout[-2000:]}
    data["bench_wall_s"] = round(time.monotonic() - t0, 1)
    return data


def summary_line(name: str, data: dict[str, Any]) -> str:
    if "error" in data:
        return f"{name:<10} FAILED: {data['error']}"
    keys = ("step", "steps_to_halt", "quality")
    parts = [f"{k}={json.dumps(data[k], separators=(',', ':'))[:160]}" for k in keys if k in data]
    return f"{name:<10} " + ("  ".join(parts) if parts else f"keys: {', '.join(sorted(data))[:160]}")


def kept_results(quick: bool, rerun: list[str]) -> dict[str, Any]:
    """Entries of the saved results for plugins not re-run now, when they are of the same kind."""
    path = RESULTS / "plugins.json"
    if not path.exists():
        return {}
    old = json.loads(path.read_text())
    if old.get("quick") != quick:
        return {}
    when = old.get("machine", {}).get("when")
    return {name: {"measured_at": when, **data} for name, data in old.get("plugins", {}).items()
            if name not in rerun and name in PLUGINS}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller ground-truth sets, for a smoke run")
    ap.add_argument("--only", default=",".join(PLUGINS), help="comma-separated plugin names")
    args = ap.parse_args()
    names = [n for n in args.only.split(",") if n]
    results: dict[str, Any] = {"benchmark": "plugins", "machine": machine(), "quick": args.quick,
                               "plugins": kept_results(args.quick, names)}
    for name in names:
        print(f"running {name} ...", flush=True)
        results["plugins"][name] = {**run_one(name, args.quick), "measured_at": results["machine"]["when"]}
        print(summary_line(name, results["plugins"][name]), flush=True)
    print("saved", save("plugins", results))
    return 1 if any("error" in d for d in results["plugins"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
