"""The slot canvas: bytes in, slot targets from an alignment, text back out (see model.py)."""

from __future__ import annotations

from sage_plugins.language.model import BLANK


def encode_bytes(text: str, max_len: int) -> list[int]:
    return list(text.encode("utf-8", errors="replace")[:max_len])


def decode_slots(ids: list[int]) -> str:
    """Canvas slots to text: the bytes in slot order, skipping BLANK, MASK and PAD."""
    return bytes(t for t in ids if t < 256).decode("utf-8", errors="replace")


def slot_targets(clean: bytes, noisy: bytes, slots: int) -> list[int] | None:
    """The canvas that spells `clean` over `noisy`: per noisy byte, the clean bytes it owns, left-
    aligned and BLANK-filled. Ownership follows a Levenshtein alignment (ties prefer match or
    substitution, then deletion); a deleted clean byte joins the noisy byte before it (the first
    one, if none is before) and what does not fit moves on to the next byte. None when the last
    byte would own more than `slots` clean bytes."""
    n, m = len(clean), len(noisy)
    if m == 0:
        return None
    d = [list(range(m + 1))] + [[i] + [0] * m for i in range(1, n + 1)]
    for i in range(1, n + 1):
        row, prev, ci = d[i], d[i - 1], clean[i - 1]
        for j in range(1, m + 1):
            row[j] = min(prev[j - 1] + (ci != noisy[j - 1]), prev[j] + 1, row[j - 1] + 1)
    ops: list[tuple[str, int]] = []
    i, j = n, m
    while i > 0 or j > 0:
        if i > 0 and j > 0 and d[i][j] == d[i - 1][j - 1] + (clean[i - 1] != noisy[j - 1]):
            ops.append(("keep", i - 1))
            i, j = i - 1, j - 1
        elif i > 0 and d[i][j] == d[i - 1][j] + 1:
            ops.append(("deleted", i - 1))
            i -= 1
        else:
            ops.append(("inserted", -1))
            j -= 1
    owned: list[list[int]] = [[] for _ in range(m)]
    lead: list[int] = []
    pos = -1
    for op, ci in reversed(ops):
        if op == "keep":
            pos += 1
            owned[pos].append(clean[ci])
        elif op == "inserted":
            pos += 1
        else:
            (owned[pos] if pos >= 0 else lead).append(clean[ci])
    owned[0] = lead + owned[0]
    for j in range(m - 1):  # a run of drops overflows into the next byte's slots
        if len(owned[j]) > slots:
            owned[j], owned[j + 1] = owned[j][:slots], owned[j][slots:] + owned[j + 1]
    if len(owned[-1]) > slots:
        return None
    return [t for o in owned for t in o + [BLANK] * (slots - len(o))]


