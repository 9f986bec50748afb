"""The metrics edge: `/metrics` in the Prometheus text format (`metrics.listen`, the `metrics` extra).

Why a collector and not instrumented counters: everything Prometheus wants is already counted for
`sagectl status`, so a scrape builds the families from one status reply and adds nothing to the
tick's hot path. The reply is taken on the event loop (where the edges update their counters), so
a scrape never reads a dict another thread is changing. Tick duration and lateness histograms are
cumulative: each scrape folds in the samples recorded since the previous one, read from the tick's
latency rings (`LatencyWindow.since`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from sage_runtime.cognition.metabolic import MetabolicState
from sage_runtime.edges.loopcall import call_on_loop
from sage_runtime.metrics import LatencyWindow

log = logging.getLogger("sage.metrics")

#: Histogram bucket upper bounds, seconds (a 100 Hz tick has a 10 ms budget).
BUCKETS_S = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0)
SCRAPE_TIMEOUT_S = 2.0
INGEST_OUTCOMES = ("received", "accepted", "skipped", "dropped")


class CumulativeHistogram:
    """Bucket counts over every sample folded in so far, from a ring that keeps only the newest.

    Samples that left the ring between two scrapes (more than its size) are counted in `missed`,
    not guessed into buckets."""

    def __init__(self, bounds_s: tuple[float, ...] = BUCKETS_S) -> None:
        self.bounds_ms = np.asarray(bounds_s) * 1e3
        self.counts = np.zeros(len(bounds_s) + 1, dtype=np.int64)  # last: above every bound
        self.sum_ms = 0.0
        self.seen = 0
        self.missed = 0

    def absorb(self, window: LatencyWindow) -> None:
        samples = window.since(self.seen)
        self.missed += window.count - self.seen - samples.size
        self.seen = window.count
        if samples.size:
            self.counts += np.bincount(np.searchsorted(self.bounds_ms, samples, side="left"),
                                       minlength=self.counts.size)
            self.sum_ms += float(samples.sum())

    def buckets(self) -> list[tuple[str, float]]:
        cum = np.cumsum(self.counts)
        return [(repr(float(b)), float(c)) for b, c in zip(self.bounds_ms / 1e3, cum[:-1])] + [("+Inf", float(cum[-1]))]


def _families(s: dict[str, Any], hists: dict[str, CumulativeHistogram]) -> Iterator[Any]:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

    def gauge(name: str, doc: str, value: Any, labels: dict[str, str] | None = None) -> Any:
        g = GaugeMetricFamily(name, doc, labels=list(labels or {}))
        if value is not None:
            g.add_metric(list((labels or {}).values()), float(value))
        return g

    info = GaugeMetricFamily("sage_info", "Daemon version and device", labels=["version", "device"])
    info.add_metric([s["version"], s["device"]], 1)
    yield info
    yield gauge("sage_uptime_seconds", "Seconds since the daemon started", s["uptime_s"])
    yield gauge("sage_healthy", "1 when sagectl status says ok, 0 when degraded", s["health"] == "ok")
    state = GaugeMetricFamily("sage_state", "Metabolic state: 1 for the current one", labels=["state"])
    for name in MetabolicState.__members__:
        state.add_metric([name], float(s["state"]["name"] == name))
    yield state
    atp = s["atp"]
    yield gauge("sage_atp_level", "ATP in the ledger (1 ATP = 1 ms of plugin compute)", atp["level"])
    yield gauge("sage_atp_capacity", "ATP ledger capacity", atp["capacity"])
    yield gauge("sage_atp_recharge_per_second", "Current (derated) ATP recharge rate", atp["recharge_per_s"])
    yield from _tick_families(s["tick"], hists, CounterMetricFamily, HistogramMetricFamily, gauge)
    yield from _ingest_families(s, CounterMetricFamily, GaugeMetricFamily)
    yield from _plugin_families(s["plugins"], CounterMetricFamily, GaugeMetricFamily)
    yield from _telemetry_families(s.get("telemetry") or {}, GaugeMetricFamily)
    proc = s.get("process") or {}
    yield gauge("sage_process_resident_memory_bytes", "Daemon RSS", proc.get("rss_bytes"))
    yield gauge("sage_process_open_fds", "Daemon open file descriptors", proc.get("open_fds"))
    yield gauge("sage_process_threads", "Daemon threads", proc.get("threads"))


def _tick_families(t: dict[str, Any], hists: dict[str, CumulativeHistogram], counter: Any, histogram: Any,
                   gauge: Callable[..., Any]) -> Iterator[Any]:
    for name, doc, key in (("sage_ticks", "Ticks run", "count"),
                           ("sage_tick_overruns", "Ticks that ran past their budget", "overruns"),
                           ("sage_tick_missed_periods", "Tick periods skipped", "missed_periods")):
        c = counter(name, doc)
        c.add_metric([], t.get(key) or 0)
        yield c
    yield gauge("sage_tick_rate_hz", "Configured tick rate", t["rate_hz"])
    for key, doc in (("duration", "Tick duration"), ("lateness", "Tick start lateness against its schedule")):
        h = hists[key]
        fam = histogram(f"sage_tick_{key}_seconds", doc)
        fam.add_metric([], h.buckets(), sum_value=h.sum_ms / 1e3)
        yield fam
        missed = counter(f"sage_tick_{key}_unsampled", f"{doc} samples that left the ring before a scrape")
        missed.add_metric([], h.missed)
        yield missed


def _ingest_families(s: dict[str, Any], counter: Any, gauge_family: Any) -> Iterator[Any]:
    ing = s["ingest"]
    frames = counter("sage_ingest_frames", "Frames per sensor by outcome (received = admitted)",
                     labels=["sensor", "outcome"])
    pending = gauge_family("sage_ingest_pending", "Frames waiting for the next tick", labels=["sensor"])
    age = gauge_family("sage_ingest_age_seconds", "Seconds since the sensor's last frame", labels=["sensor"])
    for sid, x in sorted(ing["sensors"].items()):
        for outcome in INGEST_OUTCOMES:
            frames.add_metric([sid, outcome], x[outcome])
        pending.add_metric([sid], x["pending"])
        if x.get("age_ms") is not None:
            age.add_metric([sid], x["age_ms"] / 1e3)
    rejected = counter("sage_ingest_rejected", "Messages rejected, by reason", labels=["reason"])
    for reason, n in sorted(ing["rejected"].items()):
        rejected.add_metric([reason], n)
    messages = counter("sage_ingest_messages", "Messages read from the ingest socket")
    messages.add_metric([], ing["messages"])
    results = counter("sage_results_sent", "Messages published on the results socket")
    results.add_metric([], s["results"]["sent"])
    failed = counter("sage_results_failed", "Result messages libzmq refused (slow subscribers)")
    failed.add_metric([], s["results"]["failed"])
    yield from (frames, pending, age, rejected, messages, results, failed)


def _plugin_families(plugins: dict[str, Any], counter: Any, gauge_family: Any) -> Iterator[Any]:
    fams = {key: counter(f"sage_plugin_{key}", doc, labels=["plugin"]) for key, doc in (
        ("runs", "Plugin runs"), ("steps", "Refinement steps"), ("errors", "Runs that raised"),
        ("hangs", "Runs abandoned past their deadline"), ("atp_spent", "ATP spent (ms of compute)"))}
    halts = counter("sage_plugin_halts", "Runs by halt reason", labels=["plugin", "halt"])
    status = gauge_family("sage_plugin_status", "1 for the plugin's current status", labels=["plugin", "status"])
    for name, p in sorted(plugins.items()):
        for key, fam in fams.items():
            fam.add_metric([name], p.get(key) or 0)
        for halt, n in sorted((p.get("halts") or {}).items()):
            halts.add_metric([name, str(halt)], n)
        status.add_metric([name, p["status"]], 1)
    yield from (*fams.values(), halts, status)


def _telemetry_families(tel: dict[str, Any], gauge_family: Any) -> Iterator[Any]:
    sample = tel.get("sample") or {}
    for key, name, doc in (("max_temp_c", "sage_telemetry_max_temperature_celsius", "Hottest thermal zone"),
                           ("cpu_load", "sage_telemetry_cpu_load_ratio", "CPU load 0-1"),
                           ("mem_used_frac", "sage_telemetry_memory_used_ratio", "Memory used 0-1"),
                           ("gpu_load", "sage_telemetry_gpu_load_ratio", "GPU load 0-1"),
                           ("total_power_w", "sage_telemetry_power_watts", "Board input power")):
        g = gauge_family(name, doc)
        if sample.get(key) is not None:
            g.add_metric([], float(sample[key]))
        yield g
    temps = gauge_family("sage_telemetry_temperature_celsius", "Per thermal zone", labels=["zone"])
    for zone, value in sorted((sample.get("temps_c") or {}).items()):
        temps.add_metric([zone], float(value))
    yield temps
    throttled = gauge_family("sage_telemetry_throttled", "1 while the board is throttled")
    throttled.add_metric([], float(bool(sample.get("throttled"))))
    yield throttled


class DaemonCollector:
    """A prometheus_client collector: one status reply per scrape, taken on the daemon's loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, status: Callable[[], dict[str, Any]],
                 windows: Callable[[], dict[str, LatencyWindow]]) -> None:
        self.loop = loop
        self.status = status
        self.windows = windows
        self.hists = {"duration": CumulativeHistogram(), "lateness": CumulativeHistogram()}

    def _snapshot(self) -> dict[str, Any]:
        for key, window in self.windows().items():
            self.hists[key].absorb(window)
        return self.status()

    def collect(self) -> Iterator[Any]:
        yield from _families(call_on_loop(self.loop, self._snapshot, SCRAPE_TIMEOUT_S), self.hists)


class MetricsServer:
    """The HTTP server thread, or nothing when `metrics.listen` is unset."""

    def __init__(self, listen: str | None, loop: asyncio.AbstractEventLoop, status: Callable[[], dict[str, Any]],
                 windows: Callable[[], dict[str, LatencyWindow]]) -> None:
        self.server: Any = None
        self.address: str | None = None
        if listen is None:
            return
        from prometheus_client import CollectorRegistry, start_http_server

        host, _, port = listen.rpartition(":")
        registry = CollectorRegistry(auto_describe=False)
        registry.register(DaemonCollector(loop, status, windows))  # type: ignore[arg-type]
        self.server, self._thread = start_http_server(int(port), addr=host.strip("[]"), registry=registry)
        self.address = f"{host}:{self.server.server_port}"
        log.info("metrics on http://%s/metrics", self.address)

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
