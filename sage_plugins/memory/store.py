"""SQLite persistence for the memory plugin: one connection, owned by one writer thread.

The research memory opened a new SQLite connection every 10 steps on the tick path. Here the
tick only enqueues (never waits for disk): a single writer thread owns the only connection,
applies queued operations in order, batches them into one transaction per wakeup, and records
which inserted ids have *committed*. Only committed ids are reported as acknowledged, so an id
the plugin has announced survives `kill -9` (WAL journal; with synchronous=FULL also power loss).
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import queue
import sqlite3
import threading
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sage_runtime import statefile

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- AUTOINCREMENT: sqlite_sequence keeps the highest id ever used
    ts_ns INTEGER NOT NULL,
    source TEXT NOT NULL,
    salience REAL NOT NULL,
    count INTEGER NOT NULL DEFAULT 1,
    consolidated INTEGER NOT NULL DEFAULT 0,
    snarc TEXT NOT NULL,
    meta TEXT NOT NULL,
    vec BLOB NOT NULL
);
"""

log = logging.getLogger("sage.plugins.memory")


class SchemaError(RuntimeError):
    """The database was written by an incompatible version of this store."""


#: What reading a damaged file raises: SQLite's own errors, and a row whose vector or JSON columns
#: are garbage (a zeroed page reads back as NULL blobs).
_CORRUPT = (sqlite3.DatabaseError, TypeError, ValueError)


@dataclass(frozen=True)
class Record:
    """One experience as persisted: `vec` is float32 of the store's dimension."""

    id: int
    ts_ns: int
    source: str
    salience: float
    vec: np.ndarray
    snarc: dict[str, Any]
    meta: dict[str, Any]
    count: int = 1
    consolidated: bool = False


_STOP = object()


def _blob(vec: np.ndarray) -> bytes:
    return np.ascontiguousarray(vec, dtype="<f4").tobytes()


def _json(value: Any) -> str:
    return json.dumps(value, default=str, separators=(",", ":"))


class SqliteStore:
    """Append-mostly experience table behind a queue; every method except `open` returns at once
    (or, for `flush`/`wait_acknowledged`, waits only when asked to)."""

    def __init__(self, path: Path, dim: int, *, synchronous: str = "FULL", batch_max: int = 512,
                 max_pending: int = 65536, ack_keep: int = 65536) -> None:
        self.path = Path(path)
        self.dim = dim
        self.synchronous = synchronous.upper()
        self.batch_max = batch_max
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max_pending)
        self._cond = threading.Condition()
        self._enqueued = 0  # sequence number of the last enqueued operation
        self._done = 0  # sequence number of the last operation whose transaction finished
        self._acked: deque[int] = deque(maxlen=ack_keep)
        self._failed: set[int] = set()
        self.errors = 0
        self.last_error: str | None = None
        self.commits = 0
        self.highest_id = 0  # highest id ever committed, deleted ones included (set by open)
        self.recovered: dict[str, str] | None = None  # set when open() moved a corrupt file aside
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle

    def open(self, timeout_s: float = 60.0) -> list[Record]:
        """Start the writer thread, open (or create) the database and return every stored item.

        A database SQLite cannot read (garbage, truncated, zeroed pages) is moved aside with its
        WAL to `<name>.corrupt-<timestamp>` and an empty one is started: `recovered` says from
        what and where the old file is kept. A schema of another version is not corruption: it
        raises SchemaError naming the file."""
        try:
            return self._open(timeout_s)
        except _CORRUPT as exc:
            error = f"{self.path}: unreadable database ({type(exc).__name__}: {exc})"
            kept = statefile.move_aside(self.path, sidecars=("-wal", "-shm"))
            self.recovered = {"error": error, "kept": str(kept)}
            log.error("%s; kept as %s, starting with an empty memory", error, kept)
            return self._open(timeout_s)

    def _open(self, timeout_s: float) -> list[Record]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        loaded: concurrent.futures.Future[list[Record]] = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._run, args=(loaded,), name="memory-writer", daemon=True)
        self._thread.start()
        try:
            return loaded.result(timeout=timeout_s)
        except BaseException:
            self._thread = None
            raise

    def close(self, timeout_s: float = 30.0) -> bool:
        """Write everything queued, checkpoint the WAL, close the connection; True when clean."""
        if self._thread is None:
            return True
        with self._cond:
            thread, self._thread = self._thread, None
        self._queue.put(_STOP)
        thread.join(timeout_s)
        return not thread.is_alive()

    # ------------------------------------------------------------------ writes (non-blocking)

    def _put(self, op: tuple[Any, ...]) -> bool:
        with self._cond:
            if self._thread is None:
                return False  # not open, or closed: nothing would ever write it
            try:
                self._queue.put_nowait((self._enqueued + 1, *op))
            except queue.Full:
                return False
            self._enqueued += 1
        return True

    def insert(self, rec: Record) -> bool:
        """Queue one insert; False (nothing queued) when the backlog is full."""
        row = (rec.id, rec.ts_ns, rec.source, float(rec.salience), rec.count, int(rec.consolidated),
               _json(rec.snarc), _json(rec.meta), _blob(rec.vec))
        return self._put(("insert", row))

    def update(self, item_id: int, vec: np.ndarray, salience: float, count: int) -> bool:
        return self._put(("update", (_blob(vec), float(salience), int(count), int(item_id))))

    def delete(self, ids: Iterable[int]) -> bool:
        return self._put(("delete", [int(i) for i in ids]))

    def scale_salience(self, factor: float) -> bool:
        return self._put(("scale", float(factor)))

    def mark_consolidated(self, ids: Iterable[int]) -> bool:
        return self._put(("consolidated", [int(i) for i in ids]))

    def checkpoint(self) -> bool:
        return self._put(("checkpoint", None))

    # ------------------------------------------------------------------ acknowledgements

    @property
    def backlog(self) -> int:
        """Operations queued whose transaction has not finished."""
        with self._cond:
            return self._enqueued - self._done

    def take_acknowledged(self) -> list[int]:
        """Inserted ids committed since the last call (oldest first)."""
        with self._cond:
            out = list(self._acked)
            self._acked.clear()
        return out

    def flush(self, timeout_s: float = 30.0) -> bool:
        """Wait until every operation queued before this call has finished; False on timeout."""
        with self._cond:
            target = self._enqueued
            return self._cond.wait_for(lambda: self._done >= target, timeout=timeout_s)

    def wait_acknowledged(self, ids: Sequence[int], timeout_s: float = 30.0) -> bool:
        """Wait for the inserts of `ids` (queued before this call); True when all committed."""
        if not self.flush(timeout_s):
            return False
        with self._cond:
            return not any(i in self._failed for i in ids)

    # ------------------------------------------------------------------ writer thread

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, timeout=30.0)
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise RuntimeError(f"{self.path}: could not enable WAL (journal_mode={mode})")
        conn.execute(f"PRAGMA synchronous={self.synchronous}")
        conn.executescript(_SCHEMA)
        rows = conn.execute("SELECT version FROM schema_version").fetchall()
        if not rows:
            conn.execute("INSERT INTO schema_version(version) VALUES (?)", (SCHEMA_VERSION,))
        elif len(rows) != 1 or rows[0][0] != SCHEMA_VERSION:
            conn.close()
            raise SchemaError(f"{self.path}: schema version {[r[0] for r in rows]}, this build reads "
                              f"{SCHEMA_VERSION}; move the file aside or migrate it")
        return conn

    def _load(self, conn: sqlite3.Connection) -> list[Record]:
        seq = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'items'").fetchone()
        self.highest_id = int(seq[0]) if seq else 0
        out = []
        cur = conn.execute("SELECT id, ts_ns, source, salience, count, consolidated, snarc, meta, vec "
                           "FROM items ORDER BY id")
        for item_id, ts_ns, source, salience, count, consolidated, snarc, meta, vec in cur:
            arr = np.frombuffer(vec, dtype="<f4")
            if arr.size != self.dim:
                raise SchemaError(f"{self.path}: item {item_id} has {arr.size} values, config dim is {self.dim}")
            out.append(Record(item_id, ts_ns, source, salience, arr.astype(np.float32), json.loads(snarc),
                              json.loads(meta), count, bool(consolidated)))
        return out

    def _run(self, loaded: concurrent.futures.Future[list[Record]]) -> None:
        conn = None
        try:
            conn = self._connect()
            loaded.set_result(self._load(conn))
        except BaseException as exc:  # noqa: BLE001 - handed to the opener, which raises it
            if conn is not None:
                conn.close()
            loaded.set_exception(exc)
            return
        try:
            stop = False
            while not stop:
                batch = [self._queue.get()]
                while len(batch) < self.batch_max:
                    try:
                        batch.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                if batch[-1] is _STOP or _STOP in batch:
                    stop = True
                    batch = [op for op in batch if op is not _STOP]
                self._apply(conn, batch)
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            conn.close()

    def _apply(self, conn: sqlite3.Connection, batch: list[tuple[Any, ...]]) -> None:
        """Run a batch as few transactions as possible; a failing op is isolated and skipped."""
        chunk: list[tuple[Any, ...]] = []
        for op in batch:
            if op[1] == "checkpoint":
                self._transact(conn, chunk)
                chunk = []
                self._checkpoint(conn, op[0])
            else:
                chunk.append(op)
        self._transact(conn, chunk)

    def _checkpoint(self, conn: sqlite3.Connection, seq: int) -> None:
        try:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as exc:
            self._record_error(f"checkpoint: {exc}")
        self._finish(seq, [])

    def _transact(self, conn: sqlite3.Connection, ops: list[tuple[Any, ...]]) -> None:
        if not ops:
            return
        try:
            conn.execute("BEGIN IMMEDIATE")
            for op in ops:
                _execute(conn, op)
            conn.execute("COMMIT")
        except Exception as exc:  # noqa: BLE001 - a bad op must not kill the writer thread
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if len(ops) > 1:  # find the bad op: retry one per transaction
                for op in ops:
                    self._transact(conn, [op])
                return
            self._record_error(f"{ops[0][1]}: {exc}")
            if ops[0][1] == "insert":
                with self._cond:
                    self._failed.add(ops[0][2][0])
            self._finish(ops[0][0], [])
            return
        self.commits += 1
        self._finish(ops[-1][0], [op[2][0] for op in ops if op[1] == "insert"])

    def _finish(self, seq: int, acked: list[int]) -> None:
        with self._cond:
            self._acked.extend(acked)
            self._done = max(self._done, seq)
            self._cond.notify_all()

    def _record_error(self, msg: str) -> None:
        self.errors += 1
        self.last_error = msg
        log.warning("memory store %s: %s", self.path, msg)


def _execute(conn: sqlite3.Connection, op: tuple[Any, ...]) -> None:
    kind, arg = op[1], op[2]
    if kind == "insert":
        conn.execute("INSERT INTO items(id, ts_ns, source, salience, count, consolidated, snarc, meta, vec) "
                     "VALUES (?,?,?,?,?,?,?,?,?)", arg)
    elif kind == "update":
        conn.execute("UPDATE items SET vec=?, salience=?, count=? WHERE id=?", arg)
    elif kind == "delete":
        conn.executemany("DELETE FROM items WHERE id=?", [(i,) for i in arg])
    elif kind == "scale":
        conn.execute("UPDATE items SET salience = salience * ?", (arg,))
    elif kind == "consolidated":
        conn.executemany("UPDATE items SET consolidated=1 WHERE id=?", [(i,) for i in arg])
    else:  # pragma: no cover - programming error
        raise ValueError(f"unknown store op {kind!r}")
