"""Atomic state files: round trip, a crash mid-write never replaces a good file, corrupt files
are refused with a clear error."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from sage_runtime import statefile
from sage_runtime.statefile import StateFileError, read, write_atomic

DATA = {"plugins": {"vision": {"trust": 0.8125, "runs": 12}}, "names": ["ä", "b"], "x": 1e-300,
        "big": 2**60, "nested": [[1, 2.5], {"k": None, "t": True}]}


def temps(directory) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


def test_written_then_read_is_equal(tmp_path):
    path = tmp_path / "state" / "trust.json"  # parent is created
    write_atomic(path, DATA, kind="trust")
    assert read(path, kind="trust") == DATA
    write_atomic(path, {"v": 2}, kind="trust")
    assert read(path, kind="trust") == {"v": 2}
    assert temps(path.parent) == []
    assert oct(path.stat().st_mode & 0o777) == oct(0o600)


def _crash_child(path, limit: int, ignore_signal: bool) -> subprocess.CompletedProcess:
    """A real process writing a payload larger than RLIMIT_FSIZE allows: the kernel stops the
    write half-way (SIGXFSZ kills it, or with the signal ignored write() fails with EFBIG)."""
    code = textwrap.dedent(f"""
        import resource, signal, sys
        from sage_runtime.statefile import write_atomic
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN if {ignore_signal} else signal.SIG_DFL)
        resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
        try:
            write_atomic({str(path)!r}, {{"blob": "x" * 200000}}, kind="trust")
        except OSError as exc:
            print("OSError", exc.errno)
            sys.exit(3)
    """)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)


def test_a_process_killed_mid_write_leaves_the_good_file(tmp_path):
    path = tmp_path / "trust.json"
    write_atomic(path, DATA, kind="trust")
    done = _crash_child(path, limit=16384, ignore_signal=False)
    assert done.returncode == -signal.SIGXFSZ, done.stderr
    left = temps(tmp_path)
    assert len(left) == 1 and 0 < (tmp_path / left[0]).stat().st_size <= 16384  # really half-written
    assert read(path, kind="trust") == DATA
    write_atomic(path, {"after": 1}, kind="trust")  # a later write is unaffected by the leftover
    assert read(path, kind="trust") == {"after": 1}


def test_a_failed_write_removes_its_temp_and_keeps_the_good_file(tmp_path):
    path = tmp_path / "trust.json"
    write_atomic(path, DATA, kind="trust")
    done = _crash_child(path, limit=16384, ignore_signal=True)
    assert done.returncode == 3 and "OSError" in done.stdout, done.stderr
    assert temps(tmp_path) == []
    assert read(path, kind="trust") == DATA


def test_stale_temps_from_killed_writers_are_swept(tmp_path):
    path = tmp_path / "trust.json"
    stale = tmp_path / ".trust.json.abc123.tmp"
    stale.write_text('{"format": "sage-st')
    old = os.stat(stale).st_mtime - 2 * statefile.STALE_TEMP_S
    os.utime(stale, (old, old))
    fresh = tmp_path / ".trust.json.def456.tmp"
    fresh.write_text("{")
    write_atomic(path, DATA, kind="trust")
    assert temps(tmp_path) == [fresh.name]  # a fresh one might belong to a live writer


def test_unwritable_data_leaves_the_target_untouched(tmp_path):
    path = tmp_path / "trust.json"
    write_atomic(path, DATA, kind="trust")
    with pytest.raises(ValueError):
        write_atomic(path, {"x": float("nan")}, kind="trust")
    with pytest.raises(TypeError):
        write_atomic(path, {"x": object()}, kind="trust")
    assert read(path, kind="trust") == DATA and temps(tmp_path) == []


@pytest.mark.parametrize("damage, message", [
    (lambda t: t[: len(t) // 2], "not valid JSON"),
    (lambda t: t.replace('"runs":12', '"runs":13'), "checksum mismatch"),
    (lambda t: "\udcff garbage", "not valid JSON"),
    (lambda t: json.dumps([1, 2]), "not a sage-state file"),
    (lambda t: t.replace('"version":1', '"version":99'), "version 99 is not supported"),
    (lambda t: t.replace('"kind":"trust"', '"kind":"memory"'), "holds 'memory' state, expected 'trust'"),
])
def test_a_corrupt_file_gives_a_clear_error(tmp_path, damage, message):
    path = tmp_path / "trust.json"
    write_atomic(path, DATA, kind="trust")
    path.write_bytes(damage(path.read_text(encoding="utf-8")).encode("utf-8", "surrogateescape"))
    with pytest.raises(StateFileError, match=message) as info:
        read(path, kind="trust")
    assert str(path) in str(info.value)


def test_a_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        read(tmp_path / "none.json", kind="trust")


def test_int_keys_round_trip_as_strings(tmp_path):
    path = tmp_path / "k.json"
    write_atomic(path, {10: "a", 9: "b"}, kind="k")
    assert read(path, kind="k") == {"10": "a", "9": "b"}
