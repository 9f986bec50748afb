"""The runner holds plugins to quota, deadline and convergence, and isolates failures."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sage_runtime.plugin.contract import IRPPlugin, PluginInputs
from sage_runtime.plugin.runner import StepCost, run_plugin

FAR = 1 << 62


class Halver(IRPPlugin):
    """x <- x/2 toward 0; energy |x|. Converges when steps stop changing E by more than eps."""

    name = "halver"
    halt_eps = 1e-3

    def __init__(self, fail_at=None, nan_at=None):
        self.fail_at, self.nan_at = fail_at, nan_at

    def sample_inputs(self, seed):
        return PluginInputs(tick=seed)

    def init_state(self, inputs):
        return {"x": torch.tensor(float(3 * inputs.tick + 1)), "i": 0}

    def step(self, s):
        if self.fail_at is not None and s["i"] + 1 == self.fail_at:
            raise RuntimeError("boom")
        x = s["x"] / 2 if self.nan_at != s["i"] + 1 else torch.tensor(math.nan)
        return {"x": x, "i": s["i"] + 1}

    def energy(self, s):
        return float(s["x"].abs())

    def outputs(self, s):
        return {"x": s["x"]}


class FakeClock:
    """Each call advances time; a step costs `step_ns`."""

    def __init__(self, step_ns):
        self.t, self.step_ns = 0, step_ns

    def __call__(self):
        self.t += self.step_ns // 2
        return self.t


def test_converges_with_default_rule_and_counts_steps():
    res = run_plugin(Halver(), PluginInputs(tick=3), atp_ms=1e9, deadline_ns=FAR, cost=StepCost())
    assert res.halt == "converged" and res.error is None
    assert res.steps == len(res.energies) - 1
    assert all(b < a for a, b in zip(res.energies, res.energies[1:]))


def test_oscillating_energy_does_not_halt_early():
    class Osc(Halver):
        def energy(self, s):
            return float(s["i"] % 2)
    p = Osc()
    p.max_steps = 20
    res = run_plugin(p, PluginInputs(), atp_ms=1e9, deadline_ns=FAR, cost=StepCost())
    assert res.halt == "max_steps" and res.steps == 20


@settings(max_examples=200, deadline=None)
@given(atp=st.floats(0, 50), step_ms=st.floats(0.1, 5))
def test_quota_is_atp_over_measured_step_cost(atp, step_ms):
    cost = StepCost(step_ms, alpha=0.0)
    res = run_plugin(Halver(), PluginInputs(tick=1000), atp_ms=atp, deadline_ns=FAR, cost=cost)
    assert res.steps <= res.quota
    expected = int(atp / step_ms)
    if expected == 0 and atp >= 0.5 * step_ms:
        expected = 1
    assert res.quota == min(expected, Halver.max_steps)
    if res.halt == "quota":
        assert res.steps == res.quota


@settings(max_examples=100, deadline=None)
@given(deadline_steps=st.integers(0, 30))
def test_deadline_stops_between_steps(deadline_steps):
    clock = FakeClock(step_ns=1_000_000)
    cost = StepCost(1.0, alpha=0.0)
    deadline = clock.t + deadline_steps * 1_000_000
    res = run_plugin(Halver(), PluginInputs(tick=10**6), atp_ms=1e9, deadline_ns=deadline, cost=cost, clock_ns=clock)
    assert res.halt in ("deadline", "converged")
    # It never starts a step that it predicts would end past the deadline (beyond the first).
    assert res.steps <= max(deadline_steps, 1)


@pytest.mark.parametrize("plugin", [Halver(fail_at=3), Halver(nan_at=2)])
def test_raise_and_nan_are_isolated_as_error(plugin):
    res = run_plugin(plugin, PluginInputs(), atp_ms=1e9, deadline_ns=FAR, cost=StepCost())
    assert res.halt == "error" and res.error and res.outputs == {}


def test_none_state_means_nothing_to_do():
    class Idle(Halver):
        def init_state(self, inputs):
            return None
    res = run_plugin(Idle(), PluginInputs(), atp_ms=10, deadline_ns=FAR, cost=StepCost())
    assert res.steps == 0 and res.halt == "converged"


def test_conformance_catches_an_input_blind_plugin():
    from sage_runtime.conformance import check_plugin

    class Blind(Halver):
        def init_state(self, inputs):
            return {"x": torch.tensor(1.0), "i": 0}
    check_plugin(Halver)
    with pytest.raises(AssertionError, match="ignores its input"):
        check_plugin(Blind)


def test_halt_is_handed_the_state_after_the_last_step():
    class StopAtTwo(Halver):
        seen = []

        def halt(self, state, history):
            self.seen.append((state["i"], len(history)))
            return "converged" if state["i"] == 2 else None
    p = StopAtTwo()
    res = run_plugin(p, PluginInputs(tick=5), atp_ms=1e9, deadline_ns=FAR, cost=StepCost())
    assert res.halt == "converged" and res.steps == 2
    assert p.seen == [(1, 2), (2, 3)]  # the state after step i, with the i+1 energies so far


def test_public_names_come_from_one_module():
    import sage_runtime.plugin as api
    from sage_runtime.plugin.contract import IRPPlugin as Base
    from sage_runtime.records import Frame, RunResult

    assert api.Plugin is api.IRPPlugin is Base
    assert api.Frame is Frame and api.RunResult is RunResult
    for name in ("PluginInputs", "PluginContext", "PluginOptions", "InputQueue", "load_plugin_class"):
        assert name in api.__all__ and hasattr(api, name)


class Unnamed(IRPPlugin):
    def init_state(self, inputs):
        return 0

    def step(self, s):
        return s

    def energy(self, s):
        return 0.0

    def outputs(self, s):
        return {}


class Halver2(Halver):
    """Inherits Halver's name: loading both is a clash."""


def test_loading_refuses_a_plugin_without_a_name():
    from sage_runtime.errors import PluginLoadError
    from sage_runtime.plugin.registry import load_plugin_class

    with pytest.raises(PluginLoadError, match=r"Unnamed.*has no `name`"):
        load_plugin_class("tests.test_irp_runner:Unnamed")


def test_loading_refuses_two_plugins_with_one_name_naming_both_classes():
    from sage_runtime.errors import PluginLoadError
    from sage_runtime.plugin.registry import load_plugin_classes

    with pytest.raises(PluginLoadError, match=r"test_irp_runner\.Halver and .*test_irp_runner\.Halver2 .*'halver'"):
        load_plugin_classes(["tests.test_irp_runner:Halver", "tests.test_irp_runner:Halver2"])
    assert [c.name for c in load_plugin_classes(["tests.test_irp_runner:Halver"])] == ["halver"]


def test_unknown_plugin_name_and_bad_option_are_config_errors_naming_the_key():
    from sage_runtime.errors import ConfigError, PluginLoadError
    from sage_runtime.plugin.registry import check_plugins

    with pytest.raises(PluginLoadError, match="no plugin named 'vison'"):
        check_plugins(["vison"], {})
    with pytest.raises(ConfigError, match=r"plugins\.options\.echo\.output_kbb: unknown key"):
        check_plugins(["tests.plugins_for_tests:Echo"], {"echo": {"output_kbb": 1}})
    with pytest.raises(ConfigError, match=r"plugins\.options\.echo\.output_kb: .*integer"):
        check_plugins(["tests.plugins_for_tests:Echo"], {"echo": {"output_kb": "lots"}})
    with pytest.raises(ConfigError, match=r"plugins\.options\.ecko: no enabled plugin"):
        check_plugins(["tests.plugins_for_tests:Echo"], {"ecko": {}})
    # A plugin without Options takes none: any key is unknown.
    with pytest.raises(ConfigError, match=r"plugins\.options\.halver\.x: unknown key"):
        check_plugins(["tests.test_irp_runner:Halver"], {"halver": {"x": 1}})
    opts = check_plugins(["tests.plugins_for_tests:Echo"], {"echo": {"output_kb": 3}})
    assert opts["echo"].output_kb == 3


def test_conformance_takes_sample_inputs_when_the_plugin_has_none():
    from sage_runtime.conformance import check_plugin

    class NoSamples(Halver):
        def sample_inputs(self, seed):
            return None
    with pytest.raises(AssertionError, match="sample_inputs returns None"):
        check_plugin(NoSamples)
    check_plugin(NoSamples, sample_inputs=lambda seed: PluginInputs(tick=seed))


class NoSamples(Halver):
    """A plugin without sample inputs; the conformance command takes them from --inputs."""

    name = "nosamples"

    def sample_inputs(self, seed):
        return None


def halver_inputs(seed):
    return PluginInputs(tick=seed)


def test_conformance_command_takes_inputs_for_a_plugin_without_its_own():
    import subprocess
    import sys

    from tests.harness import REPO

    def conformance(*args):
        return subprocess.run([sys.executable, "-m", "sage_runtime.conformance", *args], capture_output=True,
                              text=True, timeout=120, cwd=REPO)
    missing = conformance("tests.test_irp_runner:NoSamples")
    assert missing.returncode == 1 and "sample_inputs returns None" in missing.stderr, missing.stderr
    given = conformance("tests.test_irp_runner:NoSamples", "--inputs", "tests.test_irp_runner:halver_inputs")
    assert given.returncode == 0 and "nosamples passed" in given.stdout, given.stderr
    absent = conformance("tests.test_irp_runner:Nope")
    assert absent.returncode == 2 and "cannot load" in absent.stderr
