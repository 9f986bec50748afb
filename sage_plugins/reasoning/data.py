"""Sudoku datasets as token arrays in upstream HRM's layout, with a de-duplicated train/test split.

A split holds inputs and labels [N, n*n] (tokens: PAD 0, blank 1, digit d -> d + 1), puzzle
identifiers [N] (all 0: one id for every row, as upstream Sudoku) and the number of blanks per row.
`write_upstream_layout` writes upstream's on-disk format (dataset.json plus .npy arrays).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sage_plugins.reasoning import sudoku


@dataclass
class SudokuSplit:
    n: int
    inputs: np.ndarray  # [N, n*n] int64 tokens
    labels: np.ndarray  # [N, n*n] int64 tokens
    blanks: np.ndarray  # [N]

    def __len__(self) -> int:
        return len(self.inputs)

    def batch(self, idx: np.ndarray | slice, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        """Model batch: inputs, labels (tokens) and puzzle identifiers (all 0) as int32 tensors."""
        inp = torch.from_numpy(self.inputs[idx]).to(device=device, dtype=torch.int32)
        lab = torch.from_numpy(self.labels[idx]).to(device=device, dtype=torch.int32)
        return {"inputs": inp, "labels": lab,
                "puzzle_identifiers": torch.zeros(inp.shape[0], dtype=torch.int32, device=device)}

    def subset(self, idx: np.ndarray) -> "SudokuSplit":
        return SudokuSplit(self.n, self.inputs[idx], self.labels[idx], self.blanks[idx])


def _split_from_grids(n: int, puzzles: np.ndarray, solutions: np.ndarray) -> SudokuSplit:
    inputs = np.stack([sudoku.to_tokens(p) for p in puzzles])
    labels = np.stack([sudoku.to_tokens(s) for s in solutions])
    return SudokuSplit(n, inputs, labels, (puzzles == 0).reshape(len(puzzles), -1).sum(-1))


def build_splits(n: int, train_size: int, test_size: int, blanks: tuple[int, int], seed: int = 0,
                 unique: bool = True, augmentations: int = 0) -> tuple[SudokuSplit, SudokuSplit]:
    """Test first, then train puzzles de-duplicated against test (and against each other).
    With `augmentations` = k > 0, train_size // (k + 1) puzzles are generated and each is joined
    by k validity-preserving shuffles of itself (upstream's recipe; cheap where solving is not)."""
    rng_test = np.random.default_rng([seed, 1])
    rng_train = np.random.default_rng([seed, 2])
    tp, ts = sudoku.generate(n, test_size, blanks, rng_test, unique=unique)
    exclude = {p.astype(np.int8).tobytes() for p in tp}
    base = train_size // (augmentations + 1) if augmentations else train_size
    rp, rs = sudoku.generate(n, base, blanks, rng_train, unique=unique, exclude=exclude)
    if augmentations:
        rp, rs = augment(rp, rs, train_size, rng_train, exclude)
    return _split_from_grids(n, rp, rs), _split_from_grids(n, tp, ts)


def augment(puzzles: np.ndarray, solutions: np.ndarray, total: int, rng: np.random.Generator,
            exclude: set[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """Extend to `total` distinct pairs with shuffled copies (puzzle and solution shuffled alike)."""
    seen = set(exclude) | {p.astype(np.int8).tobytes() for p in puzzles}
    out_p, out_s = list(puzzles), list(solutions)
    n = puzzles.shape[-1]
    while len(out_p) < total:
        i = int(rng.integers(len(puzzles)))
        sh = sudoku.make_shuffle(n, rng)
        p = sudoku.apply_shuffle(puzzles[i], sh)
        key = p.astype(np.int8).tobytes()
        if key in seen:
            continue
        seen.add(key)
        out_p.append(p)
        out_s.append(sudoku.apply_shuffle(solutions[i], sh))
    return np.stack(out_p), np.stack(out_s)


def build_test_split(n: int, test_size: int, blanks: tuple[int, int], seed: int = 0,
                     unique: bool = True) -> SudokuSplit:
    """The held-out split `build_splits` makes for the same arguments (same seed stream)."""
    tp, ts = sudoku.generate(n, test_size, blanks, np.random.default_rng([seed, 1]), unique=unique)
    return _split_from_grids(n, tp, ts)


def write_upstream_layout(split: SudokuSplit, directory: Path) -> None:
    """Write `split` as upstream's dataset.json + all__{inputs,labels,...}.npy (one example per
    puzzle, one puzzle per group, identifier 0)."""
    directory.mkdir(parents=True, exist_ok=True)
    count = len(split)
    meta = {"pad_id": 0, "ignore_label_id": 0, "blank_identifier_id": 0, "vocab_size": sudoku.vocab_size(split.n),
            "seq_len": split.n * split.n, "num_puzzle_identifiers": 1, "total_groups": count,
            "mean_puzzle_examples": 1.0, "sets": ["all"]}
    (directory / "dataset.json").write_text(json.dumps(meta))
    np.save(directory / "all__inputs.npy", split.inputs.astype(np.int32))
    np.save(directory / "all__labels.npy", split.labels.astype(np.int32))
    np.save(directory / "all__puzzle_identifiers.npy", np.zeros(count, dtype=np.int32))
    np.save(directory / "all__puzzle_indices.npy", np.arange(count + 1, dtype=np.int32))
    np.save(directory / "all__group_indices.npy", np.arange(count + 1, dtype=np.int32))
