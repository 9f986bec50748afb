"""Python SDK: publish sensor frames, receive results, drive the control socket.

Each class owns one ZeroMQ socket and is meant for one thread, like the sockets themselves.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import zmq
from zmq.utils.monitor import recv_monitor_message

from sage_runtime.shm import ShmWriter
from sage_runtime.wire import (
    ResultMessage, decode_published, decode_reply, encode_ingest, encode_ingest_shm, encode_request,
)


#: RuntimeDirectory=sage of the systemd unit.
SYSTEM_RUNTIME_DIR = Path("/run/sage")


def default_runtime_dir() -> Path:
    """Where a daemon with default settings puts its sockets (docs/operations.md). When that has no
    control socket but the systemd service's /run/sage has one, that one: `sagectl` run by an
    operator finds the installed daemon without flags."""
    for name in ("SAGE_RUNTIME_DIR", "RUNTIME_DIRECTORY"):
        if os.environ.get(name):
            return Path(os.environ[name].split(":")[0])
    own = Path(os.environ["XDG_RUNTIME_DIR"]) / "sage" if os.environ.get("XDG_RUNTIME_DIR") \
        else Path(f"/tmp/sage-{os.getuid()}")
    if not (own / "control.sock").exists() and (SYSTEM_RUNTIME_DIR / "control.sock").exists():
        return SYSTEM_RUNTIME_DIR
    return own


def _endpoint(endpoint: str | None, sock_name: str) -> str:
    return endpoint or f"ipc://{default_runtime_dir() / sock_name}"


class DaemonNotRunning(ConnectionError):
    """No daemon answered on the control socket, or none subscribed to a publisher within its timeout."""


#: How long a SensorPublisher waits for the daemon's ingest to subscribe before it gives up.
CONNECT_TIMEOUT_S = 5.0


class SensorPublisher:
    """Publishes frames for any number of sensors; numbers each sensor's frames from 0.

    The socket is an XPUB, not a PUB: the daemon's ingest is a SUB socket, and a SUB tells its
    publisher what it subscribes to once the connection is up. Waiting for that subscription message
    is a real handshake (a PUB would silently drop whatever it sends before it: the slow joiner), so
    once the constructor returns, no frame is lost to the connection being young. With
    `connect_timeout_s=None` it does not wait (frames sent before the daemon subscribes are dropped).
    """

    def __init__(self, endpoint: str | None = None, *, context: zmq.Context | None = None,
                 sndhwm: int = 1000, connect_timeout_s: float | None = CONNECT_TIMEOUT_S) -> None:
        self.ctx = context or zmq.Context.instance()
        self.endpoint = _endpoint(endpoint, "ingest.sock")
        self.sock = self.ctx.socket(zmq.XPUB)
        self.sock.setsockopt(zmq.SNDHWM, sndhwm)
        self.sock.setsockopt(zmq.LINGER, 1000)
        self.sock.setsockopt(zmq.XPUB_VERBOSE, 1)  # every (re)connecting subscriber is reported
        self.sock.connect(self.endpoint)
        self._seq: dict[str, int] = {}
        self._rings: dict[str, ShmWriter] = {}
        self.subscribed = False
        if connect_timeout_s is not None and not self.wait_connected(connect_timeout_s):
            self.sock.close(linger=0)
            raise DaemonNotRunning(f"no sage-runtime subscribed on {self.endpoint} within {connect_timeout_s} s"
                                   " (is the daemon running, and is this its ingest endpoint?)")

    def wait_connected(self, timeout_s: float) -> bool:
        """True once the daemon's ingest has subscribed (frames sent from then on are delivered)."""
        deadline = time.monotonic() + timeout_s
        while not self.subscribed:
            left_ms = int((deadline - time.monotonic()) * 1000)
            if left_ms <= 0 or not self.sock.poll(left_ms):
                return False
            msg = self.sock.recv()
            self.subscribed = msg[:1] == b"\x01"
        return True

    def _next(self, sensor: str, seq: int | None) -> int:
        value = self._seq.get(sensor, 0) if seq is None else seq
        self._seq[sensor] = value + 1
        return value

    def send_parts(self, parts: list[Any]) -> None:
        self.sock.send_multipart(parts, copy=False)

    def tensor(self, sensor: str, array: Any, *, seq: int | None = None, ts_ns: int | None = None,
               meta: Mapping[str, Any] | None = None) -> int:
        """Send a numpy array or torch tensor (C order, little-endian). Returns the seq used."""
        n = self._next(sensor, seq)
        self.send_parts(encode_ingest(sensor, n, "tensor", array, ts_ns=ts_ns or time.time_ns(), meta=meta))
        return n

    def tensor_shm(self, sensor: str, array: Any, *, seq: int | None = None, ts_ns: int | None = None,
                   meta: Mapping[str, Any] | None = None, slots: int = 4) -> int:
        """Send a numpy array through shared memory (same host as the daemon): its bytes go into
        this sensor's ring, only the header goes over ZeroMQ. The ring (/dev/shm/sage-<pid>-...)
        is made on the first frame, sized to it (a larger frame later makes a new one), and
        unlinked by close(); the daemon unlinks it if this process dies. Returns the seq used."""
        import numpy as np

        array = np.ascontiguousarray(array)
        ring = self._rings.get(sensor)
        if ring is None or array.nbytes > ring.slot_bytes:
            if ring is not None:
                ring.close()
            ring = self._rings[sensor] = ShmWriter(f"sage-{os.getpid()}-{id(self):x}-{sensor}",
                                                   max(array.nbytes, 64), slots)
        slot, gen = ring.write(array)
        n = self._next(sensor, seq)
        self.send_parts(encode_ingest_shm(sensor, n, array.dtype.name, array.shape, ring.name, slot, gen,
                                          ts_ns=ts_ns or time.time_ns(), meta=meta))
        return n

    def text(self, sensor: str, text: str, *, seq: int | None = None, ts_ns: int | None = None,
             meta: Mapping[str, Any] | None = None) -> int:
        n = self._next(sensor, seq)
        self.send_parts(encode_ingest(sensor, n, "text", text, ts_ns=ts_ns or time.time_ns(), meta=meta))
        return n

    def event(self, sensor: str, type: str, priority: str = "info", *, seq: int | None = None,
              ts_ns: int | None = None, **fields: Any) -> int:
        n = self._next(sensor, seq)
        body = {"type": type, "priority": priority, **fields}
        self.send_parts(encode_ingest(sensor, n, "event", body, ts_ns=ts_ns or time.time_ns()))
        return n

    def reward(self, sensor: str, value: float, target: str, *, seq: int | None = None,
               ts_ns: int | None = None) -> int:
        n = self._next(sensor, seq)
        self.send_parts(encode_ingest(sensor, n, "reward", {"value": float(value), "target": target},
                                      ts_ns=ts_ns or time.time_ns()))
        return n

    def close(self) -> None:
        self.sock.close()
        for ring in self._rings.values():
            ring.close()
        self._rings.clear()


def _connect_and_wait(sock: zmq.Socket, endpoint: str, timeout_s: float) -> bool:
    """Connect and wait for the ZMTP handshake (socket monitor): a SUB sends its subscriptions right
    after it, so messages published from then on reach it. False when no daemon answered in time
    (the socket keeps trying to connect in the background)."""
    monitor = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
    try:
        sock.connect(endpoint)
        deadline = time.monotonic() + timeout_s
        while (left_ms := int((deadline - time.monotonic()) * 1000)) > 0 and monitor.poll(left_ms):
            if recv_monitor_message(monitor)["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                return True
        return False
    finally:
        sock.disable_monitor()
        monitor.close(linger=0)


class ResultSubscriber:
    """Receives `result/<plugin>` and `state` messages; tensors arrive as numpy arrays.

    The constructor waits up to `connect_timeout_s` for the connection (`connected` says whether it
    came up); unlike a publisher it does not raise, so a subscriber may start before the daemon."""

    def __init__(self, endpoint: str | None = None, *, topics: tuple[str, ...] = ("",),
                 context: zmq.Context | None = None, connect_timeout_s: float = 1.0) -> None:
        self.ctx = context or zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        for topic in topics:
            self.sock.setsockopt(zmq.SUBSCRIBE, topic.encode())
        self.connected = _connect_and_wait(self.sock, _endpoint(endpoint, "results.sock"), connect_timeout_s)

    def recv(self, timeout_s: float | None = None) -> ResultMessage | None:
        """The next message, or None when timeout_s passes first."""
        if timeout_s is not None and not self.sock.poll(int(timeout_s * 1000)):
            return None
        return decode_published(self.sock.recv_multipart())

    def close(self) -> None:
        self.sock.close()


class ControlAccessDenied(PermissionError):
    """The control socket exists but this user may not reach it (file modes); the message says who may."""


def _check_access(path: Path) -> bool:
    """True when the socket file exists and is ours to use; ControlAccessDenied when modes refuse us."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return False
    except PermissionError:
        raise ControlAccessDenied(f"permission denied reaching {path}: its directory is closed to this user "
                                  f"(uid {os.getuid()}); run as the daemon's user or a member of its group") from None
    if not os.access(path, os.R_OK | os.W_OK):
        raise ControlAccessDenied(f"permission denied on {path} (owner uid {st.st_uid}, group gid {st.st_gid}, "
                                  f"mode {st.st_mode & 0o777:04o}): run as that user or a member of that group")
    return True


class ControlError(RuntimeError):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


class ControlClient:
    """One request, one reply over the control socket; a fresh REQ socket per call so a lost
    reply never wedges the client."""

    def __init__(self, endpoint: str | None = None, *, timeout_s: float = 3.0,
                 context: zmq.Context | None = None) -> None:
        self.endpoint = _endpoint(endpoint, "control.sock")
        self.timeout_s = timeout_s
        self.ctx = context or zmq.Context.instance()

    def call(self, cmd: str, **args: Any) -> Any:
        if self.endpoint.startswith("ipc://") and not _check_access(Path(self.endpoint[6:])):
            raise DaemonNotRunning(f"no control socket at {self.endpoint[6:]}")
        sock = self.ctx.socket(zmq.REQ)
        sock.setsockopt(zmq.LINGER, 0)
        try:
            sock.connect(self.endpoint)
            sock.send(encode_request(cmd, args))
            if not sock.poll(int(self.timeout_s * 1000)):
                raise DaemonNotRunning(f"no reply from {self.endpoint} within {self.timeout_s} s")
            reply = decode_reply(sock.recv())
        finally:
            sock.close(linger=0)
        if not reply["ok"]:
            err = reply.get("error") or {}
            raise ControlError(str(err.get("code", "error")), str(err.get("message", "")))
        return reply.get("result")

    def status(self) -> dict[str, Any]:
        return self.call("status")

