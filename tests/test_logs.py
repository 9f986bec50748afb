"""Logs: journald priorities and one line per event under systemd; rejections logged rate-limited."""

from __future__ import annotations

import logging
import os
import sys

import msgpack
import numpy as np

from sage_runtime.client import SensorPublisher
from sage_runtime.logs import LogfmtFormatter, RejectionLog, under_journald
from sage_runtime.wire import encode_ingest
from tests.harness import DaemonProcess, wait_for


def test_journald_lines_carry_priority_and_fold_tracebacks():
    fmt = LogfmtFormatter(journald=True)
    try:
        raise ValueError("bad\nthing")
    except ValueError:
        rec = logging.LogRecord("sage.x", logging.ERROR, __file__, 1, "failed: %s", ("two\nlines",),
                                exc_info=sys.exc_info())
    line = fmt.format(rec)
    assert line.startswith("<3>error sage.x: failed: two | lines | Traceback")
    assert "\n" not in line and "ValueError: bad | thing" in line
    warn = logging.LogRecord("sage.x", logging.WARNING, __file__, 1, "w", (), None)
    assert fmt.format(warn) == "<4>warning sage.x: w"
    assert LogfmtFormatter().format(warn)[:4].isdigit()  # a terminal gets a timestamp, no prefix


def test_journal_stream_must_be_stderr(tmp_path):
    path = tmp_path / "f"
    with open(path, "w") as f:
        st = os.fstat(f.fileno())
        assert under_journald(f, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
        assert not under_journald(f, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"})
        assert not under_journald(f, {})


class Records(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def test_rejection_log_first_then_count_per_interval():
    now = [0.0]
    handler = Records()
    logger = logging.getLogger("test.rejections")
    logger.addHandler(handler)
    rl = RejectionLog(logger, interval_s=60, clock=lambda: now[0])
    for _ in range(10):
        rl.note("cam", "key_type", "ts_ns must be an integer")
    rl.note("imu", "key_type", "x")
    assert len(handler.lines) == 2 and "sensor cam (key_type)" in handler.lines[0]
    now[0] = 61.0
    rl.note("cam", "dtype", "y")
    assert any("rejected 9 more frames from sensor cam (key_type)" in line for line in handler.lines)
    assert not any("more frames from sensor imu" in line for line in handler.lines)  # none after its first
    logger.removeHandler(handler)


def test_rejection_log_says_when_its_next_count_is_due():
    now = [100.0]
    logger = logging.getLogger("test.rejections.due")
    handler = Records()
    logger.addHandler(handler)
    rl = RejectionLog(logger, interval_s=60, clock=lambda: now[0])
    assert rl.due_in() == 60  # nothing open
    rl.note("cam", "key_type", "x")
    now[0] = 130.0
    rl.note("imu", "key_type", "x")
    rl.note("cam", "key_type", "x")
    assert rl.due_in() == 30  # cam's window, opened at 100, ends first
    now[0] = 160.0
    assert rl.due_in() == 0
    rl.flush()  # what the ingest's timer does: no rejection needed to log the count
    assert handler.lines[-1].startswith("rejected 1 more frames from sensor cam (key_type)")
    assert rl.due_in() == 30  # imu's window, opened at 130
    logger.removeHandler(handler)


def float_ts_frame(sensor: str, seq: int) -> list[bytes]:
    """What a JavaScript client sends when it writes ts_ns as a Number: a float64 in msgpack."""
    topic, header, body = encode_ingest(sensor, seq, "tensor", np.zeros(3, np.float32), ts_ns=1)
    h = msgpack.unpackb(header)
    h["ts_ns"] = 1.7e18
    return [topic, msgpack.packb(h), bytes(body)]


def test_daemon_under_journald_logs_one_rejection_per_sensor_and_reason(tmp_path):
    d = DaemonProcess(tmp_path)
    d.log_path.touch()
    st = os.stat(d.log_path)
    d.env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"  # the log file is the daemon's stderr
    d.start()
    try:
        pub = SensorPublisher(d.ingest)
        for i in range(25):
            pub.send_parts(float_ts_frame("js_client", i))
        wait_for(lambda: d.status()["ingest"]["rejected"].get("key_type", 0) == 25, timeout_s=10)
        status = d.status()
        assert "js_client" not in status["ingest"]["sensors"]
        assert "ts_ns" in status["ingest"]["last_rejection"]["key_type"]
        lines = d.log().splitlines()
        assert lines and all(line[0] == "<" and line[2] == ">" for line in lines), lines[:5]
        hits = [line for line in lines if "js_client" in line]
        assert len(hits) == 1 and hits[0].startswith("<4>warning sage.ingest: rejected a frame from sensor "
                                                     "js_client (key_type)"), hits
        pub.close()
    finally:
        d.kill()


def test_the_daemon_logs_a_stopped_burst_when_its_interval_ends(tmp_path):
    """A burst of rejections that stops is summarised by the ingest's timer, with no later rejection."""
    d = DaemonProcess(tmp_path, {"ingest": {"rejection_log_interval_s": 1.0}}).start()
    try:
        pub = SensorPublisher(d.ingest)
        for i in range(5):
            pub.send_parts(float_ts_frame("burst", i))
        wait_for(lambda: d.status()["ingest"]["rejected"].get("key_type", 0) == 5, timeout_s=10)
        wait_for(lambda: "rejected 4 more frames from sensor burst (key_type)" in d.log(), timeout_s=10)
        assert d.status()["ingest"]["rejected"]["key_type"] == 5  # nothing else was rejected meanwhile
        assert sum("sensor burst" in line for line in d.log().splitlines()) == 2  # the first, then the count
        pub.close()
    finally:
        d.kill()


def test_an_uncaught_crash_is_one_journal_line(tmp_path):
    import subprocess

    path = tmp_path / "stderr"
    code = ("from sage_runtime.logs import setup_logging\nimport threading\nsetup_logging('info')\n"
            "t = threading.Thread(target=lambda: 1 / 0, name='worker'); t.start(); t.join()\n"
            "raise RuntimeError('first\\nsecond')\n")
    with open(path, "wb") as err:
        st = os.fstat(err.fileno())
        run = subprocess.run([sys.executable, "-c", code], stderr=err, timeout=60,
                             env={**os.environ, "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
    assert run.returncode == 1
    lines = path.read_text().splitlines()
    assert len(lines) == 2, lines
    assert lines[0].startswith("<2>critical sage.crash: uncaught ZeroDivisionError in thread worker | Traceback")
    assert lines[1].startswith("<2>critical sage.crash: uncaught RuntimeError") and "first | second" in lines[1]
