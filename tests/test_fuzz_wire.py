"""Fuzzing the ingest decoder and the sensor table behind it (hypothesis, bounded for CI).

The property everywhere: any input either decodes or raises WireError whose reason is one of
wire.REJECT_REASONS; nothing else escapes. A saved corpus (tests/fuzz_corpus/wire) of inputs that
once found bugs or sit on an edge is replayed every run with its expected outcome pinned in the
file name (`<reason or ok>__<what>.mpk`, a msgpack list of the raw parts).
"""

from __future__ import annotations

import math
from pathlib import Path

import msgpack
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sage_runtime.config import IngestSection
from sage_runtime.edges.ingest import SensorTable
from sage_runtime.mailbox import Mailbox
from sage_runtime.wire import (
    DTYPES, FLOAT_DTYPES, ITEMSIZE, REJECT_REASONS, WireError, decode_ingest, encode_ingest, torch_dtype,
)

CORPUS = Path(__file__).parent / "fuzz_corpus" / "wire"
MAX_ELEMENTS = 1 << 12
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def outcome(parts: list[bytes], **kw) -> str:
    """'ok' or the rejection reason; any other exception fails the calling test."""
    try:
        decode_ingest(parts, max_elements=kw.get("max_elements", MAX_ELEMENTS),
                      reject_non_finite=kw.get("reject_non_finite", True))
    except WireError as exc:
        assert exc.reason in REJECT_REASONS, exc.reason
        return exc.reason
    return "ok"


# ---------------------------------------------------------------- strategies

sensor_ids = st.sampled_from(["a", "b", "c"]) | st.text("abcXYZ019_.-", min_size=1, max_size=8)
#: Any value msgpack can carry, nested a little: the "wrong type" supply for header keys.
msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(1 << 63), (1 << 64) - 1) | st.floats() | st.text(max_size=12)
    | st.binary(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12)


@st.composite
def valid_messages(draw, kinds: tuple[str, ...] = ("tensor", "text", "event", "reward"),
                   dtypes: tuple[str, ...] = tuple(sorted(DTYPES)), min_numel: int = 0) -> list[bytes]:
    sensor = draw(sensor_ids)
    kind = draw(st.sampled_from(kinds))
    seq, ts = draw(st.integers(0, (1 << 63) - 1)), draw(st.integers(0, (1 << 63) - 1))
    meta = draw(st.none() | st.dictionaries(st.text(max_size=6), st.integers(-9, 1 << 40) | st.text(max_size=8), max_size=3))
    if kind == "tensor":
        dtype = draw(st.sampled_from(dtypes))
        shape = draw(st.lists(st.integers(1 if min_numel else 0, 6), min_size=1, max_size=4))
        numel = math.prod(shape)
        raw = draw(st.binary(min_size=numel * ITEMSIZE[dtype], max_size=numel * ITEMSIZE[dtype]))
        payload = torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(torch_dtype(dtype)).view(shape) \
            if numel else torch.empty(shape, dtype=torch_dtype(dtype))
        if dtype in FLOAT_DTYPES:
            payload = torch.nan_to_num(payload, nan=0.0, posinf=1.0, neginf=-1.0)
    elif kind == "text":
        payload = draw(st.text(max_size=40))
    elif kind == "event":
        payload = {"type": draw(st.text(max_size=8)), "priority": draw(st.sampled_from(["info", "warning", "critical"]))}
    else:
        payload = {"value": draw(st.floats(-1, 1)), "target": draw(st.text(min_size=1, max_size=8))}
    parts = encode_ingest(sensor, seq, kind, payload, ts_ns=ts, meta=meta)
    return [bytes(memoryview(p)) if not isinstance(p, bytes) else p for p in parts]


def _try_unpack(raw: bytes):
    try:
        return msgpack.unpackb(raw)
    except Exception:  # noqa: BLE001 - an earlier mutation broke it; this one is then a no-op
        return None


@st.composite
def mutated_messages(draw) -> list[bytes]:
    """A valid message with one or more of: truncation, bit flips, header keys replaced by values of
    any type, keys deleted, huge or odd shapes, a dtype that lies about the payload, NaN/Inf, parts
    added or removed."""
    parts = list(draw(valid_messages()))
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["truncate", "flip", "set_key", "del_key", "shape", "dtype", "non_finite",
                                   "parts"]))
        header = _try_unpack(parts[1]) if op in ("set_key", "del_key", "shape", "dtype") and len(parts) > 1 else None
        if op == "truncate":
            i = draw(st.integers(0, len(parts) - 1))
            parts[i] = parts[i][: draw(st.integers(0, max(len(parts[i]) - 1, 0)))]
        elif op == "flip":
            i = draw(st.integers(0, len(parts) - 1))
            if parts[i]:
                pos = draw(st.integers(0, len(parts[i]) - 1))
                b = bytearray(parts[i])
                b[pos] ^= 1 << draw(st.integers(0, 7))
                parts[i] = bytes(b)
        elif op == "set_key" and isinstance(header, dict):
            key = draw(st.sampled_from(["v", "sensor", "seq", "ts_ns", "kind", "dtype", "shape", "meta"]))
            header[key] = draw(msgpack_values)
        elif op == "del_key" and isinstance(header, dict) and header:
            header.pop(draw(st.sampled_from(sorted(header))))
        elif op == "shape" and isinstance(header, dict):
            header["shape"] = draw(st.lists(st.integers(-2, (1 << 64) - 1) | st.sampled_from([1 << 31, 1 << 32]),
                                            min_size=0, max_size=10))
        elif op == "dtype" and isinstance(header, dict):
            header["dtype"] = draw(st.sampled_from(sorted(DTYPES)) | st.text(max_size=10))
        elif op == "non_finite" and len(parts) == 3 and len(parts[2]) >= 8:
            b = bytearray(parts[2])
            pos = draw(st.integers(0, len(b) - 8))
            b[pos:pos + 8] = np.array([draw(st.sampled_from([math.nan, math.inf, -math.inf]))]).tobytes()
            parts[2] = bytes(b)
        elif op == "parts":
            if draw(st.booleans()) and parts:
                parts.pop(draw(st.integers(0, len(parts) - 1)))
            else:
                parts.insert(draw(st.integers(0, len(parts))), draw(st.binary(max_size=16)))
        if header is not None and isinstance(header, dict) and len(parts) > 1:
            parts[1] = msgpack.packb(header)
    return parts


# ---------------------------------------------------------------- properties of the decoder


@FUZZ
@given(st.lists(st.binary(max_size=64), max_size=6))
def test_arbitrary_parts_never_crash_the_decoder(parts):
    outcome(parts)


@FUZZ
@given(st.binary(max_size=96), st.sampled_from([b"sensor/a", b"sensor/", b"sensor/\xff", b"x"]), st.binary(max_size=32))
def test_arbitrary_headers_never_crash_the_decoder(header, topic, payload):
    outcome([topic, header, payload])


@FUZZ
@given(st.dictionaries(st.sampled_from(["v", "sensor", "seq", "ts_ns", "kind", "dtype", "shape", "meta", "zz"]),
                       msgpack_values, max_size=9), st.binary(max_size=64))
def test_headers_of_any_types_are_rejected_with_a_reason(header, payload):
    outcome([b"sensor/a", msgpack.packb(header), payload])


@FUZZ
@given(valid_messages())
def test_valid_messages_decode_to_what_was_sent(parts):
    msg = decode_ingest(parts, max_elements=MAX_ELEMENTS)
    header = msgpack.unpackb(parts[1])
    assert (msg.sensor, msg.seq, msg.ts_ns, msg.kind) == (header["sensor"], header["seq"], header["ts_ns"], header["kind"])
    if msg.kind == "tensor":
        assert bytes(msg.payload) == parts[2] and list(msg.shape) == header["shape"]


@FUZZ
@given(mutated_messages())
def test_mutated_messages_decode_or_are_rejected_with_a_reason(parts):
    outcome(parts)
    outcome(parts, reject_non_finite=False, max_elements=1)


@FUZZ
@given(valid_messages(kinds=("tensor",), dtypes=tuple(sorted(FLOAT_DTYPES)), min_numel=1),
       st.sampled_from([math.nan, math.inf, -math.inf]), st.data())
def test_non_finite_floats_are_rejected_as_non_finite(parts, bad, data):
    dtype = msgpack.unpackb(parts[1])["dtype"]
    values = torch.frombuffer(bytearray(parts[2]), dtype=torch.uint8).view(torch_dtype(dtype)).clone()
    values[data.draw(st.integers(0, values.numel() - 1))] = bad
    parts = [parts[0], parts[1], values.view(torch.uint8).numpy().tobytes()]
    assert outcome(parts) == "non_finite"
    assert outcome(parts, reject_non_finite=False) == "ok"


@FUZZ
@given(valid_messages(kinds=("tensor",), min_numel=1),
       st.sampled_from(sorted(DTYPES)))
def test_a_dtype_that_lies_about_the_payload_is_a_payload_size_rejection(parts, lie):
    header = msgpack.unpackb(parts[1])
    if ITEMSIZE[lie] == ITEMSIZE[header["dtype"]]:
        return
    header["dtype"] = lie
    assert outcome([parts[0], msgpack.packb(header), parts[2]]) == "payload_size"


@FUZZ
@given(st.lists(st.integers(1, (1 << 64) - 1), min_size=1, max_size=8))
def test_huge_shapes_are_refused_before_any_allocation(shape):
    header = {"v": 1, "sensor": "a", "seq": 0, "ts_ns": 0, "kind": "tensor", "dtype": "float64", "shape": shape}
    expected = "too_large" if math.prod(shape) > MAX_ELEMENTS else "payload_size"
    assert outcome([b"sensor/a", msgpack.packb(header), b"\0" * 8]) in (expected, "ok")


# ---------------------------------------------------------------- the sensor table behind the decoder


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(mutated_messages() | valid_messages(), min_size=1, max_size=25), st.data())
def test_sensor_table_admits_or_rejects_and_its_counters_add_up(messages, data):
    """Whatever arrives, admit() only ever raises WireError, a rejected message never registers a
    sensor, and for every sensor received == accepted + skipped + dropped + pending."""
    declared = {"a": {"kind": "tensor", "dtype": "uint8", "max_shape": [4, 4], "policy": "fifo:2"}}
    cfg = IngestSection(max_elements=MAX_ELEMENTS, max_sensors=4, sensors=declared,
                        allow_undeclared=data.draw(st.booleans()))
    with Mailbox("cpu") as mailbox:
        table = SensorTable(cfg, mailbox)
        for parts in messages:
            known = set(table.sensors)
            try:
                table.admit(decode_ingest(parts, max_elements=cfg.max_elements))
            except WireError as exc:
                assert exc.reason in REJECT_REASONS
                table.reject(exc.reason, str(exc))
                assert set(table.sensors) == known, f"rejected ({exc.reason}) yet registered a sensor"
            if data.draw(st.booleans()):
                _, leases = table.take()
                for lease in leases:
                    lease.release()
        for sensor in table.sensors.values():
            assert sensor.received == sensor.accepted + sensor.skipped + sensor.dropped + sensor.pending(), sensor


# ---------------------------------------------------------------- the saved corpus


def corpus() -> list[Path]:
    return sorted(CORPUS.glob("*.mpk"))


def test_corpus_is_there():
    assert len(corpus()) >= 10


@pytest.mark.parametrize("path", corpus(), ids=lambda p: p.stem)
def test_corpus_replays_with_its_pinned_outcome(path):
    parts = msgpack.unpackb(path.read_bytes())
    expected = path.stem.split("__", 1)[0]
    assert outcome(parts) == expected


def test_atheris_harness_finds_nothing_in_a_bounded_run(tmp_path):
    """Coverage-guided run over the corpus seeds; optional, skipped where atheris is not installed."""
    pytest.importorskip("atheris")
    import subprocess
    import sys

    out = subprocess.run([sys.executable, str(Path(__file__).parent / "atheris_wire.py"), "-runs=20000",
                          "-max_total_time=20", f"-artifact_prefix={tmp_path}/", str(tmp_path), str(CORPUS)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Done " in out.stderr and "crash-" not in out.stderr
