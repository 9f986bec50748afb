"""Foxglove live view (`foxglove.listen`, the `foxglove` extra: foxglove-sdk).

Serves the Foxglove WebSocket protocol. It is a client of the daemon's own sockets, on its own
thread: camera frames from the ingest tap, result images and language intents from the results
socket, and a status plot channel from a status reply taken on the event loop twice a second. So
the tick pays nothing for it beyond the tap's forwarding of admitted frames.

Topics: `/camera/<sensor>` (foxglove.RawImage), `/<plugin>/<output>` for image-shaped result
tensors (e.g. `/vision/reconstruction`, `/vision/error_map`), `/language/intents` (foxglove.Log),
`/sage/status` (JSON: state, state_code, atp_level, atp_fraction, tick_p50_ms, tick_p99_ms,
salience.*; plot e.g. `/sage/status.atp_level`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import zmq

from sage_runtime.cognition.metabolic import MetabolicState
from sage_runtime.wire import WireError, decode_ingest, decode_published

log = logging.getLogger("sage.foxglove")

STATUS_PERIOD_S = 0.5
STATE_CODES = {name: i for i, name in enumerate(MetabolicState.__members__)}
STATUS_SCHEMA = {"type": "object", "properties": {
    "state": {"type": "string"}, "state_code": {"type": "integer"}, "atp_level": {"type": "number"},
    "atp_fraction": {"type": "number"}, "tick_p50_ms": {"type": "number"}, "tick_p99_ms": {"type": "number"},
    "salience": {"type": "object"}}}


def image_fields(array: np.ndarray) -> tuple[int, int, str, int, bytes] | None:
    """(width, height, encoding, step, bytes) of a foxglove.RawImage for an HxW or HxWxC array;
    floats become 32FC1 (an error map), None for what is not an image."""
    a = np.asarray(array)
    if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3, 4):
        a = np.moveaxis(a, 0, -1)  # CHW -> HWC
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or min(a.shape[:2]) < 2:
        return None
    if a.ndim == 3:
        if a.shape[-1] not in (3, 4):
            return None
        a = np.ascontiguousarray(a if a.dtype == np.uint8 else (np.clip(a, 0, 1) * 255).astype(np.uint8))
        enc = "rgb8" if a.shape[-1] == 3 else "rgba8"
        return a.shape[1], a.shape[0], enc, a.shape[1] * a.shape[-1], a.tobytes()
    if a.dtype == np.uint8:
        return a.shape[1], a.shape[0], "mono8", a.shape[1], np.ascontiguousarray(a).tobytes()
    if a.dtype == np.uint16:
        return a.shape[1], a.shape[0], "mono16", a.shape[1] * 2, np.ascontiguousarray(a, dtype="<u2").tobytes()
    a = np.ascontiguousarray(a, dtype="<f4")
    return a.shape[1], a.shape[0], "32FC1", a.shape[1] * 4, a.tobytes()


def status_message(s: dict[str, Any]) -> dict[str, Any]:
    name = s["state"]["name"]
    return {"state": name, "state_code": STATE_CODES.get(name, -1), "atp_level": s["atp"]["level"],
            "atp_fraction": s["atp"]["fraction"], "tick_p50_ms": s["tick"]["p50_ms"],
            "tick_p99_ms": s["tick"]["p99_ms"], "salience": s.get("salience", {})}


class FoxgloveView:
    """The WebSocket server and the thread that feeds it; nothing when `listen` is unset."""

    def __init__(self, listen: str | None, tap_endpoint: str, results_endpoint: str,
                 status: Callable[[], dict[str, Any]]) -> None:
        self.server: Any = None
        if listen is None:
            return
        import foxglove

        host, _, port = listen.rpartition(":")
        self.fox = foxglove
        self.context = foxglove.Context()
        self.server = foxglove.start_server(name="sage-runtime", host=host.strip("[]"), port=int(port),
                                            context=self.context)
        self.port = self.server.port
        self.status = status
        self.endpoints = (tap_endpoint, results_endpoint)
        self.channels: dict[str, Any] = {}
        self.published = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="foxglove", daemon=True)
        self._thread.start()
        log.info("foxglove live view on ws://%s:%d", host, self.port)

    def _channel(self, topic: str, kind: str) -> Any:
        ch = self.channels.get(topic)
        if ch is None:
            from foxglove.channels import LogChannel, RawImageChannel

            if kind == "image":
                ch = RawImageChannel(topic, context=self.context)
            elif kind == "log":
                ch = LogChannel(topic, context=self.context)
            else:
                ch = self.fox.Channel(topic, schema=STATUS_SCHEMA, context=self.context)
            self.channels[topic] = ch
        return ch

    def _image(self, topic: str, array: Any, ts_ns: int, frame_id: str) -> None:
        from foxglove.messages import RawImage, Timestamp

        fields = image_fields(np.asarray(array))
        if fields is None:
            return
        w, h, enc, step, data = fields
        msg = RawImage(timestamp=Timestamp(sec=ts_ns // 10**9, nsec=ts_ns % 10**9), frame_id=frame_id, width=w,
                       height=h, encoding=enc, step=step, data=data)
        self._channel(topic, "image").log(msg, log_time=ts_ns)
        self.published += 1

    def _on_tap(self, parts: list[bytes]) -> None:
        try:
            msg = decode_ingest(parts[2:], max_elements=1 << 26, reject_non_finite=False)
        except WireError:
            return
        if msg.kind == "tensor" and msg.dtype in ("uint8", "uint16", "float32"):  # image_fields picks images
            self._image(f"/camera/{msg.sensor}", msg.array(), msg.ts_ns, msg.sensor)

    def _on_result(self, parts: list[bytes]) -> None:
        try:
            res = decode_published(parts)
        except WireError:
            return
        plugin = res.header.get("plugin")
        if not plugin:
            return
        ts = int(res.header.get("ts_ns") or time.time_ns())
        for name, value in res.outputs.items():
            if isinstance(value, np.ndarray) and value.ndim in (2, 3):
                self._image(f"/{plugin}/{name}", value, ts, plugin)
        if plugin == "language" and "intent" in res.outputs:
            from foxglove.messages import Log, LogLevel, Timestamp

            o = res.outputs
            text = f"{o.get('intent')}: {o.get('text')!r} (confidence {o.get('confidence')})"
            self._channel("/language/intents", "log").log(
                Log(timestamp=Timestamp(sec=ts // 10**9, nsec=ts % 10**9), level=LogLevel.Info, message=text,
                    name="language"), log_time=ts)
            self.published += 1

    def _run(self) -> None:
        ctx = zmq.Context.instance()
        tap, results = ctx.socket(zmq.SUB), ctx.socket(zmq.SUB)
        tap.setsockopt(zmq.SUBSCRIBE, b"tap/")
        results.setsockopt(zmq.SUBSCRIBE, b"result/")
        for sock, ep in zip((tap, results), self.endpoints):
            sock.setsockopt(zmq.RCVHWM, 64)  # a slow browser costs dropped frames, never memory
            sock.connect(ep)
        poller = zmq.Poller()
        poller.register(tap, zmq.POLLIN)
        poller.register(results, zmq.POLLIN)
        next_status = time.monotonic()
        try:
            while not self._stop.is_set():
                for sock, _ in poller.poll(100):
                    parts = sock.recv_multipart()
                    (self._on_tap if sock is tap else self._on_result)(parts)
                if time.monotonic() >= next_status:
                    next_status = time.monotonic() + STATUS_PERIOD_S
                    self._publish_status()
        except Exception:  # noqa: BLE001 - the live view failing must not take the daemon down
            log.exception("foxglove live view stopped")
        finally:
            tap.close(linger=0)
            results.close(linger=0)

    def _publish_status(self) -> None:
        try:
            s = self.status()
        except Exception as exc:  # noqa: BLE001 - e.g. the loop shutting down
            log.debug("foxglove: no status: %s", exc)
            return
        self._channel("/sage/status", "json").log(status_message(s), log_time=time.time_ns())
        self.published += 1

    def close(self) -> None:
        if self.server is None:
            return
        self._stop.set()
        self._thread.join(timeout=2)
        self.server.stop()
        self.server = None
