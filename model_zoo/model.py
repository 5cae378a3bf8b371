"""The token-budget vision transformer (torch; `train` extra only).

A conv stem turns the image into a grid of patch tokens; after the attention of block
`prune_block` the patch tokens are ranked by the CLS token's attention (mean over heads) and
only the top k are kept, the rest fused into one token weighted by attention (EViT). k is a
tensor input, so one exported graph serves every budget.
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
    prune_block: int = 1
    num_classes: int = 5

    @property
    def grid(self) -> int:
        return self.image_size // self.stem_stride

    @property
    def tokens(self) -> int:
        return self.grid * self.grid

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class Stem(nn.Module):
    def __init__(self, dim: int, stride: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = [3, 32, 64, dim]
        steps = {8: 3, 4: 2}[stride]
        chans = [*channels[:steps], dim]
        for i in range(steps):
            layers.append(nn.Conv2d(chans[i], chans[i + 1], 3, stride=2, padding=1))
            if i < steps - 1:
                layers += [nn.BatchNorm2d(chans[i + 1]), nn.GELU()]
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
        b, n, _ = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q * self.head_dim**-0.5) @ k.transpose(-2, -1)
        attn = attn.softmax(dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(b, n, self.heads * self.head_dim)
        return self.proj(out), attn


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


def keep_tokens(
    x: torch.Tensor, attn: torch.Tensor, token_keep: torch.Tensor, tokens: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep CLS, the top-k patch tokens by CLS attention, and one fused token of the rest."""
    scores = attn[:, :, 0, 1:].mean(dim=1)  # (B, N) CLS -> patch attention
    k = torch.clamp(token_keep, 1, tokens)
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
            if i == self.spec.prune_block:
                x, scores = keep_tokens(x, attn, token_keep, self.spec.tokens)
            x = block.mlp(x)
        logits = self.head(self.norm(x[:, 0]))
        grid = self.spec.grid
        return logits, scores.reshape(-1, grid, grid)
