"""The Python SDK against a real daemon: the README example, run exactly as written, loses nothing."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import pytest

from sage_runtime.client import DaemonNotRunning, SensorPublisher
from tests.harness import REPO, SAGECTL, DaemonProcess, wait_for


def readme_block(section: str) -> str:
    """The first ```python block after the README heading `section`."""
    text = (REPO / "README.md").read_text()
    start = text.index(f"## {section}")
    match = re.search(r"```python\n(.*?)```", text[start:], re.S)
    assert match, f"no python block under {section!r}"
    return match.group(1)


def sagectl_json(d: DaemonProcess, *args: str) -> dict:
    out = subprocess.run([SAGECTL, "--socket", str(d.run_dir / "control.sock"), *args, "--json"],
                         capture_output=True, text=True, timeout=30, env=d.env)
    assert out.returncode in (0, 1), out.stderr
    return json.loads(out.stdout)


@pytest.fixture
def daemon(tmp_path):
    d = DaemonProcess(tmp_path).start()
    yield d
    d.kill()


def test_readme_example_delivers_every_message(daemon):
    """The example's three frames, sent right after the publisher is made, all reach a tick."""
    code = readme_block("Sending data")
    run = subprocess.run([sys.executable, "-c", code], env=daemon.env, capture_output=True, text=True,
                         timeout=60, cwd=daemon.tmp)
    assert run.returncode == 0, run.stderr

    def accepted():
        sensors = sagectl_json(daemon, "status")["ingest"]["sensors"]
        return all(sensors.get(s, {}).get("accepted", 0) >= 1 for s in ("imu", "operator", "bumper"))
    wait_for(accepted, timeout_s=10, interval_s=0.1)
    sensors = sagectl_json(daemon, "status")["ingest"]["sensors"]
    assert {s: sensors[s]["received"] for s in ("imu", "operator", "bumper")} == \
        {"imu": 1, "operator": 1, "bumper": 1}


def test_publisher_burst_right_after_connect(daemon):
    """A fifo sensor's burst sent the moment the constructor returns arrives in full."""
    pub = SensorPublisher(daemon.ingest)
    for i in range(20):
        pub.text("burst", f"message {i}")
    wait_for(lambda: daemon.status()["ingest"]["sensors"].get("burst", {}).get("received") == 20, timeout_s=10)
    pub.close()


def test_publisher_says_when_no_daemon(tmp_path):
    t0 = time.monotonic()
    with pytest.raises(DaemonNotRunning, match="no sage-runtime subscribed"):
        SensorPublisher(f"ipc://{tmp_path}/nothing.sock", connect_timeout_s=0.3)
    assert time.monotonic() - t0 < 5
