"""sd_notify against a real AF_UNIX datagram socket, with the real daemon."""

from __future__ import annotations

import socket
import time

from sage_runtime.edges.notify import SystemdNotifier
from tests.harness import DaemonProcess


def bind_notify_socket(tmp_path):
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(0.2)
    return sock, path


def test_notifier_is_silent_without_socket():
    n = SystemdNotifier(environ={})
    assert not n.enabled and n.ready() is False and n.watchdog_interval_s is None


def test_notifier_sends_datagrams(tmp_path):
    sock, path = bind_notify_socket(tmp_path)
    n = SystemdNotifier(environ={"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "2000000"})
    assert n.watchdog_interval_s == 1.0
    assert n.ready("warm")
    assert sock.recv(4096) == b"READY=1\nSTATUS=warm"
    sock.close()


def test_daemon_sends_ready_then_watchdog_at_half_the_interval(tmp_path):
    sock, path = bind_notify_socket(tmp_path)
    watchdog_usec = 400_000  # 0.4 s: pings due at least every 0.2 s
    d = DaemonProcess(tmp_path, {"plugins": {"enabled": ["tests.plugins_for_tests:Echo"]}},
                      env={"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": str(watchdog_usec)})
    d.start(wait=False)
    events: list[tuple[float, bytes]] = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len([e for e in events if b"WATCHDOG=1" in e[1]]) < 10:
            try:
                events.append((time.monotonic(), sock.recv(4096)))
            except socket.timeout:
                assert d.proc.poll() is None, d.log()
        ready = [t for t, m in events if m.startswith(b"READY=1")]
        pings = [t for t, m in events if b"WATCHDOG=1" in m]
        assert ready, f"no READY=1: {events[:5]}\n{d.log()}"
        assert len(pings) >= 10
        assert any(b"STATUS=" in m for _, m in events)
        # READY comes after warmup and the first tick; every ping interval stays under half WATCHDOG_USEC.
        assert ready[0] <= pings[0] + 0.5
        gaps = [b - a for a, b in zip(pings, pings[1:])]
        assert max(gaps) < watchdog_usec / 1e6 / 2 + 0.05, gaps
        code, _ = d.stop()
        assert code == 0
    finally:
        d.kill()
        sock.close()
