"""The three attention modules (docs/attention.md): ATP allocator, expert selector, sensor fusion.

All use ``torch.nn.functional.scaled_dot_product_attention``; see docs/attention.md.
"""

from .allocator import COL, FEATURES, STATES, AtpAllocator, StatePattern, build_features
from .fusion import Features, Sensor, SensorFusion
from .selector import TrustWeightedExpertSelector, trust_for_context

__all__ = [
    "COL",
    "FEATURES",
    "STATES",
    "AtpAllocator",
    "Features",
    "Sensor",
    "SensorFusion",
    "StatePattern",
    "TrustWeightedExpertSelector",
    "build_features",
    "trust_for_context",
]
