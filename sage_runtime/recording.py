"""`sagectl record` and `sagectl replay`: what the daemon ingests, in MCAP (the `mcap` extra).

File layout (docs/protocol.md, "Recordings"):

- `/sage/ingest/<sensor>`: one channel per sensor, message encoding `sage.wire.v1`: each message is a
  msgpack array of the three original multipart parts (topic, header, payload), byte for byte, so a
  replay sends exactly what the client sent. `log_time` is when the daemon received it,
  `publish_time` the frame's own `ts_ns`.
- `/sage/image/<sensor>`: for image tensors (uint8 HxW, HxWx1/3/4; uint16 or float32 HxW), the same
  frames as `foxglove.RawImage` (JSON), which Foxglove displays.
- `/sage/results`, `/sage/state` (with `--results`): the results socket's messages, same encoding.
"""

from __future__ import annotations

import base64
import json
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import zmq

WIRE_ENCODING = "sage.wire.v1"
INGEST_PREFIX = "/sage/ingest/"
DRAIN_MS = 50
#: foxglove.RawImage as a JSON schema (https://docs.foxglove.dev/docs/visualization/message-schemas/raw-image).
RAW_IMAGE_SCHEMA = {
    "title": "foxglove.RawImage", "type": "object",
    "properties": {
        "timestamp": {"type": "object", "properties": {"sec": {"type": "integer"}, "nsec": {"type": "integer"}}},
        "frame_id": {"type": "string"}, "width": {"type": "integer"}, "height": {"type": "integer"},
        "encoding": {"type": "string"}, "step": {"type": "integer"},
        "data": {"type": "string", "contentEncoding": "base64"},
    },
}
_ENCODINGS = {("uint8", 1): "mono8", ("uint8", 3): "rgb8", ("uint8", 4): "rgba8", ("uint16", 1): "mono16",
              ("float32", 1): "32FC1"}
_ITEMSIZE = {"uint8": 1, "uint16": 2, "float32": 4}


def raw_image(header: dict[str, Any], payload: bytes) -> bytes | None:
    """The frame as a foxglove.RawImage JSON message, or None when it is not an image Foxglove shows."""
    shape, dtype = header.get("shape") or [], header.get("dtype")
    if len(shape) == 2:
        shape = [*shape, 1]
    if len(shape) != 3 or (dtype, shape[2]) not in _ENCODINGS or min(shape[:2]) < 2:
        return None
    ts = int(header["ts_ns"])
    return json.dumps({"timestamp": {"sec": ts // 10**9, "nsec": ts % 10**9}, "frame_id": header["sensor"],
                       "width": shape[1], "height": shape[0], "encoding": _ENCODINGS[(dtype, shape[2])],
                       "step": shape[1] * shape[2] * _ITEMSIZE[dtype],
                       "data": base64.b64encode(payload).decode()}).encode()


class McapRecorder:
    """An MCAP writer with a channel per sensor, registered on the sensor's first frame."""

    def __init__(self, path: str | Path) -> None:
        from mcap.writer import Writer

        self._file = open(path, "wb")
        self.writer = Writer(self._file)
        self.writer.start(profile="", library="sage-runtime")
        self._image_schema = self.writer.register_schema(
            "foxglove.RawImage", "jsonschema", json.dumps(RAW_IMAGE_SCHEMA).encode())
        self.channels: dict[str, int] = {}
        self.counts: dict[str, int] = {}

    def _channel(self, topic: str, encoding: str = WIRE_ENCODING, schema: int = 0) -> int:
        if topic not in self.channels:
            self.channels[topic] = self.writer.register_channel(topic, encoding, schema)
            self.counts[topic] = 0
        return self.channels[topic]

    def _add(self, topic: str, data: bytes, log_ns: int, pub_ns: int, **channel: Any) -> None:
        channel_id = self._channel(topic, **channel)
        self.writer.add_message(channel_id, log_time=log_ns, data=data, publish_time=pub_ns,
                                sequence=self.counts[topic])
        self.counts[topic] += 1

    def ingest(self, rx_ns: int, parts: list[bytes]) -> None:
        header = msgpack.unpackb(parts[1], raw=False)
        sensor, ts = str(header["sensor"]), int(header["ts_ns"])
        self._add(INGEST_PREFIX + sensor, msgpack.packb(parts, use_bin_type=True), rx_ns, ts)
        if header.get("kind") == "tensor":
            image = raw_image(header, parts[2])
            if image is not None:
                self._add(f"/sage/image/{sensor}", image, rx_ns, ts, encoding="json", schema=self._image_schema)

    def published(self, rx_ns: int, parts: list[bytes]) -> None:
        topic = "/sage/state" if parts[0] == b"state" else "/sage/results"
        self._add(topic, msgpack.packb(parts, use_bin_type=True), rx_ns, rx_ns)

    def close(self) -> None:
        self.writer.finish()
        self._file.close()


def _wait_handshake(sock: zmq.Socket, endpoint: str, timeout_s: float) -> None:
    from sage_runtime.client import DaemonNotRunning, _connect_and_wait

    if not _connect_and_wait(sock, endpoint, timeout_s):
        raise DaemonNotRunning(f"no connection to {endpoint} within {timeout_s} s")


def record(tap_endpoint: str, results_endpoint: str, out: str | Path, *, duration_s: float | None = None,
           sensors: list[str] | None = None, results: bool = False) -> dict[str, int]:
    """Record until `duration_s` passes (or SIGINT/SIGTERM); message counts per channel."""
    ctx = zmq.Context.instance()
    tap = ctx.socket(zmq.SUB)
    tap.setsockopt(zmq.RCVHWM, 100000)
    for sid in sensors or [""]:
        tap.setsockopt(zmq.SUBSCRIBE, b"tap/" + sid.encode())
    socks = [tap]
    _wait_handshake(tap, tap_endpoint, 5.0)
    if results:
        res = ctx.socket(zmq.SUB)
        for topic in (b"result/", b"state"):
            res.setsockopt(zmq.SUBSCRIBE, topic)
        _wait_handshake(res, results_endpoint, 5.0)
        socks.append(res)
    rec = McapRecorder(out)
    stop = _stop_on_signals()
    wanted = set(sensors or ())
    poller = zmq.Poller()
    for sock in socks:
        poller.register(sock, zmq.POLLIN)
    deadline = None if duration_s is None else time.monotonic() + duration_s
    def take(wait_ms: int) -> int:
        got = 0
        for sock, _ in poller.poll(wait_ms):
            parts = sock.recv_multipart()
            got += 1
            if sock is tap:
                if not wanted or parts[0][4:].decode() in wanted:  # prefixes match longer ids too
                    rec.ingest(int.from_bytes(parts[1], "little"), parts[2:])
            else:
                rec.published(time.time_ns(), parts)
        return got
    try:
        while not stop and (deadline is None or time.monotonic() < deadline):
            take(200 if deadline is None else max(0, min(200, int((deadline - time.monotonic()) * 1000))))
        while take(DRAIN_MS):  # what was already on its way when told to stop
            pass
    finally:
        rec.close()
        for sock in socks:
            sock.close(linger=0)
    return rec.counts


def _stop_on_signals() -> list[int]:
    """A list that gets an element on SIGINT/SIGTERM: the loop stops and the file is finished."""
    stop: list[int] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, frame: stop.append(signum))
    return stop


def ingest_messages(path: str | Path) -> Iterator[tuple[int, list[bytes]]]:
    """(log_time ns, original parts) of every recorded ingest frame, in log-time order."""
    from mcap.reader import make_reader

    with open(path, "rb") as f:
        for _schema, channel, message in make_reader(f).iter_messages(log_time_order=True):
            if channel.topic.startswith(INGEST_PREFIX) and channel.message_encoding == WIRE_ENCODING:
                yield message.log_time, list(msgpack.unpackb(message.data, raw=False))


def replay(path: str | Path, endpoint: str, *, speed: float = 1.0, as_fast: bool = False,
           loop: bool = False) -> int:
    """Publish the recording's ingest frames, byte for byte, with their recorded spacing scaled by
    1/speed (or none with `as_fast`); the number of frames sent."""
    from sage_runtime.client import SensorPublisher

    if speed <= 0:
        raise ValueError("--speed must be positive")
    pub = SensorPublisher(endpoint)
    stop = _stop_on_signals()
    sent = 0
    try:
        while not stop:
            start, first = time.monotonic(), None
            for log_ns, parts in ingest_messages(path):
                if stop:
                    break
                first = log_ns if first is None else first
                if not as_fast:
                    delay = start + (log_ns - first) / 1e9 / speed - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                pub.send_parts(parts)
                sent += 1
            if not loop:
                break
    finally:
        pub.close()
    return sent


def main(client: Any, args: Any) -> int:
    """The `record` and `replay` subcommands of sagectl."""
    from sage_runtime import views

    status = client.status()
    out = views.console(sys.stderr)
    try:
        if args.cmd == "record":
            out.print(f"recording to {args.out}" + (f" for {args.duration} s" if args.duration else " (Ctrl-C stops)"))
            before = client.call("tap")
            counts = record(before["endpoint"], status["results"]["endpoints"][0], args.out,
                            duration_s=args.duration, sensors=args.sensors, results=args.results)
            after = client.call("tap")
            # What the daemon's tap sent and dropped (past its SNDHWM) while this recorder ran.
            result: dict[str, Any] = {"file": str(args.out), "channels": counts,
                                      "tap": {k: after[k] - before[k] for k in ("sent", "dropped")}}
        else:
            endpoint = args.ingest or status["ingest"]["endpoints"][0]
            sent = replay(args.input, endpoint, speed=args.speed, as_fast=args.max, loop=args.loop)
            result = {"file": str(args.input), "ingest": endpoint, "sent": sent}
    except ModuleNotFoundError as exc:
        if exc.name != "mcap":
            raise
        raise ValueError("recordings need the `mcap` extra: pip install 'sage-runtime[mcap]'") from None
    if args.json:
        print(json.dumps(result))
    elif args.cmd == "record":
        views.console().print(views.table(str(args.out), ["channel", "messages"], sorted(result["channels"].items())))
        tap = result["tap"]
        views.console().print(f"daemon tap while recording: sent {tap['sent']}, dropped {tap['dropped']}"
                              + ("  (a slow disk or CPU: frames were lost)" if tap["dropped"] else ""))
    else:
        views.console().print(views.kv(result))
    return 0
