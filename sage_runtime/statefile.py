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
import logging
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("sage.statefile")

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


def move_aside(path: str | os.PathLike[str], *, sidecars: tuple[str, ...] = ()) -> Path:
    """Rename a state file that cannot be loaded to `<name>.corrupt-<UTC timestamp>` (never
    overwritten: a suffix is added when that name exists), with its sidecars (e.g. SQLite's
    `-wal`, `-shm`) under the same stamp. Returns the kept path."""
    target = Path(path)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    kept = target.with_name(f"{target.name}.corrupt-{stamp}")
    n = 1
    while kept.exists():
        kept = target.with_name(f"{target.name}.corrupt-{stamp}-{n}")
        n += 1
    os.replace(target, kept)
    for suffix in sidecars:
        side = target.with_name(target.name + suffix)
        if side.exists():
            os.replace(side, kept.with_name(kept.name + suffix))
    _fsync_dir(target.parent)
    return kept


@dataclass(frozen=True)
class Restored:
    """What loading a state file at start gave: `status` is "none saved", "restored", "corrupt"
    (moved aside to `kept`, starting fresh) or "failed" (unreadable, left in place)."""

    status: str
    error: str | None = None
    kept: Path | None = None

    def describe(self) -> str:
        if self.status == "corrupt":
            return f"corrupt: {self.error}; kept as {self.kept}"
        return self.status if self.error is None else f"{self.status}: {self.error}"


def restore_or_set_aside(path: str | os.PathLike[str], *, kind: str, apply: Callable[[Any], None]) -> Restored:
    """Read `path` and hand its data to `apply`. A file that is corrupt, or whose data `apply`
    refuses (ValueError/TypeError/KeyError), is moved aside, so the next save cannot overwrite the
    only copy of what was learned; an unreadable one (OSError) is left where it is."""
    target = Path(path)
    try:
        data = read(target, kind=kind)
    except FileNotFoundError:
        return Restored("none saved")
    except OSError as exc:
        log.error("%s not restored (left in place): %s", target, exc)
        return Restored("failed", f"{exc.strerror or exc} ({target})")
    except StateFileError as exc:
        return _set_aside(target, str(exc))
    try:
        apply(data)
    except (ValueError, TypeError, KeyError) as exc:
        return _set_aside(target, f"{target}: {kind} data refused: {exc}")
    log.info("%s state restored from %s", kind, target)
    return Restored("restored")


def _set_aside(target: Path, error: str) -> Restored:
    try:
        kept = move_aside(target)
    except OSError as exc:
        log.error("%s; moving it aside failed too (%s): starting fresh", error, exc)
        return Restored("failed", f"{error}; not moved aside: {exc.strerror or exc}")
    log.error("%s; kept as %s, starting fresh", error, kept)
    return Restored("corrupt", error, kept)
