"""The byte-level denoiser: one bidirectional transformer over a canvas of clean-text positions.

Why this shape: ASR noise inserts and deletes characters, so the clean text is not aligned with
the noisy one and may be longer or shorter. Position i of the sequence carries two embeddings
summed: the noisy input byte i (or PAD past its end) and canvas slot i (the current clean-text
guess, MASK where unknown, PAD past the canvas). Full self-attention (the shared
`TransformerBlock`s of sage_runtime.nn, rotary positions) lets each slot look at the noisy bytes
around its own index, where insertions and deletions have moved its character. Each slot predicts
a byte or PAD, so the predicted length is where the PAD run starts. Trained as a conditional masked
LM (CMLM), the same network makes the first prediction (every slot masked) and re-predicts
re-masked slots during mask-predict refinement. Summing instead of concatenating the two strings
halves the sequence, which halves training time on this CPU. A pooled, projected hidden state is
the meaning embedding; small intent heads on it are trained alongside so it encodes the command,
not just its spelling.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sage_runtime.nn import CastedEmbedding, CastedLinear, RotaryEmbedding, TransformerBlock, rms_norm

PAD = 256
MASK = 257
VOCAB = 258
#: Bytes plus PAD; MASK is an input token only.
N_OUT = 257


@dataclass(frozen=True)
class DenoiserConfig:
    hidden: int = 128
    heads: int = 4
    layers: int = 4
    expansion: float = 2.0
    mlp_multiple: int = 64
    max_len: int = 96
    embed_dim: int = 256
    n_actions: int = 1
    n_objects: int = 1
    n_attributes: int = 1
    n_places: int = 1


def canvas_length(source_len: int, max_len: int) -> int:
    """Canvas positions for a source of this many bytes: room for the deletions ASR noise makes,
    plus at least one PAD that marks the end."""
    return min(max_len, source_len + max(6, math.ceil(0.25 * source_len)))


def encode_bytes(text: str, max_len: int) -> list[int]:
    return list(text.encode("utf-8", errors="replace")[:max_len])


def decode_bytes(ids: list[int]) -> str:
    """Canvas ids to text: bytes up to the first PAD (MASK, if any is left, is dropped)."""
    out = bytearray()
    for t in ids:
        if t == PAD:
            break
        if t < 256:
            out.append(t)
    return out.decode("utf-8", errors="replace")


class Denoiser(nn.Module):
    """logits over each canvas position, plus the hidden states for pooling."""

    def __init__(self, cfg: DenoiserConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.hidden
        self.src_embed = CastedEmbedding(VOCAB, d, init_std=1.0 / math.sqrt(d))
        self.canvas_embed = CastedEmbedding(VOCAB, d, init_std=1.0 / math.sqrt(d))
        self.rope = RotaryEmbedding(d // cfg.heads, cfg.max_len)
        self.blocks = nn.ModuleList(
            TransformerBlock(d, cfg.heads, expansion=cfg.expansion, mlp_multiple=cfg.mlp_multiple)
            for _ in range(cfg.layers))
        self.head = CastedLinear(d, N_OUT)
        self.project = CastedLinear(d, cfg.embed_dim)
        self.intent_heads = nn.ModuleDict({
            "action": CastedLinear(cfg.embed_dim, cfg.n_actions + 1),
            "object": CastedLinear(cfg.embed_dim, cfg.n_objects + 1),
            "place": CastedLinear(cfg.embed_dim, cfg.n_places + 1),
            "attributes": CastedLinear(cfg.embed_dim, cfg.n_attributes),
        })

    def forward(self, src: torch.Tensor, canvas: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """src [B, Ss], canvas [B, Sc] token ids -> (logits [B, Sc, N_OUT], embedding [B, embed_dim])."""
        ss, sc = src.shape[1], canvas.shape[1]
        s = max(ss, sc)
        src = F.pad(src, (0, s - ss), value=PAD)
        slots = F.pad(canvas, (0, s - sc), value=PAD)
        x = (self.src_embed(src) + self.canvas_embed(slots)) * math.sqrt(self.cfg.hidden)
        cos_sin = self.rope(s)
        for block in self.blocks:
            x = block(x, cos_sin=cos_sin)
        logits = self.head(x[:, :sc])
        keep = ((src != PAD) | (slots != PAD)).unsqueeze(-1).to(x.dtype)
        pooled = (x * keep).sum(1) / keep.sum(1).clamp_min(1.0)
        return logits, self.project(rms_norm(pooled))

    def intent_logits(self, embedding: torch.Tensor) -> dict[str, torch.Tensor]:
        return {k: head(embedding) for k, head in self.intent_heads.items()}


def save_checkpoint(model: Denoiser, path, extra: dict | None = None) -> None:
    torch.save({"config": asdict(model.cfg), "state_dict": model.state_dict(), **(extra or {})}, path)


def load_checkpoint(path, device: torch.device | str = "cpu") -> Denoiser:
    ckpt = torch.load(path, map_location=device, weights_only=True)
    model = Denoiser(DenoiserConfig(**ckpt["config"]))
    model.load_state_dict(ckpt["state_dict"])
    return model.to(device).eval()
