"""Truncated-normal initialisation whose post-truncation std is the one asked for.

torch's `trunc_normal_` cuts at +-2 sigma without rescaling, so its samples have std 0.880 sigma;
HRM (and its published results) rely on the corrected version implemented here.
"""

from __future__ import annotations

import math

import torch


def trunc_normal_init_(tensor: torch.Tensor, std: float = 1.0, lower: float = -2.0, upper: float = 2.0,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """Fill `tensor` in place from N(0, s^2) truncated to [lower*s, upper*s], with s chosen so that
    the truncated distribution's std equals `std`. Returns the tensor."""
    with torch.no_grad():
        if std == 0:
            return tensor.zero_()
        sqrt2 = math.sqrt(2.0)
        a = math.erf(lower / sqrt2)
        b = math.erf(upper / sqrt2)
        z = (b - a) / 2
        c = (2 * math.pi) ** -0.5
        pdf_lower = c * math.exp(-0.5 * lower ** 2)
        pdf_upper = c * math.exp(-0.5 * upper ** 2)
        # Variance of a standard normal truncated to [lower, upper].
        trunc_var = 1 - (upper * pdf_upper - lower * pdf_lower) / z - ((pdf_upper - pdf_lower) / z) ** 2
        comp_std = std / math.sqrt(trunc_var)
        tensor.uniform_(a, b, generator=generator)
        tensor.erfinv_()
        tensor.mul_(sqrt2 * comp_std)
        tensor.clip_(lower * comp_std, upper * comp_std)
    return tensor
