"""Sudoku generation, solving and verification for n x n boards (n = 4 or 9), in upstream HRM's
token layout: PAD 0, blank 1, digit d -> d + 1 (vocabulary n + 2).

Generation: a full grid by randomised backtracking, then upstream's validity-preserving shuffle
(digit permutation, band/stack permutations with rows/columns permuted inside them, transpose),
then cells blanked in random order while the solution stays unique, so the label is the only answer
and exact accuracy against it equals "is a valid completion".
"""

from __future__ import annotations

import math

import numpy as np

PAD, BLANK = 0, 1


def box_size(n: int) -> int:
    b = math.isqrt(n)
    if b * b != n:
        raise ValueError(f"board size {n} is not a square")
    return b


def vocab_size(n: int) -> int:
    """Token vocabulary: PAD, blank and n digits."""
    return n + 2


def to_tokens(grid: np.ndarray) -> np.ndarray:
    """Digits 0 (blank) .. n -> tokens 1 .. n+1, flattened row-major."""
    return np.asarray(grid, dtype=np.int64).reshape(-1) + 1


def from_tokens(tokens: np.ndarray, n: int) -> np.ndarray:
    """Tokens -> digit grid [n, n] (PAD and blank both become 0)."""
    t = np.asarray(tokens, dtype=np.int64).reshape(n, n)
    return np.clip(t - 1, 0, n)


def _candidates(grid: np.ndarray, n: int, b: int) -> tuple[list[int], list[int], list[int]]:
    full = (1 << (n + 1)) - 2  # bits 1..n
    rows, cols, boxes = [full] * n, [full] * n, [full] * n
    for r in range(n):
        for c in range(n):
            v = int(grid[r, c])
            if v:
                bit = 1 << v
                rows[r] &= ~bit
                cols[c] &= ~bit
                boxes[(r // b) * b + c // b] &= ~bit
    return rows, cols, boxes


def count_solutions(grid: np.ndarray, limit: int = 2, rng: np.random.Generator | None = None,
                    out: list[np.ndarray] | None = None) -> int:
    """Number of completions of `grid` (0 = blank), counting up to `limit`. Bitmask backtracking
    with the most-constrained cell first; with `rng`, digits are tried in random order; completions
    found are appended to `out`."""
    g = np.array(grid, dtype=np.int64)
    n = g.shape[0]
    b = box_size(n)
    rows, cols, boxes = _candidates(g, n, b)
    # Givens that already clash: no solution.
    for r in range(n):
        for c in range(n):
            v = int(g[r, c])
            if v:
                g[r, c] = 0
                rr, cc, bb = _candidates(g, n, b)
                bit = 1 << v
                g[r, c] = v
                if not (rr[r] & cc[c] & bb[(r // b) * b + c // b] & bit):
                    return 0
    empties = [(r, c) for r in range(n) for c in range(n) if g[r, c] == 0]
    count = 0

    def search() -> bool:
        nonlocal count
        best, best_mask, best_n = -1, 0, n + 1
        for i, (r, c) in enumerate(empties):
            if g[r, c]:
                continue
            m = rows[r] & cols[c] & boxes[(r // b) * b + c // b]
            k = bin(m).count("1")
            if k < best_n:
                best, best_mask, best_n = i, m, k
                if k <= 1:
                    break
        if best < 0:
            count += 1
            if out is not None:
                out.append(g.copy())
            return count >= limit
        r, c = empties[best]
        digits = [d for d in range(1, n + 1) if best_mask >> d & 1]
        if rng is not None:
            rng.shuffle(digits)
        bx = (r // b) * b + c // b
        for d in digits:
            bit = 1 << d
            g[r, c] = d
            rows[r] &= ~bit
            cols[c] &= ~bit
            boxes[bx] &= ~bit
            stop = search()
            rows[r] |= bit
            cols[c] |= bit
            boxes[bx] |= bit
            g[r, c] = 0
            if stop:
                return True
        return False

    search()
    return count


def solve(grid: np.ndarray) -> np.ndarray | None:
    """One completion of `grid`, or None when it has none."""
    found: list[np.ndarray] = []
    count_solutions(grid, limit=1, out=found)
    return found[0] if found else None


def violations(grid: np.ndarray, givens: np.ndarray | None = None) -> int:
    """Constraint violations of a (possibly partial) grid: each repeated digit in a row, column or
    box counts once per extra occurrence; each blank cell counts once; each changed given counts once.
    A valid completed solution consistent with the givens scores 0."""
    g = np.asarray(grid, dtype=np.int64)
    n = g.shape[0]
    b = box_size(n)
    bad = int((g <= 0).sum() + (g > n).sum())
    units = [g[r, :] for r in range(n)] + [g[:, c] for c in range(n)]
    units += [g[r:r + b, c:c + b].reshape(-1) for r in range(0, n, b) for c in range(0, n, b)]
    for u in units:
        vals = u[(u >= 1) & (u <= n)]
        bad += int(len(vals) - len(np.unique(vals)))
    if givens is not None:
        gv = np.asarray(givens, dtype=np.int64)
        bad += int(((gv > 0) & (g != gv)).sum())
    return bad


def random_full_grid(n: int, rng: np.random.Generator) -> np.ndarray:
    """A uniformly shuffled valid full grid: randomised backtracking from empty, then a shuffle."""
    found: list[np.ndarray] = []
    count_solutions(np.zeros((n, n), dtype=np.int64), limit=1, rng=rng, out=found)
    return shuffle_grid(found[0], rng)


def shuffle_grid(grid: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Upstream's validity-preserving augmentation: permute digits, bands, stacks, rows inside
    bands, columns inside stacks, and transpose with probability 1/2. Applied to puzzle and
    solution alike it keeps a puzzle's solution its solution."""
    return apply_shuffle(grid, make_shuffle(grid.shape[0], rng))


def make_shuffle(n: int, rng: np.random.Generator) -> dict[str, np.ndarray | bool]:
    b = box_size(n)
    digit_map = np.concatenate([[0], rng.permutation(n) + 1])
    bands = rng.permutation(b)
    stacks = rng.permutation(b)
    row_order = np.concatenate([band * b + rng.permutation(b) for band in bands])
    col_order = np.concatenate([stack * b + rng.permutation(b) for stack in stacks])
    return {"digits": digit_map, "rows": row_order, "cols": col_order, "transpose": bool(rng.random() < 0.5)}


def apply_shuffle(grid: np.ndarray, sh: dict[str, np.ndarray | bool]) -> np.ndarray:
    g = np.asarray(grid)
    if sh["transpose"]:
        g = g.T
    g = g[np.asarray(sh["rows"])][:, np.asarray(sh["cols"])]
    return np.asarray(sh["digits"])[g]


_ALL_4x4: np.ndarray | None = None


def all_solutions_4x4() -> np.ndarray:
    """Every valid 4x4 grid (288), found once by exhaustive backtracking: [288, 16]."""
    global _ALL_4x4
    if _ALL_4x4 is None:
        found: list[np.ndarray] = []
        count_solutions(np.zeros((4, 4), dtype=np.int64), limit=10_000, out=found)
        _ALL_4x4 = np.stack([g.reshape(-1) for g in found])
    return _ALL_4x4


def is_unique(puzzle: np.ndarray) -> bool:
    """Exactly one completion. 4x4 checks against the table of all grids; larger boards search."""
    if puzzle.shape[0] == 4:
        flat = puzzle.reshape(-1)
        given = flat > 0
        return int((all_solutions_4x4()[:, given] == flat[given]).all(1).sum()) == 1
    return count_solutions(puzzle, limit=2) == 1


def make_puzzle(solution: np.ndarray, blanks: int, rng: np.random.Generator,
                unique: bool = True) -> np.ndarray | None:
    """Blank `blanks` cells of `solution` in random order, skipping cells whose removal would allow
    a second solution (when `unique`). None when no such set of blanks was found."""
    n = solution.shape[0]
    puzzle = solution.copy()
    removed = 0
    for idx in rng.permutation(n * n):
        if removed == blanks:
            break
        r, c = divmod(int(idx), n)
        keep = puzzle[r, c]
        puzzle[r, c] = 0
        if unique and not is_unique(puzzle):
            puzzle[r, c] = keep
            continue
        removed += 1
    return puzzle if removed == blanks else None


def generate(n: int, count: int, blanks: tuple[int, int], rng: np.random.Generator, unique: bool = True,
             exclude: set[bytes] | None = None, shuffles_per_grid: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """`count` distinct (puzzle, solution) pairs as digit grids [count, n, n], blanks drawn
    uniformly from the inclusive range, none whose puzzle is in `exclude` (bytes of the grid).
    A backtracked grid serves `shuffles_per_grid` puzzles, each through its own random shuffle
    (backtracking dominates the cost; a shuffled valid grid is as random as a new one)."""
    seen = set(exclude or ())
    puzzles, solutions = [], []
    lo, hi = blanks
    base = random_full_grid(n, rng)
    made = 0
    while len(puzzles) < count:
        if made % shuffles_per_grid == 0:
            base = random_full_grid(n, rng)
        made += 1
        sol = shuffle_grid(base, rng)
        k = int(rng.integers(lo, hi + 1))
        p = make_puzzle(sol, k, rng, unique=unique)
        if p is None:
            continue
        key = p.astype(np.int8).tobytes()
        if key in seen:
            continue
        seen.add(key)
        puzzles.append(p)
        solutions.append(sol)
    return np.stack(puzzles), np.stack(solutions)


def parse_grid(text: str, n: int | None = None) -> np.ndarray | None:
    """Find a Sudoku grid in text: consecutive lines of n cells (digits 1..n; '.', '0' or '_' for a
    blank; spaces and '|' ignored) for n in (4, 9). Separator lines ('---', '+-+', '===') are
    skipped; any other line ends a candidate grid and is otherwise ignored. Returns the first grid
    found, or None."""
    rows: list[list[int]] = []
    sizes = (n,) if n else (9, 4)
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and set(stripped) <= set("-+=| \t"):
            continue
        cells = [ch for ch in line if ch not in " \t|"]
        ok = bool(cells) and all(ch.isdigit() or ch in "._" for ch in cells)
        row = [int(ch) if ch.isdigit() else 0 for ch in cells] if ok else None
        if row is not None and rows and len(row) == len(rows[0]):
            rows.append(row)
        else:
            rows = [row] if row is not None else []
        if rows and len(rows) == len(rows[0]) and len(rows) in sizes and max(max(r) for r in rows) <= len(rows):
            return np.array(rows, dtype=np.int64)
    return None
