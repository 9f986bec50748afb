"""What `sagectl status` shows of cognition: state, ATP, salience, fusion, trust. Read under
cognition's lock, so a reply never mixes two ticks."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sage_runtime.cognition.plan import Cognition


def state_status(cog: Cognition) -> dict[str, Any]:
    """The metabolic state, how long since salient input, and the last critical event."""
    with cog._lock:
        now = cog.clock()
        critical = cog._critical
        return {**cog.machine.status(now), "idle_s": round(now - cog._last_salient, 3),
                "last_critical": critical and {**critical, "age_s": round(now - critical["at"], 3)}}


def trust_status(cog: Cognition) -> dict[str, Any]:
    with cog._lock:
        return {**cog.trust.status(), "paused": cog.trust.paused_plugins(), **cog.trust_store.status()}


def cognition_status(cog: Cognition) -> dict[str, Any]:
    """The cognition part of the daemon's `status` reply."""
    state = state_status(cog)
    with cog._lock:
        atp = cog.ledger.status()
        nominal = atp["recharge_per_s"]
        store = cog.trust_store
        return {
            "state": state,
            "atp": {**atp, "recharge_per_s": round(nominal * cog._derate, 3), "nominal_recharge_per_s": nominal,
                    "derate": round(cog._derate, 4), "last_plan": cog.last_plan,
                    "allocator": cog.cfg.attention.allocator},
            "salience": dict(cog._snarc),
            "fusion": {"goal": cog.cfg.attention.goal, "weights": dict(cog.sensors.weights),
                       "errors": dict(cog.sensors.errors)},
            "events": dict(cog.events),
            "consolidation": dict(cog.consolidation),
            "trust_summary": {"plugins": {n: round(cog.trust.plugin(n), 4) for n in cog.names},
                              "paused": cog.trust.paused_plugins(), "restore": store.restore_result,
                              "save_error": store.save_error},
        }
