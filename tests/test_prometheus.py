"""`metrics.listen`: /metrics scraped over HTTP from a real daemon, parsed with prometheus_client."""

from __future__ import annotations

import os
import socket
import urllib.request

import numpy as np
import pytest

pytest.importorskip("prometheus_client")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from sage_runtime.client import SensorPublisher  # noqa: E402
from sage_runtime.edges.prometheus import CumulativeHistogram  # noqa: E402
from sage_runtime.metrics import LatencyWindow  # noqa: E402
from tests.harness import DaemonProcess, wait_for  # noqa: E402
from tests.test_logs import float_ts_frame  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(url: str) -> dict[str, list]:
    body = urllib.request.urlopen(url, timeout=10).read().decode()
    out: dict[str, list] = {}
    for fam in text_string_to_metric_families(body):
        for sample in fam.samples:
            out.setdefault(sample.name, []).append(sample)
    return out


def value(samples: dict[str, list], name: str, **labels: str) -> float:
    hits = [s.value for s in samples[name] if all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(hits) == 1, (name, labels, samples.get(name))
    return hits[0]


def test_histogram_folds_new_samples_only_and_counts_what_left_the_ring():
    w = LatencyWindow(4)
    h = CumulativeHistogram((0.001, 0.01))
    for ms in (0.5, 5.0, 50.0):
        w.record(ms)
    h.absorb(w)
    assert h.buckets() == [("0.001", 1.0), ("0.01", 2.0), ("+Inf", 3.0)] and h.sum_ms == 55.5
    for ms in (0.1,) * 6:  # 6 new, the ring keeps 4
        w.record(ms)
    h.absorb(w)
    assert h.buckets()[-1] == ("+Inf", 7.0) and h.missed == 2


def test_metrics_endpoint_serves_the_daemons_counters(tmp_path):
    port = free_port()
    d = DaemonProcess(tmp_path, {"metrics": {"listen": f"127.0.0.1:{port}"},
                                 "plugins": {"enabled": ["tests.plugins_for_tests:Echo"]}}).start()
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        pub = SensorPublisher(d.ingest)
        for _ in range(5):
            pub.tensor("cam", np.zeros((8, 8, 3), np.uint8))
        pub.send_parts(float_ts_frame("js", 0))
        wait_for(lambda: d.status()["ingest"]["sensors"].get("cam", {}).get("received") == 5
                 and d.status()["plugins"]["echo"]["runs"] > 0)
        first = scrape(url)
        status = d.status()
        cam = status["ingest"]["sensors"]["cam"]
        for outcome in ("received", "accepted", "skipped", "dropped"):
            assert value(first, "sage_ingest_frames_total", sensor="cam", outcome=outcome) == cam[outcome]
        assert value(first, "sage_ingest_rejected_total", reason="key_type") == 1
        assert value(first, "sage_state", state=status["state"]["name"]) == 1
        assert sum(s.value for s in first["sage_state"]) == 1
        assert value(first, "sage_plugin_runs_total", plugin="echo") >= 1
        assert value(first, "sage_plugin_status", plugin="echo", status="ok") == 1
        assert 0 < value(first, "sage_atp_level") <= value(first, "sage_atp_capacity")
        count = value(first, "sage_tick_duration_seconds_count")
        assert count > 0 and value(first, "sage_tick_duration_seconds_bucket", le="+Inf") == count
        assert "sage_telemetry_cpu_load_ratio" in first or "sage_telemetry_throttled" in first

        wait_for(lambda: d.status()["tick"]["count"] > status["tick"]["count"] + 10)
        second = scrape(url)
        assert value(second, "sage_ticks_total") > value(first, "sage_ticks_total")
        assert value(second, "sage_tick_duration_seconds_count") > count  # cumulative across scrapes
        pub.close()
    finally:
        d.kill()


def test_bad_listen_value_is_a_config_error():
    import subprocess

    from tests.harness import SAGE_RUNTIME
    out = subprocess.run([SAGE_RUNTIME, "--check-config"], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "SAGE_METRICS__LISTEN": "9464"})
    assert out.returncode == 2 and "metrics.listen" in out.stderr
