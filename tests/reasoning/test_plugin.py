"""The `reasoning` IRP plugin through the real runner, with the shipped checkpoint."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sage_runtime.conformance import FAR_FUTURE_NS, check_plugin, make_context
from sage_runtime.plugin.contract import PluginInputs
from sage_runtime.plugin.runner import StepCost, run_plugin
from sage_runtime.records import Frame
from sage_runtime.plugin.registry import load_plugin_class

from sage_plugins.reasoning import ReasoningPlugin, sudoku
from sage_plugins.reasoning.data import build_test_split
from sage_plugins.reasoning.plugin import DEFAULT_CHECKPOINTS


@pytest.fixture(scope="module")
def plugin():
    torch.set_num_threads(1)
    p = ReasoningPlugin()
    p.setup(make_context(p))
    p.warmup()
    yield p
    p.close()


@pytest.fixture(scope="module")
def held_out():
    """300 held-out puzzles: the first 300 of the test split the checkpoint was measured on."""
    return build_test_split(4, 1000, (4, 11), seed=0).subset(np.arange(300))


def tensor_inputs(grid, seq: int = 0) -> PluginInputs:
    return PluginInputs(frames={"puzzle": Frame("puzzle", seq, seq, "tensor", torch.as_tensor(grid))})


def run(plugin, inputs, atp_ms=1e9, cost=None):
    return run_plugin(plugin, inputs, atp_ms=atp_ms, deadline_ns=FAR_FUTURE_NS, cost=cost or StepCost())


def test_registered_and_conformant() -> None:
    assert load_plugin_class("reasoning") is ReasoningPlugin
    assert DEFAULT_CHECKPOINTS[4].exists() and DEFAULT_CHECKPOINTS[4].stat().st_size < 2_000_000
    check_plugin(ReasoningPlugin)


def test_accepts_tensor_and_text_grids(plugin) -> None:
    grid = np.array([[1, 0, 0, 4], [0, 0, 1, 0], [0, 1, 0, 0], [4, 0, 0, 1]])
    ok = [torch.tensor(grid), torch.tensor(grid.reshape(-1), dtype=torch.int32), torch.tensor(grid[None])]
    for t in ok:
        assert plugin.accepts(Frame("s", 0, 0, "tensor", t))
    bad = [torch.tensor(grid, dtype=torch.float32), torch.zeros(5, 5, dtype=torch.int64), torch.full((4, 4), 7)]
    for t in bad:
        assert not plugin.accepts(Frame("s", 0, 0, "tensor", t))
    assert plugin.accepts(Frame("chat", 0, 0, "text", "please solve\n1..4\n..1.\n.1..\n4..1\nthanks"))
    assert not plugin.accepts(Frame("chat", 0, 0, "text", "hello there"))
    assert not plugin.accepts(Frame("ev", 0, 0, "event", {"type": "x"}))
    assert plugin.init_state(PluginInputs(frames={"chat": Frame("chat", 0, 0, "text", "no grid")})) is None


def test_text_and_tensor_inputs_give_the_same_answer(plugin, held_out) -> None:
    grid = sudoku.from_tokens(held_out.inputs[0], 4)
    text = "here is a puzzle:\n" + "\n".join("".join(str(v) if v else "." for v in row) for row in grid) + "\nok"
    a = run(plugin, tensor_inputs(grid))
    b = run(plugin, PluginInputs(frames={"chat": Frame("chat", 0, 0, "text", text)}))
    assert torch.equal(a.outputs["solution"], b.outputs["solution"]) and a.steps == b.steps
    assert sudoku.parse_grid(a.outputs["solution_text"]).tolist() == a.outputs["solution"].tolist()


def test_quota_of_one_runs_exactly_one_segment(plugin, held_out) -> None:
    grid = sudoku.from_tokens(held_out.inputs[1], 4)
    cost = StepCost(5.0, alpha=0.0)
    res = run(plugin, tensor_inputs(grid), atp_ms=5.0, cost=cost)
    assert res.steps == 1 and res.outputs["steps"] == 1 and len(res.energies) == 2 and res.energies[0] == 1.0
    if not res.outputs["finished"]:  # the cut-short puzzle waits at the head of the queue
        assert plugin.pending_input() == 1
        assert run(plugin, PluginInputs()).outputs["finished"]
    assert plugin.pending_input() == 0


def _hard_puzzle(plugin, held_out, min_steps: int = 3) -> np.ndarray:
    fresh = ReasoningPlugin()
    fresh.setup(make_context(fresh, {"resume": False}))
    for i in np.argsort(-held_out.blanks):
        grid = sudoku.from_tokens(held_out.inputs[i], 4)
        if run(fresh, tensor_inputs(grid)).steps >= min_steps:
            return grid
    pytest.skip("no held-out puzzle needs several segments")


def test_puzzles_that_arrive_together_are_each_solved_once_oldest_first(plugin, held_out) -> None:
    grids = [sudoku.from_tokens(held_out.inputs[i], 4) for i in range(3)]
    alone = [run(plugin, tensor_inputs(g)).outputs["solution"] for g in grids]
    frames = [Frame("puzzle", seq, 100 + seq, "tensor", torch.as_tensor(g)) for seq, g in enumerate(grids)]
    chat = Frame("chat", 0, 99, "text", "hello")  # not a puzzle: never queued
    together = PluginInputs(frames={"puzzle": frames[-1], "chat": chat}, backlog={"puzzle": frames})
    got = [run(plugin, together)]
    assert plugin.pending_input() == 2
    while plugin.pending_input():
        got.append(run(plugin, PluginInputs()))  # what the tick does for pending_input
    assert [(r.outputs["sensor"], r.outputs["seq"]) for r in got] == [("puzzle", 0), ("puzzle", 1), ("puzzle", 2)]
    assert [r.outputs["queued"] for r in got] == [2, 1, 0]
    for result, expected in zip(got, alone):
        assert torch.equal(result.outputs["solution"], expected)
    assert run(plugin, PluginInputs()).detail == "no input"  # the queue is empty


def test_pause_and_resume_through_the_runner_equals_one_run(held_out) -> None:
    single = ReasoningPlugin()
    single.setup(make_context(single, {"resume": False}))
    grid = _hard_puzzle(single, held_out)
    whole = run(single, tensor_inputs(grid))

    paused = ReasoningPlugin()
    paused.setup(make_context(paused))
    cost = StepCost(5.0, alpha=0.0)
    first = run(paused, tensor_inputs(grid, seq=1), atp_ms=5.0, cost=cost)  # quota: 1 segment
    assert first.halt == "quota" and first.outputs["halt_detail"] == "paused" and not first.outputs["finished"]
    assert paused.pending_input() == 1  # back at the head of the queue: the tick runs the plugin again
    second = run(paused, PluginInputs())  # what the tick does for pending_input: continues the carry
    assert (second.outputs["sensor"], second.outputs["seq"]) == ("puzzle", 1)
    assert first.steps + second.steps == whole.steps and paused.pending_input() == 0
    for key in ("solution", "steps", "halt_detail", "confidence", "verified_violations", "energy_trace"):
        a, b = whole.outputs[key], second.outputs[key]
        assert (torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b), key
    assert second.halt == whole.halt and second.outputs["finished"]
    # Finished runs are not kept: the next request for it starts afresh.
    again = run(paused, tensor_inputs(grid, seq=3))
    assert again.steps == whole.steps


def test_pause_and_resume_at_plugin_level(plugin, held_out) -> None:
    """The state is self-contained: stepping it later (even after other work) gives the same result."""
    grid = sudoku.from_tokens(held_out.inputs[5], 4)
    state = plugin.fresh_state(grid[None])
    s1 = plugin.step(state)
    run(plugin, tensor_inputs(sudoku.from_tokens(held_out.inputs[6], 4)))  # unrelated work in between
    s2_later = plugin.step(s1)
    s2_direct = plugin.step(plugin.step(plugin.fresh_state(grid[None])))
    assert torch.equal(s2_later.carry.z_H, s2_direct.carry.z_H) and torch.equal(s2_later.pred, s2_direct.pred)
    assert s1.carry.z_H.grad_fn is None


def test_halted_rows_stay_frozen_while_others_continue(plugin, held_out) -> None:
    grids = np.stack([sudoku.from_tokens(t, 4) for t in held_out.inputs[:24]])
    state = plugin.fresh_state(grids)
    snapshots = []
    for _ in range(8):
        if bool(state.halted.all()):
            break
        prev = state
        state = plugin.project(plugin.step(state))
        frozen = prev.halted
        for name in ("pred", "q_halt", "steps", "token_conf"):
            assert torch.equal(getattr(prev, name)[frozen], getattr(state, name)[frozen]), name
        assert torch.equal(prev.carry.z_H[frozen], state.carry.z_H[frozen])
        active = ~prev.halted
        assert torch.all(state.steps[active] == prev.steps[active] + 1)
        snapshots.append(int(frozen.sum()))
    assert snapshots[0] == 0 and max(snapshots) > 0 and len(set(state.steps.tolist())) > 1
    # Batched rows give what each puzzle gives alone.
    res = run(plugin, tensor_inputs(grids))
    for i in (0, 7, 23):
        alone = run(plugin, tensor_inputs(grids[i]))
        assert torch.equal(res.outputs["solution"][i], alone.outputs["solution"])
        assert res.outputs["steps"][i] == alone.outputs["steps"]


def test_energy_is_the_halt_head_and_violations_are_separate(plugin, held_out) -> None:
    grid = sudoku.from_tokens(held_out.inputs[2], 4)
    res = run(plugin, tensor_inputs(grid))
    assert res.energies[-1] == pytest.approx(1 - res.outputs["confidence"], abs=1e-6)
    assert res.outputs["verified_violations"] == sudoku.violations(res.outputs["solution"].numpy(), grid)
    clash = grid.copy()
    clash[0, :] = [1, 1, 2, 2]  # impossible givens: the verifier says so, the energy stays the model's own
    bad = run(plugin, tensor_inputs(clash))
    assert bad.outputs["verified_violations"] >= 2 and not bad.outputs["solved"]
    assert bad.energies[-1] == pytest.approx(1 - bad.outputs["confidence"], abs=1e-6)


def test_input_sensitivity_through_the_plugin(plugin, held_out) -> None:
    outs = [run(plugin, tensor_inputs(sudoku.from_tokens(t, 4))).outputs for t in held_out.inputs[:12]]
    assert len({o["solution"].numpy().tobytes() for o in outs}) >= 10
    assert len({round(o["confidence"], 6) for o in outs}) >= 6


def test_shipped_checkpoint_quality_and_halting(plugin, held_out) -> None:
    """Measured against ground truth on held-out puzzles, through the plugin's own halting."""
    grids = np.stack([sudoku.from_tokens(t, 4) for t in held_out.inputs])
    res = run(plugin, tensor_inputs(grids))
    sol = res.outputs["solution"].reshape(len(grids), -1).numpy() + 1
    exact = (sol == held_out.labels).all(-1)
    steps = np.array(res.outputs["steps"])
    assert exact.mean() >= 0.95, exact.mean()  # measured 0.988 on all 1,000 test puzzles
    assert steps.mean() <= 3.0  # measured 2.59
    assert np.array_equal(np.array(res.outputs["verified_violations"]) == 0, exact)  # unique solutions
    easy, hard = held_out.blanks <= 6, held_out.blanks >= 10
    assert steps[hard].mean() > steps[easy].mean()  # harder puzzles use more segments
    conf = np.array(res.outputs["confidence"])
    assert conf[exact].mean() > conf[~exact].mean() if (~exact).any() else True


def test_shipped_checkpoint_with_all_segments(held_out) -> None:
    """No early halt: every puzzle runs the trained M_max = 8 segments."""
    full = ReasoningPlugin()
    full.setup(make_context(full, {"tau": 2.0, "stable_steps": 0}))
    grids = np.stack([sudoku.from_tokens(t, 4) for t in held_out.inputs])
    res = run(full, tensor_inputs(grids))
    assert set(res.outputs["steps"]) == {8} and set(res.outputs["halt_detail"]) == {"max_steps"}
    exact = (res.outputs["solution"].reshape(len(grids), -1).numpy() + 1 == held_out.labels).all(-1)
    assert exact.mean() >= 0.93, exact.mean()  # measured 0.975 on all 1,000 test puzzles


def test_energy_falls_on_average_over_segments(plugin, held_out) -> None:
    grids = np.stack([sudoku.from_tokens(t, 4) for t in held_out.inputs[:64]])
    state = plugin.fresh_state(grids)
    means = []
    for _ in range(3):
        state = plugin.step(state)
        means.append(float((1 - torch.sigmoid(state.q_halt)).mean()))
    assert means[0] < 1.0 and means[-1] < means[0]
