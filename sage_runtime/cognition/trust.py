"""Trust ledger: how far the daemon relies on each plugin, sensor and expert, every value in [0, 1].

Pure logic: no I/O, no clock (sensor updates take `now`). Unknown names score the prior (0.5).
Updates are rate- or time-constant-based, never "per tick", so trust does not depend on how fast
the loop runs (the research orchestrator's did). Persist with statefile:

    statefile.write_atomic(state_dir / "trust.json", ledger.snapshot(), kind="trust")
    ledger.restore(statefile.read(state_dir / "trust.json", kind="trust"))

Plugins: each run scores quality = w_monotonic * (share of steps that did not raise energy)
  + w_converged * halt score (converged 1, quota/deadline/max_steps lower)
  + w_efficiency * energy reduction per ATP relative to the plugin's own running average
and trust moves toward it at plugin_rate. Errors, timeouts (hung runs) and input-sensitivity
failures (output that ignores the input: the HRM collapse) multiply trust down by a penalty.
A plugin below pause_below is reported by paused_plugins() for the circuit breaker; relax()
drifts every value back toward the prior, so a paused plugin gets its half-open retry later.
Sensors: quality = freshness * delivery * (agreement_floor + (1 - agreement_floor) * agreement),
  freshness falling once a frame is older than stale_periods expected periods, delivery the share
  of expected frames that arrived, agreement (e.g. 1 - SNARC conflict) with the other sensors;
  trust follows it with time constant sensor_tau_s.
Experts: per context, EMA toward the observed quality at expert_rate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Annotated, Any, Mapping, Sequence

from pydantic import Field, model_validator
from pydantic.dataclasses import dataclass as pydantic_dataclass

from sage_runtime.params import PARAMS

SCHEMA = "sage.trust"
SCHEMA_VERSION = 1
ERROR_KINDS = ("error", "timeout", "insensitive")


def _unit(name: str, value: float) -> None:
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise ValueError(f"{name} must be in [0, 1]")


Unit = Annotated[float, Field(ge=0, le=1)]


@pydantic_dataclass(frozen=True, config=PARAMS)
class TrustParams:
    prior: Unit = 0.5
    plugin_rate: Unit = 0.1
    w_monotonic: Unit = 0.4
    w_converged: Unit = 0.3
    w_efficiency: Unit = 0.3
    halt_scores: dict[str, Unit] = field(default_factory=lambda: {
        "converged": 1.0, "quota": 0.6, "max_steps": 0.4, "deadline": 0.3})
    penalties: dict[str, Unit] = field(default_factory=lambda: {"error": 0.3, "timeout": 0.3, "insensitive": 0.5})
    efficiency_rate: Unit = 0.1
    monotonic_tol: float = Field(1e-6, ge=0)
    pause_below: Unit = 0.2
    relax_half_life_s: float = Field(600.0, gt=0)
    sensor_tau_s: float = Field(2.0, gt=0)
    stale_periods: float = Field(3.0, gt=0)
    agreement_floor: Unit = 0.3
    expert_rate: Unit = 0.1
    max_contexts: int = Field(1024, ge=1)
    max_experts_per_context: int = Field(1024, ge=1)

    @model_validator(mode="after")
    def _consistent(self) -> "TrustParams":
        if abs(self.w_monotonic + self.w_converged + self.w_efficiency - 1.0) > 1e-6:
            raise ValueError("w_monotonic + w_converged + w_efficiency must sum to 1")
        missing = [key for key in ERROR_KINDS if key not in self.penalties]
        if missing:
            raise ValueError(f"penalties.{missing[0]} is missing")
        return self


@dataclass
class _Plugin:
    trust: float
    runs: int = 0
    errors: int = 0
    consecutive_errors: int = 0
    efficiency_avg: float = 0.0


@dataclass
class _Sensor:
    trust: float
    updates: int = 0
    last: float | None = None


def _clamp(x: float) -> float:
    return min(max(x, 0.0), 1.0)


def _restored(x: Any) -> float:
    value = float(x)
    if not math.isfinite(value):
        raise ValueError(f"non-finite value {x!r}")
    return _clamp(value)


def _reduction_per_atp(energies: Sequence[float], atp_spent: float) -> float | None:
    """Share of the starting energy removed, per ATP; None with fewer than two energies."""
    e = [float(v) for v in energies if math.isfinite(v)]
    if len(e) < 2:
        return None
    return max(e[0] - e[-1], 0.0) / (abs(e[0]) + 1e-9) / max(atp_spent, 1e-3)


class TrustLedger:
    def __init__(self, params: TrustParams | None = None) -> None:
        self.params = params or TrustParams()
        self._plugins: dict[str, _Plugin] = {}
        self._sensors: dict[str, _Sensor] = {}
        self._experts: dict[str, dict[str, float]] = {}

    # ------------------------------------------------------------------ plugins

    def plugin(self, name: str) -> float:
        entry = self._plugins.get(name)
        return self.params.prior if entry is None else entry.trust

    def _plugin(self, name: str) -> _Plugin:
        return self._plugins.setdefault(name, _Plugin(self.params.prior))

    def run_quality(self, name: str, energies: Sequence[float], halt: str, atp_spent: float) -> float:
        """The [0, 1] quality of one run (what record_plugin_run moves trust toward)."""
        p = self.params
        e = [float(v) for v in energies if math.isfinite(v)]
        steps = list(zip(e, e[1:]))
        if steps:
            monotonic = sum(b <= a + p.monotonic_tol * max(abs(a), 1.0) for a, b in steps) / len(steps)
        else:
            monotonic = 1.0
        converged = p.halt_scores.get(halt, 0.0)
        per_atp = _reduction_per_atp(e, atp_spent) or 0.0
        avg = self._plugins[name].efficiency_avg if name in self._plugins else 0.0
        efficiency = 0.5 if per_atp == avg == 0.0 else per_atp / (per_atp + avg) if avg > 0 else 1.0
        return _clamp(p.w_monotonic * monotonic + p.w_converged * converged + p.w_efficiency * efficiency)

    def record_plugin_run(self, name: str, energies: Sequence[float], halt: str, atp_spent: float) -> float:
        """One finished run (RunResult.energies, .halt, .atp_spent); halt "error" counts as an
        error. Returns the new trust."""
        if halt == "error":
            return self.record_plugin_error(name, "error")
        quality = self.run_quality(name, energies, halt, atp_spent)
        entry = self._plugin(name)
        p = self.params
        per_atp = _reduction_per_atp(energies, atp_spent)
        if per_atp is not None:
            rate = max(p.efficiency_rate, 1.0 / (entry.runs + 1))
            entry.efficiency_avg += rate * (per_atp - entry.efficiency_avg)
        entry.trust = _clamp(entry.trust + p.plugin_rate * (quality - entry.trust))
        entry.runs += 1
        entry.consecutive_errors = 0
        return entry.trust

    def record_plugin_error(self, name: str, kind: str = "error") -> float:
        """An exception or NaN energy ("error"), a hung/abandoned run ("timeout"), or a failed
        input-sensitivity check ("insensitive"). Returns the new trust."""
        if kind not in ERROR_KINDS:
            raise ValueError(f"error kind must be one of {', '.join(ERROR_KINDS)}")
        entry = self._plugin(name)
        entry.trust = _clamp(entry.trust * (1.0 - self.params.penalties[kind]))
        entry.runs += 1
        entry.errors += 1
        entry.consecutive_errors += 1
        return entry.trust

    def plugin_paused(self, name: str) -> bool:
        """True while the plugin's trust is below pause_below: the circuit breaker keeps it off."""
        return self.plugin(name) < self.params.pause_below

    def paused_plugins(self) -> list[str]:
        return sorted(n for n, e in self._plugins.items() if e.trust < self.params.pause_below)

    # ------------------------------------------------------------------ sensors

    def sensor(self, name: str) -> float:
        entry = self._sensors.get(name)
        return self.params.prior if entry is None else entry.trust

    def sensor_quality(self, age_s: float, expected_period_s: float, agreement: float = 1.0,
                       received: int = 1, dropped: int = 0) -> float:
        p = self.params
        _unit("agreement", agreement)
        periods = max(age_s, 0.0) / max(expected_period_s, 1e-6)
        freshness = math.exp(-max(periods - p.stale_periods, 0.0) / p.stale_periods)
        delivery = received / (received + dropped) if received + dropped > 0 else 1.0
        return _clamp(freshness * delivery * (p.agreement_floor + (1 - p.agreement_floor) * agreement))

    def record_sensor(self, name: str, now: float, age_s: float, expected_period_s: float,
                      agreement: float = 1.0, received: int = 1, dropped: int = 0) -> float:
        """Call for every known sensor, each tick or on any schedule (the update is scaled by the
        time since the last one). age_s: since its newest frame; expected_period_s: 1 / its
        declared rate (or its observed mean period); agreement in [0, 1], e.g. 1 - its SNARC
        conflict; received / dropped: frames since the last call (drops from sequence gaps)."""
        quality = self.sensor_quality(age_s, expected_period_s, agreement, received, dropped)
        entry = self._sensors.setdefault(name, _Sensor(self.params.prior))
        if entry.last is not None:
            step = 1.0 - math.exp(-max(now - entry.last, 0.0) / self.params.sensor_tau_s)
            entry.trust = _clamp(entry.trust + step * (quality - entry.trust))
        entry.last = now
        entry.updates += 1
        return entry.trust

    # ------------------------------------------------------------------ experts

    def expert(self, context: str, expert_id: str) -> float:
        return self._experts.get(context, {}).get(expert_id, self.params.prior)

    def experts(self, context: str) -> dict[str, float]:
        return dict(self._experts.get(context, {}))

    def update_expert(self, context: str, expert_id: str, quality: float) -> float:
        """Move an expert's trust in `context` toward the observed quality in [0, 1]."""
        _unit("quality", quality)
        p = self.params
        table = self._experts.pop(context, None)  # re-inserted last: eviction is least recently updated
        if table is None:
            if len(self._experts) >= p.max_contexts:
                del self._experts[next(iter(self._experts))]
            table = {}
        self._experts[context] = table
        current = table.pop(expert_id, p.prior)
        if len(table) >= p.max_experts_per_context:
            del table[next(iter(table))]
        table[expert_id] = _clamp(current + p.expert_rate * (quality - current))  # most recent last
        return table[expert_id]

    # ------------------------------------------------------------------ time, persistence

    def relax(self, dt_s: float) -> None:
        """Drift every value toward the prior with relax_half_life_s: old evidence fades, and a
        paused plugin eventually rises above pause_below for a retry."""
        if dt_s <= 0:
            return
        keep = 0.5 ** (dt_s / self.params.relax_half_life_s)
        prior = self.params.prior
        for entry in (*self._plugins.values(), *self._sensors.values()):
            entry.trust = prior + (entry.trust - prior) * keep
        for table in self._experts.values():
            for key, value in table.items():
                table[key] = prior + (value - prior) * keep

    def snapshot(self) -> dict[str, Any]:
        """JSON-able state with a schema version (sensor timestamps are not kept: they are
        monotonic-clock values that mean nothing after a restart)."""
        return {
            "schema": SCHEMA, "version": SCHEMA_VERSION,
            "plugins": {n: {"trust": e.trust, "runs": e.runs, "errors": e.errors,
                            "consecutive_errors": e.consecutive_errors, "efficiency_avg": e.efficiency_avg}
                        for n, e in self._plugins.items()},
            "sensors": {n: {"trust": e.trust, "updates": e.updates} for n, e in self._sensors.items()},
            "experts": {c: dict(t) for c, t in self._experts.items()},
        }

    def restore(self, data: Mapping[str, Any]) -> None:
        """Replace the state with a snapshot(); values are clamped to [0, 1]. Raises ValueError
        for another schema or version, leaving the current state untouched."""
        if data.get("schema") != SCHEMA or data.get("version") != SCHEMA_VERSION:
            raise ValueError(f"not a {SCHEMA} v{SCHEMA_VERSION} snapshot "
                             f"(schema {data.get('schema')!r}, version {data.get('version')!r})")
        try:
            plugins = {str(n): _Plugin(_restored(e["trust"]), int(e.get("runs", 0)), int(e.get("errors", 0)),
                                       int(e.get("consecutive_errors", 0)),
                                       max(float(e.get("efficiency_avg", 0.0)), 0.0))
                       for n, e in data.get("plugins", {}).items()}
            sensors = {str(n): _Sensor(_restored(e["trust"]), int(e.get("updates", 0)))
                       for n, e in data.get("sensors", {}).items()}
            experts = {str(c): {str(k): _restored(v) for k, v in t.items()}
                       for c, t in data.get("experts", {}).items()}
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"malformed trust snapshot: {exc!r}") from None
        self._plugins, self._sensors, self._experts = plugins, sensors, experts

    def status(self) -> dict[str, Any]:
        """For `sagectl trust`."""
        r = 4
        return {
            "plugins": {n: {"trust": round(e.trust, r), "runs": e.runs, "errors": e.errors,
                            "paused": e.trust < self.params.pause_below} for n, e in sorted(self._plugins.items())},
            "sensors": {n: round(e.trust, r) for n, e in sorted(self._sensors.items())},
            "experts": {c: {k: round(v, r) for k, v in sorted(t.items())} for c, t in sorted(self._experts.items())},
        }
