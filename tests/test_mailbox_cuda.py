"""Mailbox on CUDA: the CPU semantics, plus stream ordering by events (skipped without a GPU).

Ordering is tested by stalling one stream with `torch.cuda._sleep` so that a missing event wait
would show stale or foreign data.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from sage_runtime.mailbox import Mailbox, WriteStatus

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

STALL_CYCLES = 50_000_000  # tens of milliseconds on any current GPU


@pytest.fixture
def mailbox():
    mb = Mailbox("cuda")
    yield mb
    mb.close()


def test_slots_live_on_the_device_with_pinned_staging(mailbox):
    ch = mailbox.register("cam", dtype=torch.uint8, max_shape=(8, 8, 3), depth=3)
    ptrs = ch.slot_data_ptrs()
    frame = np.arange(192, dtype=np.uint8).reshape(8, 8, 3)
    for _ in range(20):
        assert ch.write_bytes(frame.tobytes(), (8, 8, 3)).status is WriteStatus.OK
        with ch.read_latest() as lease:
            assert lease.tensor.is_cuda and lease.shape == (8, 8, 3)
            np.testing.assert_array_equal(lease.tensor.cpu().numpy(), frame)
    assert ch.slot_data_ptrs() == ptrs
    assert all(slot.host_u8.is_pinned() for slot in ch._slots)


def test_write_accepts_numpy_cpu_and_cuda_tensors(mailbox):
    ch = mailbox.register("v", dtype=torch.float32, max_shape=(16,), policy="fifo", depth=4)
    values = [np.full(4, 1.0, np.float32), torch.full((5,), 2.0), torch.full((6,), 3.0, device="cuda")]
    assert [ch.write(v).status for v in values] == [WriteStatus.OK] * 3
    got = [lease.tensor.cpu() for lease in ch.pop_all()]
    assert [t.tolist() for t in got] == [[1.0] * 4, [2.0] * 5, [3.0] * 6]


def test_reader_stream_waits_for_the_upload(mailbox):
    ch = mailbox.register("u", dtype=torch.int64, max_shape=(1 << 16,), depth=3)
    ch.write(torch.zeros(1 << 16, dtype=torch.int64))
    with ch.read_latest() as lease:
        lease.tensor.sum().item()
    with torch.cuda.stream(ch._side_stream):
        torch.cuda._sleep(STALL_CYCLES)  # the next upload queues behind this
    ch.write(torch.full((1 << 16,), 7, dtype=torch.int64))
    reader = torch.cuda.Stream()
    with torch.cuda.stream(reader):
        with ch.read_latest(after_seq=0) as lease:
            copy = lease.tensor.clone()  # enqueued at once: only the event wait orders it after the upload
    reader.synchronize()
    assert bool((copy == 7).all())


def test_writer_waits_for_the_readers_release_event(mailbox):
    ch = mailbox.register("w", dtype=torch.int64, max_shape=(1 << 16,), depth=2)
    ch.write(torch.full((1 << 16,), 1, dtype=torch.int64))  # seq 0 in slot A
    torch.cuda.synchronize()
    reader = torch.cuda.Stream()
    with torch.cuda.stream(reader):
        lease = ch.read_latest()
        torch.cuda._sleep(STALL_CYCLES)
        copy = lease.tensor.clone()  # runs after the stall
        lease.release()               # host-side release long before the GPU read happens
    ch.write(torch.full((1 << 16,), 2, dtype=torch.int64))  # slot B
    ch.write(torch.full((1 << 16,), 3, dtype=torch.int64))  # slot A again: must wait for `copy`
    reader.synchronize()
    assert bool((copy == 1).all())
    with ch.read_latest() as newest:
        assert bool((newest.tensor == 3).all())


def test_no_torn_reads_across_threads_and_streams(mailbox):
    n = 1 << 16
    ch = mailbox.register("race", dtype=torch.int64, max_shape=(n,), depth=6)
    stop = threading.Event()
    errors: list[str] = []
    published: dict[int, int] = {}
    seen: list[tuple[int, int]] = []

    def writer(base: int) -> None:
        i = 0
        while not stop.is_set():
            token = base + i
            result = ch.write(np.full(n, token, dtype=np.int64), meta={"token": token})
            if result.published:
                published[result.seq] = token
            i += 1

    def reader() -> None:
        stream = torch.cuda.Stream()
        cursor = -1
        with torch.cuda.stream(stream):
            while not stop.is_set():
                lease = ch.read_latest(cursor)
                if lease is None:
                    time.sleep(0)
                    continue
                with lease:
                    if lease.seq <= cursor:
                        errors.append(f"seq went back from {cursor} to {lease.seq}")
                    cursor = lease.seq
                    torch.cuda._sleep(100_000)
                    ok = (lease.tensor == lease.meta["token"]).all()
                    seen.append((lease.seq, lease.meta["token"]))
                if not bool(ok):  # host sync here is the test's, not the mailbox's
                    errors.append(f"seq {lease.seq}: torn or foreign data")

    threads = [threading.Thread(target=writer, args=(b,)) for b in (1_000_000, 2_000_000)]
    threads += [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(2.0)
    stop.set()
    for t in threads:
        t.join(10)
    torch.cuda.synchronize()
    assert not errors, errors[:5]
    assert seen and all(published[seq] == token for seq, token in seen)
    stats = ch.stats()
    assert stats["writes"] == stats["accepted"] + stats["overwritten"] + stats["dropped"] + stats["rejected"]
    assert stats["leases_outstanding"] == 0
