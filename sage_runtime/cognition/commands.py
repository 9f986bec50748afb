"""The control commands cognition answers: `state` (show, set with a duration, clear) and
`trust`. Registered on the control edge by the daemon."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sage_runtime.cognition.metabolic import MetabolicState
from sage_runtime.cognition.status import state_status, trust_status
from sage_runtime.edges.control import CommandError

if TYPE_CHECKING:
    from sage_runtime.cognition.plan import Cognition

Handler = Callable[[dict[str, Any]], Any]


def cognition_commands(cog: Cognition, publish_state: Callable[[dict[str, Any]], None]) -> dict[str, Handler]:
    def state(args: dict[str, Any]) -> dict[str, Any]:
        action = args.get("action", "show")
        if action == "set":
            name = str(args.get("state", "")).upper()
            if name not in MetabolicState.__members__:
                raise CommandError("bad_args", f"unknown state {args.get('state')!r}; "
                                               f"one of {', '.join(MetabolicState.__members__)}")
            try:
                moved = cog.override(name, float(args.get("duration_s", 60.0)))
            except (TypeError, ValueError) as exc:
                raise CommandError("bad_args", str(exc)) from None
            if moved is not None:
                publish_state(moved)
        elif action == "clear":
            with cog._lock:
                cog.machine.clear_override()
        elif action != "show":
            raise CommandError("bad_args", f"unknown action {action!r}; one of show, set, clear")
        return state_status(cog)

    return {"state": state, "trust": lambda args: trust_status(cog)}
