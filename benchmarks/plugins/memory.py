"""Memory plugin benchmark: retrieval latency, steps to halt, recall@1 against ground truth.

Ground truth: N random unit vectors in 256-d (seed 0) are stored; each query is a stored item
plus Gaussian noise whose norm is `noise` x the item's norm (seed 1); a hit is the item's own id
ranked first. The baseline, measured in the same process on the same queries, is exact nearest
neighbour by one matrix-vector product (argmax cosine). A second, correlated set (100 clusters of
100 items, intra-cluster cosine about 0.8) shows recall against beta. Retrieval latency is the whole plugin run
through the real runner (init_state + Hopfield steps + outputs), one query per run: wall time
(`latency_ms`, what the tick sees) and this thread's CPU time (`cpu_ms`, which leaves out time the
OS gave to other processes: on a shared 2-core box the wall-time tail is mostly preemption).

    python benchmarks/plugins/memory.py [--quick]     # prints JSON
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sage_plugins.memory import MemoryPlugin
from sage_runtime.conformance import FAR_FUTURE_NS, make_context
from sage_runtime.plugin.contract import PluginInputs
from sage_runtime.plugin.runner import StepCost, run_plugin
from sage_runtime.records import Frame

DIM = 256


def _pct(values: list[float]) -> dict[str, float]:
    a = np.asarray(values)
    return {"p50": round(float(np.percentile(a, 50)), 4), "p99": round(float(np.percentile(a, 99)), 4),
            "max": round(float(a.max()), 4), "n": int(a.size)}


def _unit(n: int, seed: int) -> torch.Tensor:
    x = torch.randn(n, DIM, generator=torch.Generator().manual_seed(seed))
    return x / x.norm(dim=1, keepdim=True)


def _queries(items: torch.Tensor, picks: list[int], noise: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    n = torch.randn(len(picks), DIM, generator=g)
    base = items[picks]
    return base + n / n.norm(dim=1, keepdim=True) * noise * base.norm(dim=1, keepdim=True)


def _inputs(q: torch.Tensor, i: int) -> PluginInputs:
    return PluginInputs(tick=i, frames={"probe": Frame("probe", i, 0, "tensor", q, {})}, salience={"probe": 0.0})


def _retrieval(plugin: MemoryPlugin, queries: torch.Tensor, truth: list[int]) -> dict[str, Any]:
    cost = StepCost()
    for q in queries[:20]:  # settle the step-cost estimate and caches
        run_plugin(plugin, _inputs(q, 0), atp_ms=1e9, deadline_ns=FAR_FUTURE_NS, cost=cost)
    latency, cpu, steps, halts, hits = [], [], [], Counter(), 0
    for i, (q, want) in enumerate(zip(queries, truth)):
        c0 = time.thread_time()
        res = run_plugin(plugin, _inputs(q, i), atp_ms=1e9, deadline_ns=FAR_FUTURE_NS, cost=cost)
        cpu.append((time.thread_time() - c0) * 1e3)
        latency.append(res.latency_ms)
        steps.append(res.steps)
        halts[res.halt] += 1
        hits += bool(res.outputs.get("topk_ids")) and res.outputs["topk_ids"][0] == want
    step_ms = []
    for q in queries[:200]:  # one Hopfield step alone
        state = plugin.init_state(_inputs(q, 0))
        t0 = time.perf_counter()
        plugin.step(state)
        step_ms.append((time.perf_counter() - t0) * 1e3)
    return {"recall_at_1": hits / len(truth), "latency_ms": _pct(latency), "cpu_ms": _pct(cpu), "step_ms": _pct(step_ms),
            "steps_to_halt": {str(k): v for k, v in sorted(Counter(steps).items())}, "halt": dict(halts)}


def _nearest_neighbour(items: torch.Tensor, queries: torch.Tensor, truth: list[int]) -> dict[str, Any]:
    """Exact argmax-cosine over the same items (truth: row positions)."""
    xt = items.T.contiguous()
    latency, cpu, hits = [], [], 0
    for q, want in zip(queries, truth):
        c0, t0 = time.thread_time(), time.perf_counter()
        top = int(torch.argmax(q @ xt))
        latency.append((time.perf_counter() - t0) * 1e3)
        cpu.append((time.thread_time() - c0) * 1e3)
        hits += top == want
    return {"recall_at_1": hits / len(truth), "latency_ms": _pct(latency), "cpu_ms": _pct(cpu)}


def _clustered(quick: bool) -> dict[str, Any]:
    """Correlated memories: 100 clusters x 100 items, items = centre + Gaussian spread, so items
    of one cluster have cosine about 0.8; queries are items + 20% noise. Here too low a beta
    settles on the cluster's blend (a metastable state) instead of the item."""
    g = torch.Generator().manual_seed(2)
    centres = torch.nn.functional.normalize(torch.randn(100, DIM, generator=g), dim=1)
    items = centres.repeat_interleave(100, 0) + 0.5 * torch.randn(10_000, DIM, generator=g) / DIM ** 0.5
    items = items / items.norm(dim=1, keepdim=True)
    picks = torch.randperm(10_000, generator=g)[: (100 if quick else 500)].tolist()
    queries = _queries(items, picks, 0.2, seed=3)
    same = items[:100] @ items[:100].T
    out: dict[str, Any] = {"intra_cluster_cosine": round(float(same[~torch.eye(100, dtype=torch.bool)].mean()), 3),
                           "nearest_neighbour_baseline": _nearest_neighbour(items, queries, picks)}
    for beta in (32.0, 64.0, 128.0):
        with tempfile.TemporaryDirectory(prefix="sage-bench-memory-") as tmp:
            plugin = MemoryPlugin()
            plugin.setup(make_context(plugin, {"beta": beta}, Path(tmp)))
            ids = [plugin.remember(x, source="probe", salience=0.8) for x in items]
            res = _retrieval(plugin, queries, [ids[j] for j in picks])
            out[f"hopfield_beta_{beta:g}"] = {k: res[k] for k in ("recall_at_1", "steps_to_halt", "cpu_ms")}
            plugin.close()
    return out


def run(quick: bool = False) -> dict[str, Any]:
    """Store N items, then time and score retrieval; returns a JSON-able dict."""
    n_items, n_queries = (10_000, 200) if quick else (10_000, 1000)
    out: dict[str, Any] = {
        "plugin": "memory",
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                    "threads": torch.get_num_threads(), "loadavg": list(os.getloadavg())},
        "setup": {"items": n_items, "dim": DIM, "queries": n_queries, "item_seed": 0, "query_seed": 1,
                  "noise": "additive Gaussian, norm = fraction x item norm"},
    }
    items = _unit(n_items, 0)
    picks = torch.randperm(n_items, generator=torch.Generator().manual_seed(1))[:n_queries].tolist()
    with tempfile.TemporaryDirectory(prefix="sage-bench-memory-") as tmp:
        plugin = MemoryPlugin()
        plugin.setup(make_context(plugin, {}, Path(tmp)))
        plugin.warmup()
        enqueue_ms = []
        t0 = time.perf_counter()
        ids = []
        for x in items:
            ts = time.perf_counter()
            ids.append(plugin.remember(x, source="probe", salience=0.8))
            enqueue_ms.append((time.perf_counter() - ts) * 1e3)
        plugin.flush(timeout_s=120)
        out["store"] = {"enqueue_ms": _pct(enqueue_ms), "all_committed_s": round(time.perf_counter() - t0, 3)}
        truth = [ids[j] for j in picks]

        out["quality"] = {}
        for noise in ((0.2,) if quick else (0.2, 0.5, 1.0)):
            queries = _queries(items, picks, noise, seed=1)
            out["quality"][f"noise_{noise}"] = {
                "hopfield": _retrieval(plugin, queries, truth),
                "nearest_neighbour_baseline": _nearest_neighbour(items, queries, picks),
            }
        t0 = time.perf_counter()
        summaries = []
        while plugin.pending_consolidation() and time.perf_counter() - t0 < (5 if quick else 60):
            summaries.append(plugin.consolidate(budget_ms=50.0))
        checked = sum(s["checked"] for s in summaries)
        out["consolidation"] = {"calls_of_50ms": len(summaries), "checked": checked,
                                "merged": sum(s["merged"] for s in summaries),
                                "call_ms": _pct([s["elapsed_ms"] for s in summaries]) if summaries else None,
                                "items_per_ms": round(checked / max(1e-9, sum(s["elapsed_ms"] for s in summaries)), 2)}
        plugin.close()
        t0 = time.perf_counter()
        reopened = MemoryPlugin()
        reopened.setup(make_context(reopened, {}, Path(tmp)))
        out["restart"] = {"reopen_s": round(time.perf_counter() - t0, 3), "items": reopened.index.n}
        reopened.close()
    out["clustered_noise_0.2"] = _clustered(quick)
    return out


if __name__ == "__main__":
    torch.set_num_threads(1)
    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
