"""Wire protocol v1: encode/decode round trips and every rejection reason."""

import math

import msgpack
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sage_runtime import wire
from sage_runtime.wire import WireError, decode_ingest, encode_ingest


def header(**over):
    h = {"v": 1, "sensor": "cam0", "seq": 0, "ts_ns": 1, "kind": "tensor", "dtype": "uint8", "shape": [2, 2]}
    h.update(over)
    return {k: v for k, v in h.items() if v is not ...}


def parts(h, payload=b"\0" * 4, topic=b"sensor/cam0"):
    return [topic, msgpack.packb(h), payload]


@pytest.mark.parametrize("dtype", sorted(wire.DTYPES))
def test_tensor_round_trip_every_dtype(dtype):
    t = (torch.arange(12, dtype=torch.float32) - 3).to(wire.torch_dtype(dtype)).view(3, 4)
    msg = decode_ingest(encode_ingest("imu.0", 7, "tensor", t, ts_ns=99))
    assert (msg.sensor, msg.seq, msg.ts_ns, msg.dtype, msg.shape) == ("imu.0", 7, 99, dtype, (3, 4))
    back = torch.from_numpy(msg.array().copy())
    if dtype == "bfloat16":
        back = back.view(torch.bfloat16)
    assert torch.equal(back, t)


def test_numpy_text_event_reward_round_trip():
    a = np.random.default_rng(0).normal(size=(5,)).astype(np.float64)
    assert np.array_equal(decode_ingest(encode_ingest("v", 0, "tensor", a, ts_ns=1)).array(), a)
    assert decode_ingest(encode_ingest("mic", 1, "text", "pick up the cup", ts_ns=1)).payload == "pick up the cup"
    ev = decode_ingest(encode_ingest("bus", 2, "event", {"type": "estop", "priority": "critical", "x": 1}, ts_ns=1))
    assert ev.payload["priority"] == "critical" and ev.payload["x"] == 1
    rw = decode_ingest(encode_ingest("op", 3, "reward", {"value": -0.5, "target": "vision"}, ts_ns=1))
    assert rw.payload == {"value": -0.5, "target": "vision"}


def test_unknown_header_keys_are_ignored():
    msg = decode_ingest(parts(header(future_key={"x": 1})))
    assert msg.shape == (2, 2)


BAD = {
    "part_count": lambda: [b"sensor/cam0", msgpack.packb(header())],
    "topic": lambda: parts(header(), topic=b"camera/cam0"),
    "sensor_id": lambda: parts(header(sensor="bad id!"), topic=b"sensor/bad id!"),
    "topic_mismatch": lambda: parts(header(sensor="cam1")),
    "header_msgpack": lambda: [b"sensor/cam0", b"\xc1\xff\x00garbage", b""],
    "header_type": lambda: [b"sensor/cam0", msgpack.packb([1, 2, 3]), b""],
    "version": lambda: parts(header(v=2)),
    "missing_key": lambda: parts(header(seq=...)),
    "key_type": lambda: parts(header(seq="7")),
    "kind": lambda: parts(header(kind="video")),
    "dtype": lambda: parts(header(dtype="complex64")),
    "shape": lambda: parts(header(shape=[2, -2])),
    "too_large": lambda: parts(header(shape=[1 << 20, 1 << 20])),
    "payload_size": lambda: parts(header(), payload=b"\0" * 5),
    "utf8": lambda: parts(header(kind="text"), payload=b"\xff\xfe bad"),
    "non_finite": lambda: parts(header(dtype="float32", shape=[2]), payload=np.array([1, np.nan], np.float32).tobytes()),
    "event": lambda: parts(header(kind="event"), payload=msgpack.packb({"type": "x", "priority": "urgent"})),
    "reward": lambda: parts(header(kind="reward"), payload=msgpack.packb({"value": 2.0, "target": "a"})),
    "meta": lambda: parts(header(meta=[1])),
}


@pytest.mark.parametrize("reason", sorted(BAD))
def test_each_malformation_has_its_reason(reason):
    with pytest.raises(WireError) as err:
        decode_ingest(BAD[reason](), max_elements=1 << 24)
    assert err.value.reason == reason
    assert reason in wire.REJECT_REASONS


def test_oversized_meta_rejected():
    with pytest.raises(WireError) as err:
        decode_ingest(parts(header(meta={"blob": "x" * 5000})))
    assert err.value.reason == "meta"


def test_bool_is_not_an_int():
    with pytest.raises(WireError) as err:
        decode_ingest(parts(header(seq=True)))
    assert err.value.reason == "key_type"


def test_result_round_trip_keeps_tensors_text_and_values():
    out = {"emb": torch.linspace(0, 1, 8), "recon": np.zeros((2, 3), np.uint8), "text": "ok", "n": 3,
           "d": {"a": [1, 2]}, "bad": math.nan}
    msg = wire.decode_published(wire.encode_result({"plugin": "p", "tick": 4, "halt": "converged"}, out))
    assert msg.topic == "result/p" and msg.header["tick"] == 4
    assert np.allclose(msg.outputs["emb"], np.linspace(0, 1, 8))
    assert msg.outputs["recon"].shape == (2, 3) and msg.outputs["text"] == "ok"
    assert msg.outputs["n"] == 3 and msg.outputs["d"] == {"a": [1, 2]} and msg.outputs["bad"] is None


def test_control_request_and_reply():
    assert wire.decode_request(wire.encode_request("status", {"x": 1})) == ("status", {"x": 1})
    with pytest.raises(WireError):
        wire.decode_request(b"\x93\x01\x02\x03")
    assert wire.decode_reply(wire.encode_reply(error=("bad", "no")))["error"]["code"] == "bad"


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=64), min_size=0, max_size=5))
def test_random_bytes_never_crash_the_decoder(raw_parts):
    try:
        decode_ingest(raw_parts)
    except WireError as exc:
        assert exc.reason in wire.REJECT_REASONS


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(["v", "sensor", "seq", "ts_ns", "kind", "dtype", "shape", "meta"]),
                       st.one_of(st.integers(-5, (1 << 64) - 1), st.text(max_size=8), st.none(), st.booleans(),
                                 st.lists(st.integers(-3, 5), max_size=4), st.floats())),
       st.binary(max_size=64))
def test_random_headers_never_crash_the_decoder(h, payload):
    try:
        decode_ingest([b"sensor/cam0", msgpack.packb(h), payload])
    except WireError as exc:
        assert exc.reason in wire.REJECT_REASONS
