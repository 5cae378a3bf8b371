"""The token-budget vision transformer (torch; `train` extra only).

A conv stem turns the image into a grid of patch tokens; after the attention of each block in
`prune_blocks` the patch tokens are ranked by the CLS token's attention (mean over heads) and
only the top ones are kept, the rest fused into one token weighted by attention (EViT, which
also prunes at several depths). k, the patch tokens kept at the first stage, is a tensor
input, so one exported graph serves every budget; each later stage keeps the same share of
what reaches it again, times `stage_ratio` in the exponent (1.0 = EViT's fixed keep rate).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class ModelSpec:
    image_size: int = 128
    stem_stride: int = 8
    dim: int = 128
    depth: int = 6
    heads: int = 4
    head_dim: int = 32
    mlp_hidden: int = 512
    prune_blocks: tuple[int, ...] = (0, 2)
    stage_ratio: float = 1.0
    num_classes: int = 8

    @property
    def grid(self) -> int:
        return self.image_size // self.stem_stride

    @property
    def tokens(self) -> int:
        return self.grid * self.grid

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


class Stem(nn.Module):
    """Stride-2 3x3 convolutions down to the token grid, each but the last followed by a
    stride-1 one (BatchNorm, GELU). The convolutions give the transformer local features to
    start from: a full-size pilot with one conv per scale stayed at chance on the inspection
    task (282 steps); a smaller one with these left it after about 150 (model card)."""

    def __init__(self, dim: int, stride: int) -> None:
        super().__init__()
        channels = [3, 32, 64, dim]
        steps = {8: 3, 4: 2}[stride]
        chans = [*channels[:steps], dim]
        layers: list[nn.Module] = []
        for i in range(steps):
            layers.append(nn.Conv2d(chans[i], chans[i + 1], 3, stride=2, padding=1))
            if i < steps - 1:
                layers += [nn.BatchNorm2d(chans[i + 1]), nn.GELU()]
                layers += [nn.Conv2d(chans[i + 1], chans[i + 1], 3, padding=1), nn.BatchNorm2d(chans[i + 1]), nn.GELU()]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, head_dim: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        self.qkv = nn.Linear(dim, 3 * heads * head_dim)
        self.proj = nn.Linear(heads * head_dim, dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Output and the CLS token's attention row (B, heads, 1, n).

        Training uses the fused kernel and computes only the CLS row apart: the full attention
        matrix of 257 tokens made a training step 2-3x slower. Export and evaluation spell the
        attention out, so the ONNX graph stays plain MatMul/Softmax."""
        b, n, _ = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        if self.training:
            out = F.scaled_dot_product_attention(q, k, v)
            cls_row = ((q[:, :, :1] * self.head_dim**-0.5) @ k.transpose(-2, -1)).softmax(dim=-1)
        else:
            attn = ((q * self.head_dim**-0.5) @ k.transpose(-2, -1)).softmax(dim=-1)
            out, cls_row = attn @ v, attn[:, :, :1]
        out = out.transpose(1, 2).reshape(b, n, self.heads * self.head_dim)
        return self.proj(out), cls_row


class Block(nn.Module):
    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(spec.dim)
        self.attn = Attention(spec.dim, spec.heads, spec.head_dim)
        self.norm2 = nn.LayerNorm(spec.dim)
        self.fc1 = nn.Linear(spec.dim, spec.mlp_hidden)
        self.fc2 = nn.Linear(spec.mlp_hidden, spec.dim)

    def mlp(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


def stage_keep(token_keep: torch.Tensor, tokens: int, stage: int, ratio: float) -> torch.Tensor:
    """Patch tokens kept at pruning `stage` (0-based): k at the first, then the share k/N
    again at each later one, raised to `ratio`. Shape [1] int64, as TopK needs."""
    k = torch.clamp(token_keep, 1, tokens)
    if stage == 0:
        return k
    share = k.to(torch.float32) / tokens
    kept = torch.round(tokens * share ** (1.0 + stage * ratio))
    return torch.clamp(kept, min=1.0).to(torch.int64)


def keep_tokens(x: torch.Tensor, attn: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep CLS, the top-k patch tokens by CLS attention, and one fused token of the rest."""
    scores = attn[:, :, 0, 1:].mean(dim=1)  # (B, N) CLS -> patch attention
    _, idx = torch.topk(scores, k)  # legacy ONNX export: TopK with k of shape [1]
    patches = x[:, 1:]
    kept = torch.gather(patches, 1, idx.unsqueeze(-1).expand(-1, -1, patches.shape[-1]))
    kept_mask = torch.zeros_like(scores).scatter(1, idx, 1.0)
    weights = scores * (1.0 - kept_mask)
    fused = (weights.unsqueeze(-1) * patches).sum(1, keepdim=True) / (weights.sum(1, keepdim=True).unsqueeze(-1) + 1e-6)
    return torch.cat([x[:, :1], kept, fused], dim=1), scores


class TokenBudgetViT(nn.Module):
    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        self.stem = Stem(spec.dim, spec.stem_stride)
        self.cls = nn.Parameter(torch.zeros(1, 1, spec.dim))
        self.pos = nn.Parameter(torch.randn(1, spec.tokens, spec.dim) * 0.02)
        self.blocks = nn.ModuleList(Block(spec) for _ in range(spec.depth))
        self.norm = nn.LayerNorm(spec.dim)
        self.head = nn.Linear(spec.dim, spec.num_classes)

    def forward(self, image: torch.Tensor, token_keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """image: (B, 3, H, W) float in [0, 1]; token_keep: int64 (1,). Returns logits, map."""
        x = self.stem((image - 0.5) / 0.25).flatten(2).transpose(1, 2) + self.pos
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1)
        scores = torch.zeros(x.shape[0], self.spec.tokens, device=x.device)
        for i, block in enumerate(self.blocks):
            out, attn = block.attn(block.norm1(x))
            x = x + out
            if i in self.spec.prune_blocks:
                stage = self.spec.prune_blocks.index(i)
                k = stage_keep(token_keep, self.spec.tokens, stage, self.spec.stage_ratio)
                x, stage_scores = keep_tokens(x, attn, k)
                if stage == 0:
                    scores = stage_scores
            x = block.mlp(x)
        logits = self.head(self.norm(x[:, 0]))
        grid = self.spec.grid
        return logits, scores.reshape(-1, grid, grid)
