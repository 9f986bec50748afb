"""Behaviour of the shared layers in sage_runtime.nn."""

from __future__ import annotations

import math

import pytest
import torch

from sage_runtime.nn import (
    Attention, CastedEmbedding, CastedLinear, RMSNorm, RotaryEmbedding, SwiGLU, TransformerBlock, apply_rotary,
    attention, find_multiple, reference_attention, rms_norm, trunc_normal_init_,
)


def test_trunc_normal_std_is_post_truncation_std() -> None:
    torch.manual_seed(0)
    for std in (0.02, 1.0, 3.0):
        t = trunc_normal_init_(torch.empty(400_000), std=std)
        assert abs(t.std().item() / std - 1) < 0.01
        assert t.abs().max().item() <= 2 * std * 1.14 + 1e-6
    raw = torch.nn.init.trunc_normal_(torch.empty(400_000), std=1.0, a=-2.0, b=2.0)
    assert abs(raw.std().item() - 0.880) < 0.01  # what the correction is for
    assert torch.count_nonzero(trunc_normal_init_(torch.empty(10), std=0.0)) == 0


def test_rms_norm_has_no_parameters_and_unit_rms() -> None:
    x = torch.randn(4, 7, 32) * 5 + 1
    y = rms_norm(x)
    assert torch.allclose(y.square().mean(-1), torch.ones(4, 7), atol=1e-4)
    assert len(list(RMSNorm().parameters())) == 0
    assert rms_norm(x.bfloat16()).dtype == torch.bfloat16


@pytest.mark.parametrize("d,mult,expected", [(512, 256, 1536), (64, 256, 256), (64, 64, 192)])
def test_swiglu_rounding(d: int, mult: int, expected: int) -> None:
    mlp = SwiGLU(d, 4, multiple=mult)
    assert mlp.intermediate_size == expected == find_multiple(round(4 * d * 2 / 3), mult)
    assert mlp(torch.randn(2, 3, d)).shape == (2, 3, d)


def test_casted_layers_follow_activation_dtype() -> None:
    lin = CastedLinear(8, 4, bias=True)
    assert lin.weight.dtype == torch.float32 and torch.count_nonzero(lin.bias) == 0
    assert lin(torch.randn(2, 8, dtype=torch.bfloat16)).dtype == torch.bfloat16
    assert abs(lin.weight.std().item() - 1 / math.sqrt(8)) < 0.15
    emb = CastedEmbedding(10, 6, init_std=0.5, cast_to=torch.bfloat16)
    assert emb(torch.tensor([[1, 2]])).dtype == torch.bfloat16


def test_sdpa_matches_naive_attention() -> None:
    torch.manual_seed(1)
    q, k, v = (torch.randn(2, 9, 3, 16) for _ in range(3))
    for causal in (False, True):
        assert torch.allclose(attention(q, k, v, causal=causal), reference_attention(q, k, v, causal), atol=1e-5)


def test_causal_attention_ignores_future_tokens() -> None:
    torch.manual_seed(2)
    att = Attention(32, 4, causal=True)
    x = torch.randn(1, 6, 32)
    y = x.clone()
    y[:, 4:] = torch.randn(1, 2, 32)
    assert torch.allclose(att(x)[:, :4], att(y)[:, :4], atol=1e-6)
    assert not torch.allclose(Attention(32, 4)(x)[:, :4], Attention(32, 4)(y)[:, :4])


def test_rotary_is_relative() -> None:
    """Scores depend only on the offset between positions, and rotation preserves norms."""
    rope = RotaryEmbedding(8, 32)
    cos, sin = rope(32)
    q = torch.randn(8).expand(1, 32, 1, 8).contiguous()
    k = torch.randn(8).expand(1, 32, 1, 8).contiguous()
    qr, kr = apply_rotary(q, k, cos, sin)
    s = lambda i, j: (qr[0, i, 0] * kr[0, j, 0]).sum().item()  # noqa: E731
    assert abs(s(3, 1) - s(10, 8)) < 1e-4 and abs(s(3, 1) - s(3, 2)) > 1e-4
    assert torch.allclose(qr.norm(dim=-1), q.norm(dim=-1), atol=1e-5)


def test_transformer_block_post_norm_and_gradients() -> None:
    torch.manual_seed(3)
    blk = TransformerBlock(32, 4, expansion=2, mlp_multiple=32)
    cos_sin = RotaryEmbedding(8, 10)(10)
    x = torch.randn(2, 10, 32, requires_grad=True)
    y = blk(x, cos_sin=cos_sin)
    assert torch.allclose(y.square().mean(-1), torch.ones(2, 10), atol=1e-4)  # output is normed
    y.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in blk.parameters())
    # Non-causal: every position sees every other one.
    x2 = x.detach().clone()
    x2[:, -1] += 1
    assert not torch.allclose(blk(x.detach(), cos_sin)[:, 0], blk(x2, cos_sin)[:, 0])


def test_attention_mask_blocks_keys() -> None:
    torch.manual_seed(4)
    q, k, v = (torch.randn(1, 5, 2, 8) for _ in range(3))
    mask = torch.tensor([True, True, True, False, False]).view(1, 1, 1, 5)
    out = attention(q, k, v, attn_mask=mask)
    ref = reference_attention(q, k[:, :3], v[:, :3])
    assert torch.allclose(out, ref, atol=1e-5)
