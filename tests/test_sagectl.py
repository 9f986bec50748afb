"""sagectl against a real daemon: tables by default, --json on request, exit codes, `top` in a pty."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import threading
import time

import numpy as np
import pytest

from sage_runtime import __version__
from sage_runtime.client import SensorPublisher
from tests.harness import SAGECTL, DaemonProcess, wait_for

LONG_ID = "front_left_wide_angle_camera_rectified_0"  # 40 characters
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def ctl(d: DaemonProcess, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SAGECTL, "--socket", d.control_endpoint, *args], capture_output=True, text=True,
                          timeout=30, env=env)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    d = DaemonProcess(tmp_path_factory.mktemp("ctl"), {"plugins": {"enabled": ["tests.plugins_for_tests:Echo"]}})
    d.start()
    pub = SensorPublisher(d.ingest)
    pub.tensor(LONG_ID, np.zeros((4, 4), np.float32))
    pub.text("operator", "hello")
    wait_for(lambda: d.status()["ingest"]["sensors"].get(LONG_ID, {}).get("accepted") == 1)
    yield d
    pub.close()
    d.kill()


def test_version_and_exit_codes_in_help():
    out = subprocess.run([SAGECTL, "--version"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and out.stdout.strip() == f"sagectl {__version__}"
    helptext = subprocess.run([SAGECTL, "--help"], capture_output=True, text=True, timeout=30).stdout
    assert "exit codes:" in helptext and "3  the daemon is not running" in helptext


@pytest.mark.parametrize("args", [["status"], ["stats"], ["config"], ["plugins"], ["trust"], ["state"],
                                  ["state", "show"], ["pause", "echo"], ["resume", "echo"]])
def test_every_subcommand_prints_a_table_and_json_on_request(daemon, args):
    human = ctl(daemon, *args)
    assert human.returncode == 0, human.stderr
    assert human.stdout.strip() and not human.stdout.lstrip().startswith(("{", "[")), human.stdout
    as_json = ctl(daemon, *args, "--json")
    assert as_json.returncode == 0, as_json.stderr
    json.loads(as_json.stdout)


def test_status_table_keeps_long_sensor_ids_whole_and_aligned(daemon):
    out = ctl(daemon, "status").stdout
    rows = [line for line in out.splitlines() if LONG_ID in line]
    assert len(rows) == 1, out
    header = next(line for line in out.splitlines() if line.lstrip().startswith("sensor ") and "received" in line)
    # The row's received count sits under the header's `received` column.
    col = header.index("received") + len("received")
    assert rows[0][:col].rstrip().endswith("1"), (header, rows[0])
    assert "echo" in out and "ok" in out


def test_floats_are_rounded_in_tables(daemon):
    ctl(daemon, "state", "set", "FOCUS", "--for", "30s")
    out = ctl(daemon, "state").stdout
    ctl(daemon, "state", "clear")
    value = re.search(r"override_left_s\s+(\S+)", out).group(1)
    assert len(value.split(".")[-1]) <= 3, out


def test_reload_exits_nonzero_when_the_daemon_refuses_the_file(tmp_path):
    d = DaemonProcess(tmp_path).start()
    try:
        good = ctl(d, "reload")
        assert good.returncode == 0, good.stdout + good.stderr
        d.config_path.write_text("tick: {rate_hz: fast}\n")
        bad = ctl(d, "reload")
        assert bad.returncode == 2 and "refused" in bad.stdout and "rate_hz" in bad.stdout
        assert ctl(d, "reload", "--json").returncode == 2
    finally:
        d.kill()


def read_pty(cmd: list[str], timeout_s: float = 60.0) -> tuple[int, str]:
    """Run `cmd` with a pseudo-terminal as stdout; everything it drew, and its exit code."""
    master, slave = pty.openpty()
    env = {**os.environ, "COLUMNS": "150", "LINES": "50", "TERM": "xterm-256color"}
    proc = subprocess.Popen(cmd, stdout=slave, stderr=slave, stdin=slave, env=env)
    os.close(slave)
    chunks = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    os.close(master)
    return proc.wait(timeout=10), b"".join(chunks).decode(errors="replace")


def test_top_redraws_live_in_a_pty(daemon):
    stop = threading.Event()

    def feed():
        pub = SensorPublisher(daemon.ingest)
        while not stop.is_set():
            pub.tensor("imu", np.zeros(6, np.float32))
            time.sleep(0.02)
        pub.close()
    feeder = threading.Thread(target=feed)
    feeder.start()
    try:
        code, raw = read_pty([SAGECTL, "--socket", daemon.control_endpoint, "top", "--interval", "0.5",
                              "--iterations", "4"])
    finally:
        stop.set()
        feeder.join()
    assert code == 0, raw
    assert "\x1b[" in raw  # drawn with cursor control, i.e. as a live terminal view
    text = ANSI.sub("", raw)
    ticks = [int(n) for n in re.findall(r"n=(\d+)", text)]
    assert len(ticks) >= 4 and len(set(ticks)) >= 2, text  # the screens differ as the daemon ticks
    rates = [float(x) for x in re.findall(r"imu\s+tensor\s+vector\s+([0-9.]+)", text)]
    assert rates and max(rates) > 1.0, text  # a per-sensor rate, measured between screens
    assert "steps/s" in text and "stale_ms" in text and "echo" in text
