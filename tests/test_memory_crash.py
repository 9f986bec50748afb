"""kill -9 during a burst of memory writes loses nothing that was acknowledged.

The test runs this file as a separate process (`python tests/test_memory_crash.py STATE_DIR`):
it stores experiences as fast as it can and prints `ACK <id> <k>` for every store whose commit
finished (k determines the vector). The test SIGKILLs it mid-burst, reopens the memory in this
process and checks every acknowledged item is there, bit for bit, and that SQLite's integrity
check passes. Three rounds append to the same database, so later rounds also reopen a database
that was itself left by a kill.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from sage_plugins.memory import MemoryPlugin
from sage_runtime.conformance import make_context

DIM = 256


def vector_for(k: int) -> torch.Tensor:
    return torch.randn(DIM, generator=torch.Generator().manual_seed(10_000 + k))


def writer(state_dir: Path) -> None:
    """The process that gets killed: stores until killed, printing acknowledgements."""
    torch.set_num_threads(1)
    plugin = MemoryPlugin()
    plugin.setup(make_context(plugin, {}, state_dir))
    k_of: dict[int, int] = {}
    k = 0
    print("READY", flush=True)
    while True:
        for _ in range(16):
            item = plugin.remember(vector_for(k), source="burst", salience=0.9, meta={"k": k})
            if item is not None:
                k_of[item] = k
            k += 1
        acked = plugin.acknowledged()
        if acked:
            sys.stdout.write("".join(f"ACK {i} {k_of.pop(i)}\n" for i in acked))
            sys.stdout.flush()


def _burst_and_kill(state_dir: Path, min_acks: int) -> dict[int, int]:
    """Run the writer until it has acknowledged at least `min_acks` items, then SIGKILL it."""
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([sys.executable, __file__, str(state_dir)], stdout=subprocess.PIPE, stderr=err,
                                text=True, bufsize=1)
        acked: dict[int, int] = {}
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                if line.startswith("ACK "):
                    _, item, k = line.split()
                    acked[int(item)] = int(k)
                if len(acked) >= min_acks:
                    break
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            err.seek(0)
            stderr = err.read()
        assert proc.returncode == -signal.SIGKILL, f"writer exited on its own ({proc.returncode}): {stderr}"
        assert len(acked) >= min_acks, f"writer acknowledged only {len(acked)} items: {stderr}"
        return acked


def test_kill_9_mid_burst_keeps_every_acknowledged_item(tmp_path: Path) -> None:
    all_acked: dict[int, int] = {}
    for min_acks in (300, 700, 150):
        acked = _burst_and_kill(tmp_path, min_acks)
        assert not set(acked) & set(all_acked), "ids were reused after a crash"
        all_acked.update(acked)

        db = tmp_path / "memory.db"
        check = sqlite3.connect(db)
        try:
            assert check.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            assert check.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            rows = {i: (vec, json.loads(meta)) for i, vec, meta in check.execute("SELECT id, vec, meta FROM items")}
        finally:
            check.close()
        missing = sorted(set(all_acked) - set(rows))
        assert not missing, f"{len(missing)} acknowledged items lost, e.g. {missing[:5]}"
        for item, k in all_acked.items():
            vec, meta = rows[item]
            assert meta["k"] == k
            assert np.array_equal(np.frombuffer(vec, dtype="<f4"), vector_for(k).numpy())

        plugin = MemoryPlugin()  # reopening rebuilds the index from everything committed
        plugin.setup(make_context(plugin, {}, tmp_path))
        try:
            assert set(all_acked) <= set(plugin.index.row_of)
            assert plugin.index.n == len(rows)
        finally:
            plugin.close()


if __name__ == "__main__":
    writer(Path(sys.argv[1]))
