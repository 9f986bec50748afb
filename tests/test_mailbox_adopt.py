"""write_bytes(adopt=True): a large received buffer becomes the slot's storage on CPU (no copy);
everything else is still copied, and the slot's own memory comes back on the next write."""

from __future__ import annotations

import gc

import numpy as np
import pytest
import torch

from sage_runtime.mailbox import SMALL_COPY_BYTES, Mailbox

N = SMALL_COPY_BYTES // 4 + 1024  # float32 elements: past the copy threshold


@pytest.fixture()
def channel():
    with Mailbox("cpu") as mb:
        yield mb.register("cam", dtype=torch.float32, max_shape=(N,), policy="latest")


def addr(buf) -> int:
    return np.frombuffer(buf, dtype=np.uint8, count=1).ctypes.data


def test_large_writable_buffer_is_adopted_and_outlives_its_sender(channel) -> None:
    src = bytearray(np.arange(N, dtype=np.float32).tobytes())
    view = memoryview(src)
    where = addr(view)
    assert channel.write_bytes(view, (N,), adopt=True).published
    del src, view
    gc.collect()
    lease = channel.read_latest()
    assert lease.tensor.data_ptr() == where  # no copy: the lease reads the sender's buffer
    assert torch.equal(lease.tensor, torch.arange(N, dtype=torch.float32))
    lease.release()
    assert channel.stats()["accepted"] == 1


def test_slot_reuse_after_adoption_copies_into_its_own_memory(channel) -> None:
    for i in range(8):  # every slot adopted, then every slot written by copy, same shape
        buf = bytearray(np.full(N, i, dtype=np.float32).tobytes())
        assert channel.write_bytes(memoryview(buf), (N,), adopt=i < 4).published
        with channel.read_latest() as lease:
            assert float(lease.tensor[0]) == i and float(lease.tensor[-1]) == i
            assert (lease.tensor.data_ptr() in channel.slot_data_ptrs()) == (i >= 4)
        if i == 3:  # a slot holding an adopted frame keeps no preallocated buffer besides it
            adopted = [slot for slot in channel._slots if slot.adopted]
            assert adopted and all(slot.data.numel() == 0 for slot in adopted)


@pytest.mark.parametrize("case", ["readonly", "small", "misaligned", "not_asked"])
def test_other_buffers_are_copied(channel, case: str) -> None:
    n = 16 if case == "small" else N
    raw = np.arange(n, dtype=np.float32).tobytes()
    if case == "readonly":
        buf = memoryview(raw)
    elif case == "misaligned":
        buf = memoryview(bytearray(b"\0" + raw))[1:]
    else:
        buf = memoryview(bytearray(raw))
    assert channel.write_bytes(buf, (n,), adopt=case != "not_asked").published
    with channel.read_latest() as lease:
        assert lease.tensor.data_ptr() in channel.slot_data_ptrs()
        assert torch.equal(lease.tensor, torch.arange(n, dtype=torch.float32))


def test_a_held_lease_keeps_its_adopted_frame_while_newer_ones_arrive(channel) -> None:
    first = bytearray(np.full(N, 7, dtype=np.float32).tobytes())
    channel.write_bytes(memoryview(first), (N,), adopt=True)
    held = channel.read_latest()
    for i in range(5):
        channel.write_bytes(memoryview(bytearray(np.full(N, i, dtype=np.float32).tobytes())), (N,), adopt=True)
    assert float(held.tensor.min()) == 7 == float(held.tensor.max())
    held.release()


def test_adopted_frames_are_stable_and_reach_plugins_without_a_copy(channel) -> None:
    from sage_runtime.records import Frame

    channel.write_bytes(memoryview(bytearray(np.ones(N, np.float32).tobytes())), (N,), adopt=True)
    with channel.read_latest() as lease:
        assert lease.stable
        frame = Frame("cam", 0, 0, "tensor", lease.tensor, {}, lease.stable)
        assert frame.detached() is frame  # nobody writes that memory again: no copy
    channel.write_bytes(memoryview(bytearray(np.ones(N, np.float32).tobytes())), (N,))
    with channel.read_latest() as lease:
        assert not lease.stable  # the slot's own memory: rewritten by later frames
        copied = Frame("cam", 1, 0, "tensor", lease.tensor, {}).detached().data
        assert copied.data_ptr() != lease.tensor.data_ptr() and torch.equal(copied, lease.tensor)
    for t in (torch.arange(6.0).view(2, 3).t(), torch.ones(3, dtype=torch.bfloat16), torch.ones(2, requires_grad=True)):
        c = Frame("x", 0, 0, "tensor", t).detached().data
        assert torch.equal(c.detach(), t.detach()) and c.data_ptr() != t.data_ptr()
