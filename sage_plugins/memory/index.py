"""The in-memory pattern index: a matrix preallocated once at `capacity` items, so memory is
bounded by config (the research memory kept unbounded lists of tensors) and retrieval is one
matrix-vector product over the first `n` items. Items are unit-normalised and stored as the
*columns* of a (dim x capacity) matrix: on this CPU torch's gemv over that layout ran 1.5-2x
faster than over (capacity x dim) rows, for both products a Hopfield step needs (q @ X^T and
X^T @ p). Removal moves the last column into the hole so the live columns stay contiguous.
"""

from __future__ import annotations

import numpy as np
import torch


class PatternIndex:
    """Unit vectors (columns 0..n-1) with their ids, salience, merge counts and source codes."""

    def __init__(self, capacity: int, dim: int, device: torch.device) -> None:
        self.capacity = capacity
        self.dim = dim
        self.matrix = torch.zeros(dim, capacity, dtype=torch.float32, device=device)
        self.ids = np.full(capacity, -1, dtype=np.int64)
        self.salience = np.zeros(capacity, dtype=np.float32)
        self.count = np.zeros(capacity, dtype=np.int64)
        self.source_code = np.zeros(capacity, dtype=np.int32)
        self.row_of: dict[int, int] = {}
        self._codes: dict[str, int] = {}
        self._names: list[str] = []
        self.n = 0

    @property
    def full(self) -> bool:
        return self.n >= self.capacity

    @property
    def live(self) -> torch.Tensor:
        """The stored patterns, X^T: a (dim x n) view of the first n columns."""
        return self.matrix[:, : self.n]

    def vector(self, row: int) -> torch.Tensor:
        """Item `row` (a column view)."""
        return self.matrix[:, row]

    def code(self, source: str) -> int:
        """Small integer for a source name, so scoping a query to one source is a vector compare."""
        if source not in self._codes:
            self._codes[source] = len(self._names)
            self._names.append(source)
        return self._codes[source]

    def source_of_row(self, row: int) -> str:
        return self._names[int(self.source_code[row])]

    def add(self, item_id: int, unit: torch.Tensor, salience: float, source: str, count: int = 1) -> int:
        """Append one unit vector; the caller makes room first when full."""
        if self.full:
            raise OverflowError("pattern index is full")
        row = self.n
        self.matrix[:, row].copy_(unit)
        self.ids[row] = item_id
        self.salience[row] = salience
        self.count[row] = count
        self.source_code[row] = self.code(source)
        self.row_of[item_id] = row
        self.n += 1
        return row

    def remove(self, item_id: int) -> None:
        """Drop one item, moving the last row into its place."""
        row = self.row_of.pop(item_id)
        last = self.n - 1
        if row != last:
            self.matrix[:, row].copy_(self.matrix[:, last])
            self.ids[row] = self.ids[last]
            self.salience[row] = self.salience[last]
            self.count[row] = self.count[last]
            self.source_code[row] = self.source_code[last]
            self.row_of[int(self.ids[row])] = row
        self.ids[last] = -1
        self.n = last

    def lowest_salience(self, k: int) -> list[int]:
        """Ids of the k least salient items, in O(n) (argmin / argpartition, ties arbitrary)."""
        k = min(k, self.n)
        if k <= 0:
            return []
        sal = self.salience[: self.n]
        rows = [int(np.argmin(sal))] if k == 1 else np.argpartition(sal, k - 1)[:k]
        return [int(i) for i in self.ids[rows]]

    def source_mask(self, source: str) -> np.ndarray | None:
        """True for live items of another source than `source`; None when there are none."""
        code = self._codes.get(source, -1)
        if len(self._names) == 1 and code == 0:
            return None  # one source only (the common case): skip the compare
        return self.source_code[: self.n] != code
