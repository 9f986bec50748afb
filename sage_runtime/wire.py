"""Wire protocol v1, shared by the daemon and the client SDK (docs/protocol.md is normative).

Every decode failure raises `WireError` whose `reason` is a short stable code; the daemon counts
rejections per reason, so a reason is part of the protocol's observable surface.
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np

PROTOCOL_VERSION = 1
SENSOR_ID_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}\Z")
KINDS = ("tensor", "text", "event", "reward")
EVENT_PRIORITIES = ("info", "warning", "critical")
MAX_META_BYTES = 4096
MAX_NDIM = 8

#: Wire dtype name -> bytes per element. The names are torch's and numpy's (numpy has no
#: bfloat16). This module imports no torch, so a client process never pays for it.
ITEMSIZE: dict[str, int] = {
    "uint8": 1, "int8": 1, "int16": 2, "int32": 4, "int64": 8,
    "float16": 2, "bfloat16": 2, "float32": 4, "float64": 8,
}
DTYPES: tuple[str, ...] = tuple(ITEMSIZE)
FLOAT_DTYPES = frozenset({"float16", "bfloat16", "float32", "float64"})
#: numpy dtype used to view each wire dtype's bytes (bfloat16 as raw uint16 bits).
NUMPY_VIEW = {name: (np.dtype(np.uint16) if name == "bfloat16" else np.dtype(name)) for name in DTYPES}


def torch_dtype(name: str) -> Any:
    """The torch dtype of a wire dtype name (imports torch: daemon side only)."""
    import torch

    return getattr(torch, name)


def _torch_tensor(value: Any) -> bool:
    """A torch tensor can only exist if torch is already imported; never import it to check."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)


def _wire_name(tensor: Any) -> str:
    return str(tensor.dtype).removeprefix("torch.")

#: Every reason a message can be rejected for. Counters are keyed by these.
REJECT_REASONS = (
    "part_count", "topic", "sensor_id", "topic_mismatch", "header_msgpack", "header_type",
    "version", "missing_key", "key_type", "kind", "dtype", "shape", "too_large", "payload_size",
    "utf8", "non_finite", "meta", "event", "reward", "undeclared", "declared_mismatch",
    "oversize", "channel", "too_long", "too_many_parts", "sensor_limit", "sensor_budget", "mailbox_budget",
    "shm", "shm_torn",
)
#: Event and reward strings kept by status and the ledgers (type, target, priority) are at most this long.
MAX_STRING_BYTES = 256
#: msgpack containers in headers and event/reward bodies: more entries cannot be sent in one message.
_UNPACK_LIMITS = {"max_map_len": 1024, "max_array_len": 4096}


class WireError(ValueError):
    """A message that breaks the protocol; `reason` is one of REJECT_REASONS."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class ShmRef:
    """A tensor frame waiting in a client's shared-memory ring (sage_runtime/shm.py)."""

    name: str
    slot: int
    gen: int
    nbytes: int


@dataclass(frozen=True)
class IngestMessage:
    """A validated ingest message. `payload` is the raw tensor buffer, the text, or the map."""

    sensor: str
    seq: int
    ts_ns: int
    kind: str
    payload: Any
    dtype: str | None = None
    shape: tuple[int, ...] | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)
    shm: ShmRef | None = None  # payload is in a shared-memory ring until the shm edge resolves it

    def array(self) -> np.ndarray:
        """A read-only numpy view of a tensor payload (bfloat16 comes as its raw uint16 bits)."""
        if self.kind != "tensor":
            raise TypeError("not a tensor message")
        return np.frombuffer(self.payload, dtype=NUMPY_VIEW[self.dtype]).reshape(self.shape)


def _buffer(part: Any) -> memoryview:
    """zmq.Frame, bytes or memoryview -> memoryview, without copying."""
    buf = getattr(part, "buffer", None)
    return buf if buf is not None else memoryview(part)


def _require(header: Mapping[str, Any], key: str, types: type | tuple[type, ...]) -> Any:
    if key not in header:
        raise WireError("missing_key", f"header lacks required key {key!r}")
    value = header[key]
    if isinstance(value, bool) or not isinstance(value, types):
        raise WireError("key_type", f"header key {key!r} has type {type(value).__name__}")
    return value


def _unpack_map(raw: bytes | memoryview, what: str) -> dict[str, Any]:
    try:
        obj = msgpack.unpackb(raw, raw=False, strict_map_key=True, **_UNPACK_LIMITS)
    except Exception as exc:  # msgpack raises several unrelated types for malformed input
        raise WireError("header_msgpack", f"{what} is not valid msgpack: {type(exc).__name__}") from None
    if not isinstance(obj, dict):
        raise WireError("header_type", f"{what} is a {type(obj).__name__}, not a map")
    return obj


def check_sensor_id(sensor: str) -> None:
    if not SENSOR_ID_RE.match(sensor):
        raise WireError("sensor_id", f"sensor id {sensor[:80]!r} does not match [A-Za-z0-9_.-]{{1,64}}")


def _check_meta(meta: Any) -> None:
    """meta is JSON-like: string keys all the way down (a msgpack bin key broke the memory plugin)."""
    stack = [meta]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if any(not isinstance(k, str) for k in node):
                raise WireError("meta", "meta keys must be strings (found a binary or numeric key)")
            stack.extend(node.values())
        elif isinstance(node, (list, tuple)):
            stack.extend(node)


def _check_strings(body: Mapping[str, Any], keys: tuple[str, ...], limit: int, kind: str) -> None:
    for key in keys:
        value = body.get(key)
        if isinstance(value, str) and (len(value) > limit or len(value.encode("utf-8", "replace")) > limit):
            raise WireError("too_long", f"{kind} {key!r} is {len(value)} characters, more than {limit} bytes")


def decode_ingest(parts: Sequence[Any], *, max_elements: int = 1 << 24, reject_non_finite: bool = True,
                  max_string_bytes: int = MAX_STRING_BYTES, max_text_bytes: int | None = None) -> IngestMessage:
    """Validate one multipart ingest message; raise WireError on the first broken rule.
    max_text_bytes: a longer text payload is refused (too_long) before it is decoded."""
    if len(parts) != 3:
        raise WireError("part_count", f"expected 3 parts (topic, header, payload), got {len(parts)}")
    topic_raw, header_raw, payload = (_buffer(p) for p in parts)
    topic = _decode_topic(topic_raw)
    header = _unpack_map(header_raw, "header")

    version = _require(header, "v", int)
    if version != PROTOCOL_VERSION:
        raise WireError("version", f"protocol version {version} is not supported (expected {PROTOCOL_VERSION})")
    sensor = _require(header, "sensor", str)
    check_sensor_id(sensor)
    if sensor != topic[len("sensor/"):]:
        raise WireError("topic_mismatch", f"topic names sensor {topic[7:]!r} but header says {sensor!r}")
    seq = _require(header, "seq", int)
    ts_ns = _require(header, "ts_ns", int)
    if seq < 0 or seq >= 1 << 63 or ts_ns < 0 or ts_ns >= 1 << 63:
        raise WireError("key_type", "seq and ts_ns must be integers in [0, 2^63)")
    kind = _require(header, "kind", str)
    if kind not in KINDS:
        raise WireError("kind", f"kind {kind[:40]!r} is not one of {', '.join(KINDS)}")
    meta = header.get("meta", {})
    if not isinstance(meta, dict):
        raise WireError("meta", "meta must be a map")
    if len(header_raw) > MAX_META_BYTES and len(msgpack.packb(meta)) > MAX_META_BYTES:
        raise WireError("meta", f"meta exceeds {MAX_META_BYTES} bytes")
    _check_meta(meta)

    if kind == "tensor":
        return _decode_tensor(sensor, seq, ts_ns, header, payload, meta, max_elements, reject_non_finite)
    if kind == "text":
        return IngestMessage(sensor, seq, ts_ns, kind, _decode_text(payload, max_text_bytes), meta=meta)
    return IngestMessage(sensor, seq, ts_ns, kind, _decode_body(kind, payload, max_string_bytes), meta=meta)


def _decode_topic(raw: Any) -> str:
    try:
        topic = bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        raise WireError("topic", "topic is not UTF-8") from None
    if not topic.startswith("sensor/"):
        raise WireError("topic", f"topic {topic[:80]!r} does not start with 'sensor/'")
    check_sensor_id(topic[len("sensor/"):])
    return topic


def _decode_body(kind: str, payload: Any, max_string_bytes: int) -> dict[str, Any]:
    """An event's or reward's msgpack map, its strings bounded and its fields checked."""
    body = _unpack_map(payload, f"{kind} payload")
    _check_strings(body, ("type", "target", "priority"), max_string_bytes, kind)
    if kind == "reward":
        value = body.get("value")
        target = body.get("target")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or not -1.0 <= value <= 1.0:
            raise WireError("reward", "reward value must be a finite number in [-1, 1]")
        if not isinstance(target, str) or not target:
            raise WireError("reward", "reward target must be a non-empty string")
    else:
        if not isinstance(body.get("type"), str):
            raise WireError("event", "event needs a string 'type'")
        if body.get("priority") not in EVENT_PRIORITIES:
            raise WireError("event", f"event priority must be one of {', '.join(EVENT_PRIORITIES)}")
    return body


def _decode_text(payload: memoryview, max_text_bytes: int | None) -> str:
    """UTF-8 straight from the received buffer (no copy first). The decode runs on the event loop,
    ~25 ms per 30 MiB of non-ASCII text here, so its size is bounded before it starts."""
    if max_text_bytes is not None and payload.nbytes > max_text_bytes:
        raise WireError("too_long", f"text payload of {payload.nbytes} bytes exceeds {max_text_bytes} "
                                    f"(capacity.max_text_bytes)")
    try:
        return str(payload, "utf-8")
    except UnicodeDecodeError as exc:
        raise WireError("utf8", f"text payload is not UTF-8 at byte {exc.start}") from None


def _decode_tensor(sensor: str, seq: int, ts_ns: int, header: Mapping[str, Any], payload: memoryview,
                   meta: dict, max_elements: int, reject_non_finite: bool) -> IngestMessage:
    dtype = _require(header, "dtype", str)
    if dtype not in DTYPES:
        raise WireError("dtype", f"dtype {dtype[:40]!r} is not supported")
    shape = _require(header, "shape", list)
    if not 1 <= len(shape) <= MAX_NDIM:
        raise WireError("shape", f"shape must have 1 to {MAX_NDIM} dimensions")
    numel = 1
    for dim in shape:
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 0:
            raise WireError("shape", f"shape {shape[:MAX_NDIM]!r} has a negative or non-integer dimension")
        numel *= dim
        if numel > max_elements:
            raise WireError("too_large", f"tensor exceeds the {max_elements} element limit")
    expected = numel * ITEMSIZE[dtype]
    if "shm" in header:
        return IngestMessage(sensor, seq, ts_ns, "tensor", None, dtype, tuple(shape), meta,
                             _shm_ref(header["shm"], payload, expected))
    if payload.nbytes != expected:
        raise WireError("payload_size", f"payload has {payload.nbytes} bytes, shape {shape} of {dtype} needs {expected}")
    if reject_non_finite and dtype in FLOAT_DTYPES and numel:
        values = np.frombuffer(payload, dtype=NUMPY_VIEW[dtype])
        finite = ((values & 0x7F80) != 0x7F80).all() if dtype == "bfloat16" else np.isfinite(values).all()
        if not finite:
            raise WireError("non_finite", "float tensor contains NaN or Inf")
    return IngestMessage(sensor, seq, ts_ns, "tensor", payload, dtype, tuple(shape), meta)


def _shm_ref(ref: Any, payload: memoryview, nbytes: int) -> ShmRef:
    """The header's `shm` map: {name: str, slot: int, gen: even int}; the payload part is empty."""
    if not isinstance(ref, dict):
        raise WireError("shm", "header key 'shm' must be a map {name, slot, gen}")
    name, slot, gen = ref.get("name"), ref.get("slot"), ref.get("gen")
    if not isinstance(name, str) or not 1 <= len(name) <= 205:
        raise WireError("shm", "shm.name must be a ring name (sage-...)")
    if any(isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < 1 << 63 for v in (slot, gen)) or gen % 2:
        raise WireError("shm", "shm.slot and shm.gen must be integers in [0, 2^63), gen even")
    if payload.nbytes:
        raise WireError("payload_size", f"a shared-memory frame's payload part must be empty, got {payload.nbytes} bytes")
    return ShmRef(name, slot, gen, nbytes)


def encode_ingest_shm(sensor: str, seq: int, dtype: str, shape: Sequence[int], ring: str, slot: int, gen: int, *,
                      ts_ns: int, meta: Mapping[str, Any] | None = None) -> list[bytes]:
    """The three parts of a tensor frame whose bytes wait in slot `slot` of ring `ring`, written as
    generation `gen` (docs/protocol.md, "Shared-memory ingest"); the payload part is empty."""
    check_sensor_id(sensor)
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype} is not on the wire")
    header: dict[str, Any] = {"v": PROTOCOL_VERSION, "sensor": sensor, "seq": int(seq), "ts_ns": int(ts_ns),
                              "kind": "tensor", "dtype": dtype, "shape": [int(d) for d in shape],
                              "shm": {"name": ring, "slot": int(slot), "gen": int(gen)}}
    if meta:
        header["meta"] = dict(meta)
    return [f"sensor/{sensor}".encode(), msgpack.packb(header, use_bin_type=True), b""]


def encode_ingest(sensor: str, seq: int, kind: str, payload: Any, *, ts_ns: int,
                  meta: Mapping[str, Any] | None = None) -> list[Any]:
    """Build the three parts of an ingest message. Tensor payloads: a C-contiguous numpy array or
    torch tensor (sent without copy); text: str; event/reward: a map."""
    check_sensor_id(sensor)
    header: dict[str, Any] = {"v": PROTOCOL_VERSION, "sensor": sensor, "seq": int(seq), "ts_ns": int(ts_ns),
                              "kind": kind}
    if meta:
        header["meta"] = dict(meta)
    if kind == "tensor":
        if _torch_tensor(payload):
            tensor = payload.detach().cpu().contiguous()
            header["dtype"] = _wire_name(tensor)
            header["shape"] = list(tensor.shape)
            body: Any = tensor.view(-1).view(sys.modules["torch"].uint8).numpy() if tensor.numel() else b""
        else:
            array = np.ascontiguousarray(payload)
            header["dtype"] = array.dtype.name
            header["shape"] = list(array.shape)
            body = array
        if header["dtype"] not in DTYPES:
            raise ValueError(f"dtype {header['dtype']} is not on the wire")
    elif kind == "text":
        body = str(payload).encode("utf-8")
    elif kind in ("event", "reward"):
        body = msgpack.packb(dict(payload), use_bin_type=True)
    else:
        raise ValueError(f"unknown kind {kind!r}")
    return [f"sensor/{sensor}".encode(), msgpack.packb(header, use_bin_type=True), body]


# ---------------------------------------------------------------- results and state (daemon -> clients)

def tensor_bytes(value: Any) -> tuple[dict[str, Any], Any]:
    """Output tensor (torch or numpy) -> (descriptor without name, buffer to send)."""
    if _torch_tensor(value):
        tensor = value.detach().to("cpu").contiguous()
        if _wire_name(tensor) not in ITEMSIZE:
            tensor = tensor.float()
        desc = {"dtype": _wire_name(tensor), "shape": list(tensor.shape)}
        return desc, (tensor.view(-1).view(sys.modules["torch"].uint8).numpy() if tensor.numel() else b"")
    array = np.ascontiguousarray(value)
    if array.dtype.name not in DTYPES:
        array = array.astype(np.float32)
    return {"dtype": array.dtype.name, "shape": list(array.shape)}, array


def to_jsonable(value: Any) -> Any:
    """Plain msgpack-able value from numpy scalars, tuples and nested containers."""
    if isinstance(value, (np.generic,)):
        return value.item()
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def encode_result(header: dict[str, Any], outputs: Mapping[str, Any]) -> list[Any]:
    """`result/<plugin>` message: tensors become payload parts in the order listed."""
    described: list[dict[str, Any]] = []
    payloads: list[Any] = []
    for name, value in outputs.items():
        if isinstance(value, np.ndarray) or _torch_tensor(value):
            desc, buf = tensor_bytes(value)
            described.append({"name": name, **desc})
            payloads.append(buf)
        elif isinstance(value, str):
            described.append({"name": name, "text": value})
        else:
            described.append({"name": name, "value": to_jsonable(value)})
    full = {"v": PROTOCOL_VERSION, **to_jsonable(header), "outputs": described}
    return [f"result/{header['plugin']}".encode(), msgpack.packb(full, use_bin_type=True), *payloads]


def encode_state(header: dict[str, Any]) -> list[bytes]:
    return [b"state", msgpack.packb({"v": PROTOCOL_VERSION, **to_jsonable(header)}, use_bin_type=True)]


@dataclass(frozen=True)
class ResultMessage:
    topic: str
    header: dict[str, Any]
    outputs: dict[str, Any]


def decode_published(parts: Sequence[Any]) -> ResultMessage:
    """Decode a `result/<plugin>` or `state` message; tensor outputs become numpy arrays."""
    if len(parts) < 2:
        raise WireError("part_count", "published messages have at least 2 parts")
    topic = bytes(_buffer(parts[0])).decode("utf-8")
    header = _unpack_map(_buffer(parts[1]), "header")
    outputs: dict[str, Any] = {}
    payload_iter = iter(parts[2:])
    for desc in header.get("outputs", []):
        if "dtype" in desc:
            array = np.frombuffer(bytearray(_buffer(next(payload_iter))), dtype=NUMPY_VIEW[desc["dtype"]])
            if desc["dtype"] == "bfloat16":  # the high half of a float32's bits
                array = (array.astype(np.uint32) << 16).view(np.float32)
            outputs[desc["name"]] = array.reshape(desc["shape"])
        elif "text" in desc:
            outputs[desc["name"]] = desc["text"]
        else:
            outputs[desc["name"]] = desc.get("value")
    return ResultMessage(topic, header, outputs)


# ---------------------------------------------------------------- control (request / reply)

def encode_request(cmd: str, args: Mapping[str, Any] | None = None) -> bytes:
    return msgpack.packb({"v": PROTOCOL_VERSION, "cmd": cmd, "args": dict(args or {})}, use_bin_type=True)


def decode_request(raw: bytes | memoryview) -> tuple[str, dict[str, Any]]:
    request = _unpack_map(raw, "request")
    version = _require(request, "v", int)
    if version != PROTOCOL_VERSION:
        raise WireError("version", f"protocol version {version} is not supported")
    cmd = _require(request, "cmd", str)
    args = request.get("args", {})
    if not isinstance(args, dict):
        raise WireError("key_type", "args must be a map")
    return cmd, args


def encode_reply(result: Any = None, *, error: tuple[str, str] | None = None) -> bytes:
    if error is not None:
        return msgpack.packb({"ok": False, "error": {"code": error[0], "message": error[1]}}, use_bin_type=True)
    return msgpack.packb({"ok": True, "result": to_jsonable(result)}, use_bin_type=True)


def decode_reply(raw: bytes | memoryview) -> dict[str, Any]:
    reply = _unpack_map(raw, "reply")
    if not isinstance(reply.get("ok"), bool):
        raise WireError("missing_key", "reply lacks 'ok'")
    return reply
