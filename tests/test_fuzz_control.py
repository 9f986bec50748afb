"""Fuzzing the control protocol: request decoding, the server's answers, and its real socket.

Property: any request bytes get exactly one well-formed reply, `{"ok": true, ...}` or an error
whose code is one the protocol documents; decode failures carry a reason from REJECT_REASONS.
The saved corpus (tests/fuzz_corpus/control, `<outcome>__<what>.bin`, one raw request each) is
replayed every run.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgpack
import pytest
import zmq
import zmq.asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sage_runtime.edges.control import CommandError, ControlServer
from sage_runtime.wire import REJECT_REASONS, WireError, decode_reply, decode_request, encode_request

CORPUS = Path(__file__).parent / "fuzz_corpus" / "control"
ERROR_CODES = {"bad_request", "unknown_command", "bad_args", "not_found", "internal"}
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(1 << 63), (1 << 64) - 1) | st.floats() | st.text(max_size=12)
    | st.binary(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12)


def decoded(raw: bytes) -> str:
    """'ok' or the rejection reason; any other exception fails the calling test."""
    try:
        cmd, args = decode_request(raw)
    except WireError as exc:
        assert exc.reason in REJECT_REASONS, exc.reason
        return exc.reason
    assert isinstance(cmd, str) and isinstance(args, dict)
    return "ok"


@st.composite
def mutated_requests(draw) -> bytes:
    request = {"v": 1, "cmd": draw(st.sampled_from(["status", "ping", "pause", "nope"])),
               "args": draw(st.dictionaries(st.text(max_size=6), msgpack_values, max_size=3))}
    op = draw(st.sampled_from(["set", "delete", "truncate", "flip", "none"]))
    if op == "set":
        request[draw(st.sampled_from(["v", "cmd", "args"]))] = draw(msgpack_values)
    elif op == "delete":
        request.pop(draw(st.sampled_from(["v", "cmd", "args"])))
    raw = msgpack.packb(request)
    if op == "truncate":
        raw = raw[: draw(st.integers(0, len(raw) - 1))]
    elif op == "flip":
        b = bytearray(raw)
        b[draw(st.integers(0, len(b) - 1))] ^= 1 << draw(st.integers(0, 7))
        raw = bytes(b)
    return raw


@FUZZ
@given(st.binary(max_size=128))
def test_arbitrary_bytes_never_crash_request_decoding(raw):
    decoded(raw)


@FUZZ
@given(mutated_requests())
def test_mutated_requests_decode_or_are_rejected_with_a_reason(raw):
    decoded(raw)


@pytest.fixture
def server(tmp_path):
    ctx = zmq.asyncio.Context()
    srv = ControlServer(ctx, f"ipc://{tmp_path}/control.sock")
    srv.register("ping", lambda args: {"pong": True})
    srv.register("echo", lambda args: args)

    def refuse(args):
        raise CommandError("bad_args", "no")
    srv.register("refuse", refuse)
    srv.register("crash", lambda args: 1 / 0)
    yield srv
    srv.close()
    ctx.destroy(linger=0)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=96) | mutated_requests()
       | st.builds(encode_request, st.sampled_from(["ping", "echo", "refuse", "crash", "zzz"]),
                   st.dictionaries(st.text(max_size=4), msgpack_values, max_size=3)))
def test_every_request_gets_one_well_formed_reply(server, raw):
    reply = decode_reply(asyncio.run(server._answer(raw)))
    if not reply["ok"]:
        assert reply["error"]["code"] in ERROR_CODES and isinstance(reply["error"]["message"], str)


async def test_garbage_frames_on_the_real_socket_leave_it_answering(server, tmp_path):
    """Random multipart shapes from a DEALER (no envelope, many frames, empty frames) and a REQ,
    then a well-formed ping: the server is still there and answers it."""
    task = asyncio.create_task(server.run())
    ctx = zmq.asyncio.Context()
    try:
        dealer = ctx.socket(zmq.DEALER)
        dealer.connect(server.endpoint)
        garbage = [[b""], [b"", b""], [b"\xc1"], [b"", b"\xc1", b"x"], [b"x"] * 7, [b"", encode_request("ping")],
                   [b"\xff" * 1000], [msgpack.packb({"v": 1, "cmd": "crash"})]]
        for frames in garbage:
            await dealer.send_multipart(frames)
        req = ctx.socket(zmq.REQ)
        req.connect(server.endpoint)
        await req.send(encode_request("ping"))
        assert await req.poll(5000), "no reply after garbage"
        assert decode_reply(await req.recv()) == {"ok": True, "result": {"pong": True}}
        assert server.bad_requests >= 3
        dealer.close(0)
        req.close(0)
    finally:
        task.cancel()
        ctx.destroy(linger=0)


def corpus() -> list[Path]:
    return sorted(CORPUS.glob("*.bin"))


def test_corpus_is_there():
    assert len(corpus()) >= 8


@pytest.mark.parametrize("path", corpus(), ids=lambda p: p.stem)
def test_corpus_replays_with_its_pinned_outcome(path):
    assert decoded(path.read_bytes()) == path.stem.split("__", 1)[0]
