"""Mailbox behaviour on CPU: registration, write results, leases, policies, threads, allocation.

The CUDA path has the same semantics and its own file (tests/test_mailbox_cuda.py, skipped here).
"""

from __future__ import annotations

import gc
import threading
import time
import tracemalloc

import numpy as np
import pytest
import torch
import zmq
from hypothesis import given, settings
from hypothesis import strategies as st

from sage_runtime.mailbox import SMALL_COPY_BYTES, Lease, Mailbox, WriteStatus

OK, OVER, DROP, REJ = WriteStatus.OK, WriteStatus.OVERWROTE_OLDEST, WriteStatus.DROPPED, WriteStatus.REJECTED


@pytest.fixture
def mailbox():
    mb = Mailbox("cpu")
    yield mb
    mb.close()


def counts_add_up(stats: dict) -> bool:
    return stats["writes"] == stats["accepted"] + stats["overwritten"] + stats["dropped"] + stats["rejected"]


# ------------------------------------------------------------------ registration


def test_register_same_spec_returns_channel_and_other_spec_raises(mailbox):
    ch = mailbox.register("cam", kind="focus", dtype=torch.uint8, max_shape=(4, 4, 3), policy="latest", depth=4)
    again = mailbox.register("cam", kind="focus", dtype=torch.uint8, max_shape=(4, 4, 3), policy="latest", depth=4)
    assert again is ch
    assert mailbox.get("cam") is ch and "cam" in mailbox and mailbox.names() == ["cam"]
    with pytest.raises(ValueError, match="cam"):
        mailbox.register("cam", dtype=torch.float32, max_shape=(4, 4, 3), policy="latest", depth=4)
    with pytest.raises(ValueError, match="cam"):
        mailbox.register("cam", dtype=torch.uint8, max_shape=(4, 4, 3), policy="fifo", depth=4)
    with pytest.raises(KeyError):
        mailbox.get("nope")


@pytest.mark.parametrize("kwargs", [
    {"kind": "peer"}, {"policy": "lifo"}, {"policy": "latest", "depth": 1}, {"policy": "fifo", "depth": 0},
    {"max_shape": (-1, 3)}, {"on_full": "block"}, {"policy": "fifo", "lease_slots": -1},
])
def test_register_rejects_bad_specs(mailbox, kwargs):
    args = {"dtype": torch.float32, "max_shape": (8,)} | kwargs
    with pytest.raises(ValueError):
        mailbox.register("x", **args)
    assert mailbox.names() == []


def test_close_releases_channels_and_rejects_writes(mailbox):
    ch = mailbox.register("a", dtype=torch.float32, max_shape=(4,))
    assert ch.write(torch.ones(4)).status is OK
    held = ch.read_latest()
    mailbox.close()
    assert mailbox.names() == []
    assert ch.read_latest() is None
    result = ch.write(torch.ones(4))
    assert result.status is REJ and result.reason == "closed"
    assert held.tensor.tolist() == [1.0] * 4  # a lease held across close keeps its memory
    held.release()
    assert counts_add_up(ch.stats())


# ------------------------------------------------------------------ writes and leases


def test_frames_of_any_shape_up_to_max_numel(mailbox):
    ch = mailbox.register("v", dtype=torch.int32, max_shape=(4, 6))
    for shape in [(24,), (2, 3, 4), (1,), (0,), (5, 4)]:
        value = torch.arange(int(np.prod(shape)), dtype=torch.int32).reshape(shape)
        result = ch.write(value, meta={"shape": shape}, ts_ns=7)
        assert result.status is OK
        with ch.read_latest() as lease:
            assert lease.seq == result.seq and lease.shape == shape and lease.ts_ns == 7
            assert lease.meta == {"shape": shape}
            assert torch.equal(lease.tensor, value)
    too_big = ch.write(torch.zeros(25, dtype=torch.int32))
    assert too_big.status is REJ and too_big.reason == "too_large" and too_big.seq == -1
    assert ch.stats()["rejected"] == 1 and counts_add_up(ch.stats())


def test_write_bytes_from_bytes_memoryview_and_zmq_frame(mailbox):
    ch = mailbox.register("img", dtype=torch.float32, max_shape=(2, 3))
    values = np.arange(6, dtype=np.float32).reshape(2, 3)
    frame = zmq.Frame(values.tobytes())
    for buf in (values.tobytes(), memoryview(values), frame.buffer):
        result = ch.write_bytes(buf, (2, 3), meta={"k": 1}, ts_ns=5)
        assert result.status is OK
        with ch.read_latest() as lease:
            np.testing.assert_array_equal(lease.tensor.numpy(), values)
    big = mailbox.register("big", dtype=torch.int32, max_shape=(SMALL_COPY_BYTES,))  # 4x the small-copy size
    frame = np.arange(SMALL_COPY_BYTES, dtype=np.int32)
    assert big.write_bytes(zmq.Frame(frame.tobytes()).buffer, frame.shape).status is OK
    with big.read_latest() as lease:
        np.testing.assert_array_equal(lease.tensor.numpy(), frame)
    assert ch.write_bytes(values.tobytes(), (3, 3)).reason == "size"
    assert ch.write_bytes(values.tobytes(), (2, 3), dtype=torch.float64).reason == "dtype"
    assert ch.stats()["rejected"] == 2


def test_bfloat16_goes_through_bytes_and_tensors(mailbox):
    ch = mailbox.register("bf", dtype=torch.bfloat16, max_shape=(5,))
    value = torch.linspace(-2, 2, 5, dtype=torch.bfloat16)
    assert ch.write_bytes(value.view(torch.uint8).numpy().tobytes(), (5,)).status is OK
    with ch.read_latest() as lease:
        assert torch.equal(lease.tensor, value)
    assert ch.write(value * 2).status is OK
    with ch.read_latest() as lease:
        assert torch.equal(lease.tensor, value * 2)
    assert ch.write(np.zeros(5, dtype=np.float32)).status is REJ


def test_write_rejects_wrong_dtype_and_copies_noncontiguous_input(mailbox):
    ch = mailbox.register("m", dtype=torch.float32, max_shape=(4, 4))
    assert ch.write(torch.zeros(4, dtype=torch.float64)).reason == "dtype"
    assert ch.write(np.zeros(4, dtype=np.float64)).reason == "dtype"
    source = torch.arange(16, dtype=torch.float32, requires_grad=True).reshape(4, 4)
    assert ch.write(source.t()).status is OK
    with ch.read_latest() as lease:
        assert torch.equal(lease.tensor, source.detach().t()) and not lease.tensor.requires_grad
    array = np.arange(16, dtype=np.float32).reshape(4, 4)[:, ::2]
    assert ch.write(array).status is OK
    with ch.read_latest() as lease:
        np.testing.assert_array_equal(lease.tensor.numpy(), array)


def test_inference_mode_on_either_side(mailbox):
    with torch.inference_mode():
        made_in_inference = mailbox.register("a", dtype=torch.float32, max_shape=(4,))
        assert made_in_inference.write(torch.ones(4)).status is OK
    normal = mailbox.register("b", dtype=torch.float32, max_shape=(4,))
    for ch in (made_in_inference, normal):
        assert ch.write(torch.full((3,), 2.0)).status is OK
        with torch.inference_mode():
            assert ch.write(torch.full((2,), 3.0)).status is OK
            with ch.read_latest() as lease:
                assert lease.tensor.tolist() == [3.0, 3.0]
        assert ch.write(torch.full((2,), 4.0)).status is OK


def test_write_copies_so_later_changes_to_the_source_do_not_show(mailbox):
    ch = mailbox.register("c", dtype=torch.float32, max_shape=(3,))
    source = torch.ones(3)
    ch.write(source)
    source.fill_(9)
    with ch.read_latest() as lease:
        assert lease.tensor.tolist() == [1.0, 1.0, 1.0]


def test_lease_release_is_idempotent_and_tensor_is_gone_after(mailbox):
    ch = mailbox.register("l", dtype=torch.float32, max_shape=(2,))
    ch.write(torch.ones(2))
    lease = ch.read_latest()
    assert isinstance(lease, Lease) and ch.stats()["leases_outstanding"] == 1
    lease.release()
    lease.release()
    assert lease.released and ch.stats()["leases_outstanding"] == 0
    with pytest.raises(RuntimeError, match="released"):
        _ = lease.tensor


def test_unreleased_lease_is_reclaimed_when_collected_and_counted(mailbox):
    ch = mailbox.register("g", dtype=torch.float32, max_shape=(2,), depth=2)
    ch.write(torch.ones(2))
    lease = ch.read_latest()
    del lease
    gc.collect()
    stats = ch.stats()
    assert stats["leases_outstanding"] == 0 and stats["leases_unreleased"] == 1 and stats["free_slots"] == 1


def test_policy_misuse_raises(mailbox):
    latest = mailbox.register("a", dtype=torch.float32, max_shape=(1,))
    fifo = mailbox.register("b", dtype=torch.float32, max_shape=(1,), policy="fifo")
    with pytest.raises(TypeError):
        latest.pop()
    with pytest.raises(TypeError):
        latest.pop_all()
    with pytest.raises(TypeError):
        fifo.read_latest()


# ------------------------------------------------------------------ latest policy


def test_latest_cursor_sees_only_newer_frames(mailbox):
    ch = mailbox.register("s", dtype=torch.int64, max_shape=(1,))
    assert ch.read_latest() is None
    seqs = [ch.write(torch.tensor([i])).seq for i in range(3)]
    assert seqs == [0, 1, 2] and ch.last_seq == 2
    with ch.read_latest(after_seq=-1) as lease:
        assert lease.seq == 2 and lease.tensor.item() == 2
    assert ch.read_latest(after_seq=2) is None
    ch.write(torch.tensor([3]))
    with ch.read_latest(after_seq=2) as lease:
        assert lease.seq == 3


def test_latest_writer_never_overwrites_held_slots_and_drops_explicitly(mailbox):
    depth = 4
    ch = mailbox.register("h", dtype=torch.int64, max_shape=(16,), depth=depth)
    held = []
    for i in range(depth - 2):  # each lease pins a different slot
        ch.write(torch.full((16,), i))
        held.append(ch.read_latest())
    # depth-2 slots leased: the writer always has a slot besides the current latest one.
    for i in range(100, 110):
        result = ch.write(torch.full((16,), i))
        assert result.status is OK
        for lease in held:
            assert bool((lease.tensor == lease.seq).all())
    held.append(ch.read_latest())
    assert ch.write(torch.full((16,), 111)).status is OK  # the last free slot
    held.append(ch.read_latest())  # now every slot is leased
    before = ch.stats()
    result = ch.write(torch.full((16,), 999))
    assert result.status is DROP and result.seq == -1 and "leased" in result.reason
    after = ch.stats()
    assert after["dropped"] == before["dropped"] + 1 and after["last_seq"] == before["last_seq"]
    for lease in held:
        lease.release()
    assert ch.write(torch.full((16,), 5)).status is OK
    assert counts_add_up(ch.stats())


def test_latest_many_readers_each_with_a_cursor(mailbox):
    ch = mailbox.register("state", dtype=torch.float32, max_shape=(8,), depth=3)
    cursors = [-1] * 6
    for tick in range(5):
        ch.write(torch.full((8,), float(tick)))
        leases = [ch.read_latest(c) for c in cursors]  # all six readers hold the same slot at once
        assert all(lease is not None and lease.seq == tick for lease in leases)
        assert all(bool((lease.tensor == tick).all()) for lease in leases)
        cursors = [lease.seq for lease in leases]
        assert all(ch.read_latest(c) is None for c in cursors)
        for lease in leases:
            lease.release()
    assert ch.stats()["reads"] == 30 and ch.stats()["leases_outstanding"] == 0


def test_wait_blocks_until_something_to_read_or_close(mailbox):
    latest = mailbox.register("a", dtype=torch.int64, max_shape=(1,))
    fifo = mailbox.register("b", dtype=torch.int64, max_shape=(1,), policy="fifo")
    assert latest.wait(timeout=0.01) is False and fifo.wait(timeout=0.01) is False
    woke: list[bool] = []
    waiters = [threading.Thread(target=lambda: woke.append(latest.wait(after_seq=-1, timeout=10))),
               threading.Thread(target=lambda: woke.append(fifo.wait(timeout=10)))]
    for t in waiters:
        t.start()
    time.sleep(0.05)
    latest.write(torch.tensor([1]))
    fifo.write(torch.tensor([1]))
    for t in waiters:
        t.join(5)
    assert woke == [True, True]
    assert latest.wait(after_seq=0, timeout=0.01) is False  # nothing newer than seq 0
    closer = threading.Timer(0.05, mailbox.close)
    closer.start()
    assert latest.wait(after_seq=0, timeout=10) is True and latest.closed and latest.read_latest(0) is None
    closer.join()


# ------------------------------------------------------------------ fifo policy


def test_fifo_delivers_in_order_and_reports_full(mailbox):
    drop = mailbox.register("d", dtype=torch.int64, max_shape=(1,), policy="fifo", depth=3, on_full="drop_newest")
    over = mailbox.register("o", dtype=torch.int64, max_shape=(1,), policy="fifo", depth=3)
    drop_results = [drop.write(torch.tensor([i])).status for i in range(5)]
    over_results = [over.write(torch.tensor([i])).status for i in range(5)]
    assert drop_results == [OK, OK, OK, DROP, DROP]
    assert over_results == [OK, OK, OK, OVER, OVER]
    assert [lease.tensor.item() for lease in drop.pop_all()] == [0, 1, 2]
    assert [lease.tensor.item() for lease in over.pop_all(max_n=2)] == [2, 3]
    assert over.pop().tensor.item() == 4 and over.pop() is None
    assert drop.stats()["dropped"] == 2 and over.stats()["overwritten"] == 2
    assert counts_add_up(drop.stats()) and counts_add_up(over.stats())


def test_fifo_holding_a_batch_does_not_shrink_the_queue(mailbox):
    ch = mailbox.register("q", dtype=torch.int64, max_shape=(1,), policy="fifo", depth=4, on_full="drop_newest")
    for i in range(4):
        ch.write(torch.tensor([i]))
    batch = ch.pop_all()  # held through a "tick"
    assert [ch.write(torch.tensor([i])).status for i in range(4, 8)] == [OK] * 4
    assert [lease.tensor.item() for lease in batch] == [0, 1, 2, 3]
    for lease in batch:
        lease.release()
    assert [lease.seq for lease in ch.pop_all()] == [4, 5, 6, 7]


# ------------------------------------------------------------------ no allocation per frame


def test_slots_are_allocated_once(mailbox):
    latest = mailbox.register("a", dtype=torch.uint8, max_shape=(64, 64, 3), depth=3)
    fifo = mailbox.register("b", dtype=torch.uint8, max_shape=(64, 64, 3), policy="fifo", depth=4)
    ptrs = (latest.slot_data_ptrs(), fifo.slot_data_ptrs())
    frame = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    seen = set()
    for i in range(200):
        latest.write_bytes(frame.data, (64, 64, 3))
        fifo.write(frame)
        with latest.read_latest() as lease:
            seen.add(lease.tensor.data_ptr())
        for lease in fifo.pop_all():
            seen.add(lease.tensor.data_ptr())
            lease.release()
    assert (latest.slot_data_ptrs(), fifo.slot_data_ptrs()) == ptrs
    assert seen <= set(ptrs[0]) | set(ptrs[1])


def test_steady_state_python_allocations_do_not_grow(mailbox):
    ch = mailbox.register("t", dtype=torch.float32, max_shape=(1024,), policy="fifo", depth=8)
    payload = np.ones(1024, dtype=np.float32).tobytes()
    meta = {"frame": "x"}

    def cycle(n: int) -> None:
        for _ in range(n):
            ch.write_bytes(payload, (1024,), meta=meta, ts_ns=1)
            for lease in ch.pop_all():
                lease.release()

    cycle(200)  # warm up caches
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        cycle(2000)
        gc.collect()
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    growth = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    assert growth < 16 * 1024, f"{growth} bytes retained over 2000 frames"  # 4 MiB of frames went through


# ------------------------------------------------------------------ threads: no torn reads


FRAME = 32 * 1024  # elements (256 KiB): big enough that a copy takes a while, so an unsafe handoff tears


def _writer(ch, token_base: int, stop: threading.Event, record: list) -> None:
    i = 0
    while not stop.is_set():
        token = token_base + i
        n = FRAME - (i % 7) * 1000  # frame shapes vary
        result = ch.write(torch.full((n,), token, dtype=torch.int64), meta={"token": token})
        record.append((result.status, result.seq, token))
        i += 1


def _check(lease, errors: list) -> None:
    token = lease.meta["token"]
    tensor = lease.tensor
    if not bool((tensor == token).all()) or tensor.numel() != FRAME - (token % 1_000_000 % 7) * 1000:
        errors.append(f"seq {lease.seq}: torn or foreign data for token {token}")


def _seq_map(records) -> dict[int, int]:
    published = {seq: token for recs in records for status, seq, token in recs if status in (OK, OVER)}
    assert len(published) == sum(1 for recs in records for status, _, _ in recs if status in (OK, OVER))
    return published


def test_latest_many_writers_many_readers_no_torn_reads(mailbox):
    ch = mailbox.register("race", dtype=torch.int64, max_shape=(FRAME,), depth=6)
    stop = threading.Event()
    records: list[list] = [[] for _ in range(3)]
    reads: list[list] = [[] for _ in range(3)]
    errors: list[str] = []

    def reader(out: list) -> None:
        cursor = -1
        while not stop.is_set():
            lease = ch.read_latest(cursor)
            if lease is None:
                time.sleep(0)
                continue
            with lease:
                if lease.seq <= cursor:
                    errors.append(f"seq went from {cursor} to {lease.seq}")
                cursor = lease.seq
                _check(lease, errors)
                time.sleep(0)  # hold the lease across a writer's turn
                _check(lease, errors)
                out.append((lease.seq, lease.meta["token"]))

    writers = [lambda w=w: _writer(ch, (w + 1) * 1_000_000, stop, records[w]) for w in range(3)]
    threads = [threading.Thread(target=fn) for fn in writers + [lambda r=r: reader(reads[r]) for r in range(3)]]
    for t in threads:
        t.start()
    time.sleep(1.5)
    stop.set()
    for t in threads:
        t.join(10)
    assert not errors, errors[:5]
    published = _seq_map(records)
    assert sorted(published) == list(range(len(published)))  # seqs are dense and unique
    assert all(published[seq] == token for out in reads for seq, token in out)  # data belongs to its seq
    assert all(len(out) > 10 for out in reads)
    stats = ch.stats()
    assert stats["writes"] == sum(len(r) for r in records) and counts_add_up(stats)
    assert stats["dropped"] == sum(1 for r in records for s, _, _ in r if s is DROP)
    assert stats["leases_outstanding"] == 0


def test_one_writer_frames_equal_their_seq_and_readers_check_every_element(mailbox):
    """With one writer the next seq is known before the copy: every element of frame k is k."""
    ch = mailbox.register("exact", dtype=torch.int64, max_shape=(FRAME,), depth=4)
    stop = threading.Event()
    errors: list[str] = []
    counts = [0, 0, 0]

    def writer() -> None:
        while not stop.is_set():
            expected = ch.last_seq + 1
            result = ch.write(torch.full((FRAME,), expected, dtype=torch.int64))
            if result.published and result.seq != expected:
                errors.append(f"expected seq {expected}, got {result.seq}")

    def reader(r: int) -> None:
        cursor = -1
        while not stop.is_set():
            if not ch.wait(cursor, timeout=0.1):
                continue
            lease = ch.read_latest(cursor)
            if lease is None:
                continue
            with lease:
                if lease.seq <= cursor or not bool((lease.tensor == lease.seq).all()):
                    errors.append(f"reader {r}: seq {lease.seq} after {cursor}, torn or foreign data")
                cursor = lease.seq
                counts[r] += 1

    threads = [threading.Thread(target=writer)] + [threading.Thread(target=reader, args=(r,)) for r in range(3)]
    for t in threads:
        t.start()
    time.sleep(0.8)
    stop.set()
    for t in threads:
        t.join(10)
    assert not errors, errors[:5]
    assert all(counts) and counts_add_up(ch.stats())


def test_fifo_many_writers_many_poppers_deliver_each_frame_once_in_order(mailbox):
    ch = mailbox.register("racefifo", dtype=torch.int64, max_shape=(FRAME,), policy="fifo", depth=4, lease_slots=2)
    stop = threading.Event()
    records: list[list] = [[] for _ in range(2)]
    pops: list[list] = [[] for _ in range(2)]
    errors: list[str] = []

    drained = threading.Event()  # set once the writers are done: then poppers empty the queue and stop

    def popper(out: list) -> None:
        while not drained.is_set() or ch.stats()["queued"]:
            batch = ch.pop_all(max_n=2)
            if not batch:
                time.sleep(0)
            for lease in batch:
                with lease:
                    _check(lease, errors)
                    out.append((lease.seq, lease.meta["token"]))

    writers = [threading.Thread(target=_writer, args=(ch, (w + 1) * 1_000_000, stop, records[w])) for w in range(2)]
    poppers = [threading.Thread(target=popper, args=(pops[p],)) for p in range(2)]
    for t in writers + poppers:
        t.start()
    time.sleep(1.5)
    stop.set()
    for t in writers:
        t.join(10)
    drained.set()
    for t in poppers:
        t.join(10)
    assert not errors, errors[:5]
    published = _seq_map(records)
    delivered = [seq for out in pops for seq, _ in out]
    assert len(delivered) == len(set(delivered))  # nobody got a frame twice
    assert all(published[seq] == token for out in pops for seq, token in out)
    assert all([s for s, _ in out] == sorted(s for s, _ in out) for out in pops)  # each popper in order
    stats = ch.stats()
    # every published frame was either delivered or evicted by a later write, and counted
    assert len(delivered) + stats["overwritten"] == len(published)
    assert counts_add_up(stats) and stats["leases_outstanding"] == 0


# ------------------------------------------------------------------ property tests (hypothesis)


@settings(max_examples=150, deadline=None)
@given(depth=st.integers(2, 5), n_readers=st.integers(1, 3),
       ops=st.lists(st.tuples(st.sampled_from(["write", "read", "release"]), st.integers(0, 2)), max_size=60))
def test_property_latest(depth, n_readers, ops):
    """Readers see strictly increasing seqs, held data never changes, DROPPED exactly when no slot is free."""
    mb = Mailbox()
    ch = mb.register("p", dtype=torch.int64, max_shape=(4,), depth=depth)
    cursors = [-1] * n_readers
    held: list[list[Lease]] = [[] for _ in range(n_readers)]
    latest = -1
    writes = 0
    tokens_of: dict[int, int] = {}
    for op, arg in ops:
        r = arg % n_readers
        if op == "write":
            pinned = {lease.seq for leases in held for lease in leases} | ({latest} if latest >= 0 else set())
            result = ch.write(torch.full((1 + writes % 4,), writes), meta={"v": writes})
            if len(pinned) < depth:
                assert result.status is OK and result.seq == latest + 1
                latest = result.seq
                tokens_of[result.seq] = writes
            else:
                assert result.status is DROP
            writes += 1
        elif op == "read":
            lease = ch.read_latest(cursors[r])
            if latest > cursors[r]:
                assert lease is not None and lease.seq == latest > cursors[r]
                cursors[r] = lease.seq
                held[r].append(lease)
            else:
                assert lease is None
        elif held[r]:
            held[r].pop(0).release()
        for leases in held:
            for lease in leases:
                assert bool((lease.tensor == tokens_of[lease.seq]).all())
                assert lease.meta["v"] == tokens_of[lease.seq]
    stats = ch.stats()
    assert stats["writes"] == writes and counts_add_up(stats) and stats["last_seq"] == latest
    assert stats["leases_outstanding"] == sum(len(leases) for leases in held)
    mb.close()


@settings(max_examples=150, deadline=None)
@given(depth=st.integers(1, 4), lease_slots=st.integers(0, 3),
       on_full=st.sampled_from(["overwrite_oldest", "drop_newest"]),
       ops=st.lists(st.sampled_from(["write", "pop", "pop_all", "release"]), max_size=60))
def test_property_fifo(depth, lease_slots, on_full, ops):
    """fifo matches a bounded-deque model: order, no loss within the bound, explicit full results."""
    mb = Mailbox()
    ch = mb.register("p", dtype=torch.int64, max_shape=(3,), policy="fifo", depth=depth,
                     lease_slots=lease_slots, on_full=on_full)
    queue: list[int] = []  # the model: seqs queued, oldest first
    held: list[Lease] = []
    next_seq = 0
    delivered: list[int] = []
    counts = {OK: 0, OVER: 0, DROP: 0}
    for op in ops:
        if op == "write":
            full = len(queue) >= depth or len(queue) + len(held) >= depth + lease_slots
            result = ch.write(torch.full((3,), next_seq))
            counts[result.status] += 1
            if not full:
                expected = OK
            elif on_full == "overwrite_oldest" and queue:
                expected = OVER
                assert result.reason.endswith(f"evicted seq {queue.pop(0)}")
            else:
                expected = DROP
            assert result.status is expected
            if expected is not DROP:
                assert result.seq == next_seq
                queue.append(next_seq)
                next_seq += 1
        elif op in ("pop", "pop_all"):
            got = ch.pop_all() if op == "pop_all" else [x for x in [ch.pop()] if x is not None]
            expected_seqs = queue if op == "pop_all" else queue[:1]
            assert [lease.seq for lease in got] == expected_seqs
            delivered += expected_seqs
            queue = queue[len(got):]
            held += got
        elif held:
            held.pop(0).release()
        for lease in held:
            assert bool((lease.tensor == lease.seq).all())
    assert delivered == sorted(delivered) and len(set(delivered)) == len(delivered)
    stats = ch.stats()
    assert stats["queued"] == len(queue) and stats["last_seq"] == next_seq - 1
    assert (stats["accepted"], stats["overwritten"], stats["dropped"]) == (counts[OK], counts[OVER], counts[DROP])
    assert counts_add_up(stats)
    # no loss within the bound: every published frame was delivered, is still queued, or was evicted
    assert len(delivered) + len(queue) + stats["overwritten"] == next_seq
    mb.close()


WIRE_DTYPES = [torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64,
               torch.float16, torch.bfloat16, torch.float32, torch.float64]


@settings(max_examples=100, deadline=None)
@given(dtype=st.sampled_from(WIRE_DTYPES), max_shape=st.lists(st.integers(0, 6), max_size=3),
       shapes=st.lists(st.lists(st.integers(0, 7), max_size=3), min_size=1, max_size=6), seed=st.integers(0, 2**16))
def test_property_any_frame_that_fits_round_trips_exactly(dtype, max_shape, shapes, seed):
    mb = Mailbox()
    ch = mb.register("rt", dtype=dtype, max_shape=tuple(max_shape), depth=2)
    gen = torch.Generator().manual_seed(seed)
    for shape in map(tuple, shapes):
        value = (torch.rand(shape, generator=gen) * 100).to(dtype)
        raw = value.reshape(-1).view(torch.uint8).numpy().tobytes()
        result = ch.write_bytes(raw, shape, meta={"shape": shape})
        if value.numel() > int(np.prod(max_shape)):
            assert result.status is REJ and result.reason == "too_large"
            continue
        assert result.status is OK
        with ch.read_latest() as lease:
            assert lease.shape == shape and lease.tensor.dtype == dtype and lease.meta["shape"] == shape
            assert torch.equal(lease.tensor, value)
    assert counts_add_up(ch.stats())
    mb.close()
