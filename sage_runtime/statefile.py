"""Atomic, versioned JSON state files (trust ledger, anything else that must survive a restart).

write_atomic writes a temp file in the same directory, fsyncs it, renames it over the target and
fsyncs the directory, so after a crash the target is either the old complete file or the new
complete file, never a mix. The envelope carries a format name, a version, a kind (what the file
holds) and a SHA-256 of the payload, so a truncated, edited or foreign file is refused with a
clear error instead of being half-loaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

FORMAT = "sage-state"
VERSION = 1
STALE_TEMP_S = 60.0


class StateFileError(ValueError):
    """A state file that exists but cannot be used; the message names the file and why."""


def _payload(data: Any) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), allow_nan=False, ensure_ascii=False)


def _digest(payload: str) -> str:
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def write_atomic(path: str | os.PathLike[str], data: Any, *, kind: str) -> None:
    """Replace `path` with `data` (JSON-able; NaN/inf refused) in one atomic step.

    Raises TypeError/ValueError for data that cannot be written (the target is untouched) and
    OSError for I/O failures (the target is untouched, the temp file removed)."""
    target = Path(path)
    payload = _payload(json.loads(_payload(data)))  # canonical: as read() will see it (str keys)
    header = _payload({"format": FORMAT, "version": VERSION, "kind": kind, "sha256": _digest(payload)})
    text = f'{header[:-1]},"data":{payload}}}\n'
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(target.parent)
    _sweep_stale_temps(target)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sweep_stale_temps(target: Path) -> None:
    """Remove temp files a killed writer left behind (older than a minute, so never a live one)."""
    cutoff = time.time() - STALE_TEMP_S
    for leftover in target.parent.glob(f".{target.name}.*.tmp"):
        try:
            if leftover.stat().st_mtime < cutoff:
                leftover.unlink()
        except OSError:
            pass


def read(path: str | os.PathLike[str], *, kind: str) -> Any:
    """The data last written to `path` by write_atomic with the same kind.

    Raises FileNotFoundError when there is no file, StateFileError when it is corrupt, of
    another kind or of an unknown version."""
    target = Path(path)
    raw = target.read_bytes()
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StateFileError(f"{target}: corrupt state file (not valid JSON: {exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise StateFileError(f"{target}: not a {FORMAT} file")
    if doc.get("version") != VERSION:
        raise StateFileError(f"{target}: state file version {doc.get('version')!r} is not supported "
                             f"(this build reads version {VERSION})")
    if doc.get("kind") != kind:
        raise StateFileError(f"{target}: holds {doc.get('kind')!r} state, expected {kind!r}")
    if "data" not in doc or _digest(_payload(doc["data"])) != doc.get("sha256"):
        raise StateFileError(f"{target}: corrupt state file (checksum mismatch)")
    return doc["data"]
