"""Generator, shuffles, solver-verifier, parser and the de-duplicated split."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sage_plugins.reasoning import sudoku
from sage_plugins.reasoning.data import build_splits, build_test_split, write_upstream_layout


@pytest.mark.parametrize("n", [4, 9])
def test_full_grids_are_valid_and_shuffles_preserve_validity(n: int) -> None:
    rng = np.random.default_rng(0)
    grids = [sudoku.random_full_grid(n, rng) for _ in range(5)]
    assert all(sudoku.violations(g) == 0 for g in grids)
    assert len({g.tobytes() for g in grids}) == 5
    for g in grids:
        sh = sudoku.make_shuffle(n, rng)
        assert sudoku.violations(sudoku.apply_shuffle(g, sh)) == 0


def test_shuffle_maps_puzzle_and_solution_together() -> None:
    rng = np.random.default_rng(1)
    p, s = sudoku.generate(4, 20, (6, 10), rng)
    for puzzle, sol in zip(p, s):
        sh = sudoku.make_shuffle(4, rng)
        sp, ss = sudoku.apply_shuffle(puzzle, sh), sudoku.apply_shuffle(sol, sh)
        assert np.array_equal(sudoku.solve(sp), ss)


@pytest.mark.parametrize("n,blanks", [(4, (4, 11)), (9, (30, 40))])
def test_generated_puzzles_have_the_label_as_unique_solution(n: int, blanks: tuple[int, int]) -> None:
    count = 40 if n == 4 else 2
    p, s = sudoku.generate(n, count, blanks, np.random.default_rng(2))
    k = (p == 0).reshape(count, -1).sum(-1)
    assert k.min() >= blanks[0] and k.max() <= blanks[1]
    for puzzle, sol in zip(p, s):
        assert sudoku.count_solutions(puzzle, limit=2) == 1
        assert np.array_equal(sudoku.solve(puzzle), sol)
        assert sudoku.violations(sol, puzzle) == 0
        assert np.all((puzzle == 0) | (puzzle == sol))


def test_all_4x4_grids() -> None:
    table = sudoku.all_solutions_4x4()
    assert table.shape == (288, 16) and len({r.tobytes() for r in table}) == 288
    assert all(sudoku.violations(r.reshape(4, 4)) == 0 for r in table)


def test_verifier_counts_each_kind_of_violation() -> None:
    sol = sudoku.solve(np.zeros((4, 4), dtype=np.int64))
    assert sudoku.violations(sol) == 0
    bad = sol.copy()
    bad[0, 0] = bad[0, 1]  # one duplicate in a row, a column and a box
    assert sudoku.violations(bad) == 3
    blank = sol.copy()
    blank[2, 2] = 0
    assert sudoku.violations(blank) == 1
    givens = np.zeros_like(sol)
    givens[1, 1] = sol[1, 1] % 4 + 1
    assert sudoku.violations(sol, givens) == 1
    assert sudoku.count_solutions(np.array([[1, 1, 0, 0]] + [[0] * 4] * 3)) == 0


def test_token_layout_is_upstreams() -> None:
    grid = np.array([[0, 1, 2, 3], [3, 2, 1, 0], [4, 0, 0, 4], [0] * 4])
    t = sudoku.to_tokens(grid)
    assert t.min() == sudoku.BLANK and t.max() == 5 and sudoku.vocab_size(4) == 6
    assert np.array_equal(sudoku.from_tokens(t, 4), grid)
    assert sudoku.vocab_size(9) == 11


def test_parse_grid_finds_the_board_in_text() -> None:
    text = "solve this please:\n1 2 | . 4\n. . | 3 .\n-----\n. . | . .\n4 . | . .\nthanks"
    g = sudoku.parse_grid(text)
    assert g is not None and g.shape == (4, 4) and g[0, 3] == 4 and g[1, 2] == 3 and g[3, 0] == 4
    nine = "\n".join(["53..7....", "6..195...", ".98....6.", "8...6...3", "4..8.3..1", "7...2...6",
                      ".6....28.", "...419..5", "....8..79"])
    assert sudoku.parse_grid("header\n" + nine).shape == (9, 9)
    assert sudoku.parse_grid("no grid here\n12\n34") is None


def test_splits_are_deduplicated_and_reproducible(tmp_path) -> None:
    train, test = build_splits(4, 400, 100, (4, 11), seed=3)
    train_keys = {r.tobytes() for r in train.inputs}
    assert len(train_keys) == 400 and not train_keys & {r.tobytes() for r in test.inputs}
    again = build_test_split(4, 100, (4, 11), seed=3)
    assert np.array_equal(again.inputs, test.inputs) and np.array_equal(again.labels, test.labels)
    assert np.array_equal(test.blanks, (test.inputs == sudoku.BLANK).sum(-1))
    write_upstream_layout(test, tmp_path)
    meta = json.loads((tmp_path / "dataset.json").read_text())
    assert meta["vocab_size"] == 6 and meta["seq_len"] == 16
    assert np.load(tmp_path / "all__inputs.npy").shape == (100, 16)
