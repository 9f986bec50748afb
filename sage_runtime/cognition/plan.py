"""Per-tick cognition: salience, metabolic state, ATP, fusion, plugin choice and allocation.

This is the glue between the pure-logic modules (salience, metabolic, atp, trust) and the
attention modules; it owns their state and runs on the compute thread only (the attention
modules are not thread-safe). One tick, in order:

1. recharge the ATP reservoir for the wall time since the last tick, derated by telemetry;
2. read events (a `critical` one is a CRISIS trigger) and rewards, score SNARC salience per sensor;
3. update the state machine (so a critical event moves the state in the tick it arrives);
4. fuse the newest frame of every fusable sensor under the goal query; the fused vector goes into
   the mailbox channel `context/fused` for plugins;
5. the trust-weighted selector ranks the plugins that have input for the fused context (trust is
   per state), the state's policy caps how many run, the allocator splits the tick's budget over
   them by the state's pattern, and every share is granted from the ledger (never more than is
   available); DREAM/REST consolidation gets its share the same way;
6. after each run, `settle` debits the measured compute and updates trust.

Status (cognition/status.py) and control commands (cognition/commands.py) read under the same
lock, so `sagectl` never sees half a tick; the trust ledger's file is cognition/trust_store.py.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sage_runtime.cognition.atp import AtpLedger
from sage_runtime.cognition.attention import (
    AtpAllocator, SensorFusion, TrustWeightedExpertSelector, UniformAllocator, build_features,
)
from sage_runtime.config import SageConfig
from sage_runtime.records import Frame, RunResult
from sage_runtime.mailbox import Lease, Mailbox
from sage_runtime.cognition.metabolic import MetabolicInputs, MetabolicMachine, MetabolicState
from sage_runtime.cognition.salience import SnarcScorer, featurize
from sage_runtime.telemetry import TelemetrySample, derate
from sage_runtime.cognition.trust import TrustLedger
from sage_runtime.cognition.sensors import SensorTracks
from sage_runtime.cognition.trust_store import TrustStore

log = logging.getLogger("sage.cognition")

#: The longest gap one tick's budget may make up for.
MAX_PACE_S = 1.0


@dataclass
class TickPlan:
    """What the orchestrator runs this tick. allocation and offline hold granted ATP; release
    `leases` after the tick."""

    state: str
    allocation: dict[str, float]
    order: list[str]
    salience: dict[str, float] = field(default_factory=dict)
    fused: torch.Tensor | None = None
    transitions: list[dict[str, Any]] = field(default_factory=list)
    offline: dict[str, float] = field(default_factory=dict)
    timings_ms: dict[str, float] = field(default_factory=dict)
    leases: list[Lease] = field(default_factory=list)


@dataclass(frozen=True)
class PluginView:
    """What cognition needs to know about one loaded plugin this tick."""

    cost_ms: float
    sensors: tuple[str, ...] = ()
    waiting_s: float = 0.0  # how long it has wanted to run without being scheduled
    requests: bool = False  # its work answers requests (the plugin's answers_requests)


class Cognition:
    def __init__(self, cfg: SageConfig, plugin_names: list[str], mailbox: Mailbox, state_dir: Path,
                 device: torch.device, telemetry: Callable[[], TelemetrySample] | None = None,
                 clock: Callable[[], float] = time.monotonic, wall_ns: Callable[[], int] = time.time_ns) -> None:
        self.cfg = cfg
        self.names = list(plugin_names)
        self.clock = clock
        self.wall_ns = wall_ns  # the stamp of state transitions (a replay's virtual time)
        self.telemetry = telemetry
        self.trust_store = TrustStore(state_dir)
        now = clock()
        self.machine = MetabolicMachine(cfg.metabolic, now)
        self.ledger = AtpLedger(cfg.atp)
        self.scorer = SnarcScorer(cfg.salience)
        self.trust = TrustLedger(cfg.trust)
        self.trust_store.restore(self.trust)
        a = cfg.attention
        self.fusion = SensorFusion(d=a.fusion_dim, seed=a.seed, device=device)
        n = max(len(self.names), 1)
        self.selector = TrustWeightedExpertSelector(d_model=a.fusion_dim, n_experts=n, top_k=n,
                                                    alpha=a.selector_alpha, seed=a.seed, device=device)
        self.allocator = UniformAllocator() if a.allocator == "uniform" else AtpAllocator(seed=a.seed, device=device)
        fused_channel = mailbox.register("context/fused", kind="focus", dtype=torch.float32,
                                         max_shape=(a.fusion_dim,), policy="latest")
        self.sensors = SensorTracks(self.fusion, self.trust, fused_channel, cfg.trust.stale_periods)
        self._lock = threading.Lock()
        self._last = now
        self._last_salient = now
        self._last_spend = now
        self._derate = 1.0
        self._snarc: dict[str, dict[str, float]] = {}
        self._granted: dict[str, float] = {}
        self._runs: collections.deque[tuple[float, bool]] = collections.deque()
        self._failed_runs = 0  # of those in _runs: a running count, not a sum over the window per tick
        self._critical: dict[str, Any] | None = None
        self._ticks = 0
        self.events = collections.Counter[str]()
        self.last_plan: dict[str, Any] = {}
        self.consolidation: dict[str, Any] = {"runs": 0, "spent_ms": 0.0, "last": None}

    # ---------------------------------------------------------------- the tick (compute thread)

    def tick_rate_hz(self, base: float) -> float:
        return base * self.machine.policy.tick_scale

    def plan(self, tick: int, frames: Mapping[str, list[Frame]], wanting: Mapping[str, PluginView],
             sensors: Mapping[str, tuple[str, float | None]], budget_ms: float, period_s: float,
             miss_rate: float, pending: Mapping[str, int]) -> TickPlan:
        """tick: the orchestrator's tick number; frames: this tick's frames per sensor; wanting:
        plugins with input this tick; sensors: (modality, expected_hz) of each sensor in `frames`;
        budget_ms: the wall time plugins may use; pending: items waiting for consolidation."""
        with self._lock:
            self._ticks = tick
            return self._plan(frames, wanting, sensors, budget_ms, period_s, miss_rate, pending)

    def _plan(self, frames: Mapping[str, list[Frame]], wanting: Mapping[str, PluginView],
              sensors: Mapping[str, tuple[str, float | None]], budget_ms: float, period_s: float,
              miss_rate: float, pending: Mapping[str, int]) -> TickPlan:
        t0 = time.perf_counter()
        now = self.clock()
        sample = self._recharge(now)
        critical = self._read_events(frames, now)
        snarc = self._score(frames, now)
        self.sensors.track(frames, sensors, self._snarc, now)
        t1 = time.perf_counter()
        transitions = self._update_state(snarc, critical, sample, miss_rate, pending, now)
        state = self.machine.state.value
        t2 = time.perf_counter()
        plan = TickPlan(state, {}, [], salience={k: v["total"] for k, v in snarc.items()}, transitions=transitions)
        if frames:
            plan.fused, plan.leases = self.sensors.fuse(self.cfg.attention.goal, self._snarc, now)
        t3 = time.perf_counter()
        budget = self._grant_all(plan, wanting, snarc, budget_ms, pending, now)
        t4 = time.perf_counter()
        plan.timings_ms = {"salience": (t1 - t0) * 1e3, "metabolic": (t2 - t1) * 1e3,
                           "fusion": (t3 - t2) * 1e3, "allocation": (t4 - t3) * 1e3}
        self.last_plan = {"budget": round(budget, 3), "online": {k: round(v, 3) for k, v in plan.allocation.items()},
                          "offline": {k: round(v, 3) for k, v in plan.offline.items()}}
        return plan

    def _recharge(self, now: float) -> TelemetrySample | None:
        """Refill the reservoir for the wall time since the last tick, derated by telemetry."""
        dt = max(now - self._last, 0.0)
        self._last = now
        sample = self.telemetry() if self.telemetry is not None else None
        self._derate = derate(sample, self.cfg.telemetry) if sample is not None and sample.error is None else 1.0
        self.ledger.recharge(dt, self._derate)
        self.trust.relax(dt)
        return sample

    def _update_state(self, snarc: Mapping[str, Mapping[str, float]], critical: dict[str, Any] | None,
                      sample: TelemetrySample | None, miss_rate: float, pending: Mapping[str, int],
                      now: float) -> list[dict[str, Any]]:
        """Feed the state machine this tick's inputs; the transition it made, announced, if any."""
        totals = [s["total"] for s in snarc.values()]
        if critical or any(t >= self.cfg.cognition.idle_salience for t in totals):
            self._last_salient = now
        inputs = MetabolicInputs(
            max_salience=max(totals, default=0.0), mean_salience=sum(totals) / len(totals) if totals else 0.0,
            atp_fraction=self.ledger.fraction, critical_event=critical is not None,
            deadline_miss_rate=miss_rate, plugin_error_rate=self._error_rate(now),
            throttled=bool(sample is not None and sample.throttled),
            temperature_c=sample.max_temp_c if sample is not None else None, idle_s=now - self._last_salient,
            memory_pending=sum(pending.values()))
        moved = self.machine.update(inputs, now)
        return [self._announce(moved.to_dict())] if moved is not None else []

    def _grant_all(self, plan: TickPlan, wanting: Mapping[str, PluginView], snarc: Mapping[str, Mapping[str, float]],
                   budget_ms: float, pending: Mapping[str, int], now: float) -> float:
        """The tick's budget from the ledger: consolidation's share first, then the online
        plugins, ranked and split by the state's pattern. Online grants leave cognition: the tick
        credits them to the plugins' accounts. Returns the budget."""
        state, policy = plan.state, self.machine.policy
        # Pace spending over the time since plugins were last granted ATP, not one nominal period:
        # input ticks between periodic ones (frames, finished jobs) must not each grant a whole
        # period's worth, and sparse ticks may still spend at the state's rate.
        paced_s = min(max(now - self._last_spend, 0.0), MAX_PACE_S)
        budget = self.ledger.budget(policy.spend_rate, paced_s, self._derate, budget_ms,
                                    crisis=state == MetabolicState.CRISIS.value)
        offline_ask = self.machine.consolidation_plan(budget, pending)
        plan.offline = {n: g for n, ask in offline_ask.items() if (g := self._grant(n, ask, offline=True)) > 0}
        online_budget = max(budget - sum(plan.offline.values()), 0.0)
        candidates = [n for n in wanting if not self.trust.plugin_paused(n)]
        if not candidates or policy.max_active_plugins <= 0 or online_budget <= 0:
            return budget
        ranked, relevance, crisis = self._rank(candidates, wanting, plan.fused, state, self._active_limit(state))
        floors = self._request_floors(ranked, wanting, crisis, online_budget)
        shares = self._allocate(state, ranked, wanting, snarc, relevance, crisis, pending,
                                online_budget - sum(floors))
        self._last_spend = now
        for name, floor, share in zip(ranked, floors, shares):
            ask = floor + share
            granted = self.ledger.grant(max(ask, 0.0))
            if granted > 0:
                plan.allocation[name] = granted
                plan.order.append(name)
        return budget

    def _request_floors(self, ranked: list[str], wanting: Mapping[str, PluginView], crisis: Mapping[str, bool],
                        online_budget: float) -> list[float]:
        """Per ranked plugin, the part of its grant set aside first: its next step's cost when it
        answers requests, while request_share of the budget lasts (none in CRISIS but for the
        target: the event's reader comes first)."""
        left = self.cfg.cognition.request_share * online_budget
        in_crisis = any(crisis.values())
        floors = []
        for name in ranked:
            view = wanting[name]
            take = min(view.cost_ms, left) if view.requests and (crisis[name] or not in_crisis) else 0.0
            floors.append(take)
            left -= take
        return floors

    def _active_limit(self, state: str) -> int:
        """The state's max_active_plugins while ATP is scarce; with the reservoir near full (see
        cognition.abundant_fraction) a slot limit only idles plugins while ATP spills unspent."""
        limit, abundant = self.machine.policy.max_active_plugins, self.cfg.cognition.abundant_fraction
        if state == MetabolicState.CRISIS.value or abundant is None or self.ledger.fraction < abundant:
            return limit
        return len(self.names)

    def _rank(self, candidates: list[str], wanting: Mapping[str, PluginView], fused: torch.Tensor | None,
              state: str, limit: int) -> tuple[list[str], dict[str, float], dict[str, bool]]:
        """The crisis target first (CRISIS runs one plugin), then plugins that have waited
        max_wait_s or more, longest first (a low-ranked plugin is delayed, never starved), then
        plugins answering requests, then the selector's ranking; at most `limit`."""
        relevance = self._relevance(fused, state)
        crisis = {n: self._serves_crisis(n, wanting[n], state) for n in candidates}
        overdue = {n: wanting[n].waiting_s if wanting[n].waiting_s >= self.cfg.cognition.max_wait_s else 0.0
                   for n in candidates}
        ranked = sorted(candidates, key=lambda n: (-crisis[n], -overdue[n], -wanting[n].requests,
                                                   -relevance.get(n, 0.0), n))[:limit]
        return ranked, relevance, crisis

    def _read_events(self, frames: Mapping[str, list[Frame]], now: float) -> dict[str, Any] | None:
        critical = None
        for sensor, got in frames.items():
            for f in got:
                if f.kind == "event":
                    priority = f.data.get("priority", "info")
                    self.events[priority] += 1
                    if priority == "critical":
                        critical = {"sensor": sensor, "type": f.data.get("type"), "target": f.data.get("target")}
                elif f.kind == "reward":
                    try:
                        self.scorer.reward(str(f.data["target"]), float(f.data["value"]), now)
                    except (KeyError, TypeError, ValueError) as exc:  # the decoder checked; be sure anyway
                        log.debug("reward from %s ignored: %s", sensor, exc)
        if critical is not None:
            self._critical = {**critical, "at": now}
        return critical

    def _score(self, frames: Mapping[str, list[Frame]], now: float) -> dict[str, dict[str, float]]:
        feats = {}
        p = self.cfg.salience
        for sensor, got in frames.items():
            newest = got[-1]
            if newest.kind == "reward":
                continue
            feats[sensor] = featurize(newest.kind, newest.data, p.dim, p.max_elements)
        scored = {k: v.to_dict() for k, v in self.scorer.score(feats, now).items()}
        self._snarc.update(scored)
        return scored

    def _relevance(self, fused: torch.Tensor | None, state: str) -> dict[str, float]:
        """The selector's mixed score per plugin: router logits for the fused context, and each
        plugin's trust as an expert in the current state."""
        if not self.names:
            return {}
        x = fused if fused is not None else torch.zeros(self.selector.d_model)
        trust = torch.tensor([self.trust.expert(state, n) for n in self.names], dtype=torch.float64)
        scores = self.selector.scores(x.reshape(1, -1).float(), trust)[0].tolist()
        return dict(zip(self.names, scores))

    def _allocate(self, state: str, ranked: list[str], wanting: Mapping[str, PluginView],
                  snarc: Mapping[str, Mapping[str, float]], relevance: Mapping[str, float],
                  crisis: Mapping[str, bool], pending: Mapping[str, int], total: float) -> list[float]:
        rows = []
        for name in ranked:
            view = wanting[name]
            dims = [snarc[s] for s in view.sensors if s in snarc]
            row = {k: max((d[k] for d in dims), default=0.0)
                   for k in ("surprise", "novelty", "arousal", "reward", "conflict")}
            row.update(trust=self.trust.plugin(name), goal_relevance=relevance.get(name, 0.0),
                       cost_ms=view.cost_ms, staleness_s=0.0,
                       is_consolidation=float(pending.get(name, 0) > 0),
                       is_crisis=float(crisis[name]))
            rows.append(row)
        with torch.inference_mode():
            shares = self.allocator.allocate(state, build_features(rows), total, seed=self._ticks)
        return shares.tolist()

    def _serves_crisis(self, name: str, view: PluginView, state: str) -> bool:
        """In CRISIS, the plugin the last critical event names as `target`, or one reading the
        event's sensor or the sensor it targets."""
        event = self._critical if state == MetabolicState.CRISIS.value else None
        if event is None:
            return False
        return event["target"] == name or event["target"] in view.sensors or event["sensor"] in view.sensors

    def _grant(self, name: str, ask: float, offline: bool) -> float:
        granted = self.ledger.grant(max(ask, 0.0))
        if granted > 0:
            key = f"offline:{name}" if offline else name
            self._granted[key] = self._granted.get(key, 0.0) + granted
        return granted

    def _release(self, key: str) -> float:
        return self._granted.pop(key, 0.0)

    # ---------------------------------------------------------------- after each run

    def record_result(self, name: str, result: RunResult) -> None:
        """Trust learns from a finished job's energies or its failure; the error rate counts it."""
        with self._lock:
            now = self.clock()
            failed = result.halt == "error"
            self._runs.append((now, failed))
            self._failed_runs += failed
            if failed:
                kind = "timeout" if (result.error or "").startswith("hung") else "error"
                self.trust.record_plugin_error(name, kind)
                self.trust.update_expert(self.machine.state.value, name, 0.0)
            else:
                quality = self.trust.run_quality(name, result.energies, result.halt, result.atp_spent)
                self.trust.record_plugin_run(name, result.energies, result.halt, result.atp_spent)
                self.trust.update_expert(self.machine.state.value, name, quality)

    def settle_account(self, used: float, debit: float, returned: float) -> None:
        """A plugin account's collect (plugin.account.PluginAccount.collect): `used` + `returned` of its
        grants leave the reservation, `debit` (measured ms) leaves the reservoir."""
        with self._lock:
            self.ledger.settle(used + returned, debit)

    def settle_offline(self, name: str, spent_ms: float, summary: Mapping[str, Any]) -> None:
        with self._lock:
            self.ledger.settle(self._release(f"offline:{name}"), max(spent_ms, 0.0))
            self.consolidation["runs"] += 1
            self.consolidation["spent_ms"] = round(self.consolidation["spent_ms"] + spent_ms, 3)
            self.consolidation["last"] = {"plugin": name, "state": self.machine.state.value, **summary}

    def release_unused(self) -> None:
        """Return consolidation grants whose work was never started to the reservoir."""
        with self._lock:
            for key in list(self._granted):
                self.ledger.settle(self._release(key), 0.0)

    def _error_rate(self, now: float) -> float:
        horizon = now - self.cfg.cognition.error_window_s
        while self._runs and self._runs[0][0] < horizon:
            self._failed_runs -= self._runs.popleft()[1]
        return self._failed_runs / len(self._runs) if self._runs else 0.0

    # ---------------------------------------------------------------- trust persistence

    def save_trust(self) -> None:
        """Snapshot the ledger under the lock, write it outside (trust_store.TrustStore.save)."""
        with self._lock:
            snapshot = self.trust.snapshot()
        self.trust_store.save(snapshot)

    # ---------------------------------------------------------------- control and status (event loop)

    def _announce(self, transition: dict[str, Any]) -> dict[str, Any]:
        """The `state` topic message: the transition, when (wall clock), in which tick, ATP left."""
        transition.update(ts_ns=self.wall_ns(), tick=self._ticks, atp=round(self.ledger.fraction, 4))
        log.info("state %s -> %s: %s", transition["from"], transition["to"], transition["reason"])
        return transition

    def override(self, state: str, duration_s: float) -> dict[str, Any] | None:
        with self._lock:
            moved = self.machine.override(state, duration_s, self.clock())
            return None if moved is None else self._announce(moved.to_dict())

    @property
    def state(self) -> str:
        return self.machine.state.value
