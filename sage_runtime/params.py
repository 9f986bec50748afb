"""The one validation style of the cognition parameters: each `*Params` is a frozen pydantic
dataclass with this config, its ranges written as `Field` constraints (cross-field rules as
model validators), so a misspelt key or an out-of-range value fails when the config is loaded,
naming the key, exactly like the other sections."""

from __future__ import annotations

from pydantic import ConfigDict

#: Unknown keys refused, values not coerced beyond pydantic's lax mode, NaN refused.
PARAMS = ConfigDict(extra="forbid", allow_inf_nan=False)
