"""Training, structured pruning and resolution transfer of the token-budget ViT (torch)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray

from model_zoo.model import TokenBudgetViT

Progress = Callable[[int, int, str], None]  # (done, total, note)


def to_tensor(images: NDArray[np.uint8]) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) uint8 tensor; converted to float per batch."""
    return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Flips and 90-degree turns: surface defects have no preferred orientation."""
    if torch.rand(1, generator=gen).item() < 0.5:
        x = x.flip(3)
    if torch.rand(1, generator=gen).item() < 0.5:
        x = x.flip(2)
    if torch.rand(1, generator=gen).item() < 0.5:
        x = x.transpose(2, 3)
    return x


def _uniform(shape: tuple[int, ...], low: float, high: float, gen: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(shape, generator=gen)


def _photometric(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Mild camera and lighting changes on half of the images: gain, a light gradient, a
    colour cast, sensor noise, slight defocus. Kept mild on purpose: a first try with the
    shifted split's full ranges saturated bright scratches away and left `full` at 75% on
    clean validation images."""
    n, _, h, w = x.shape
    on = (torch.rand((n, 1, 1, 1), generator=gen) < 0.5).float()
    gain = _uniform((n, 1, 1, 1), 0.8, 1.2, gen)
    theta = _uniform((n, 1, 1, 1), 0.0, 2 * math.pi, gen)
    amp = _uniform((n, 1, 1, 1), 0.0, 0.25, gen)
    yy = torch.linspace(-0.5, 0.5, h).view(1, 1, h, 1)
    xx = torch.linspace(-0.5, 0.5, w).view(1, 1, 1, w)
    light = gain * (1 + amp * (torch.cos(theta) * xx + torch.sin(theta) * yy))
    tint = 1 + _uniform((n, 3, 1, 1), -0.12, 0.12, gen)
    y = x * light * tint
    if torch.rand(1, generator=gen).item() < 0.3:
        sigma = _uniform((1,), 0.4, 0.9, gen).item()
        r = torch.arange(-2, 3, dtype=torch.float32)
        k1 = torch.exp(-(r**2) / (2 * sigma**2))
        k1 = k1 / k1.sum()
        kernel = (k1[:, None] * k1[None, :]).expand(3, 1, 5, 5)
        y = F.conv2d(F.pad(y, (2, 2, 2, 2), mode="replicate"), kernel, groups=3)
    noise = _uniform((n, 1, 1, 1), 0.0, 0.05, gen)
    y = (y + noise * torch.randn(x.shape, generator=gen)).clamp_(0.0, 1.0)
    return on * y + (1 - on) * x


def train(
    model: TokenBudgetViT,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    epochs: int,
    lr: float,
    batch: int,
    budgets: tuple[float, ...],
    seed: int,
    photometric: bool = False,
    progress: Progress | None = None,
) -> list[float]:
    """AdamW + warmup/cosine; each batch runs at a token budget drawn from `budgets`. Budgets
    below the smallest drawn are served without having been trained for, which is what makes
    them cost accuracy (model card). Returns the mean loss per epoch."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    steps_per_epoch = math.ceil(len(images) / batch)
    total = max(1, epochs * steps_per_epoch)
    warmup = max(1, total // 20)

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    tokens = model.spec.tokens
    losses: list[float] = []
    step = 0
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(images), generator=gen)
        running = 0.0
        for start in range(0, len(images), batch):
            idx = order[start : start + batch]
            x = _augment(images[idx].float().div_(255.0), gen)
            if photometric:
                x = _photometric(x, gen)
            budget = budgets[int(torch.randint(len(budgets), (1,), generator=gen))]
            keep = torch.tensor([max(1, round(budget * tokens))])
            logits, _ = model(x, keep)
            loss = F.cross_entropy(logits, labels[idx], label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            running += loss.item() * len(idx)
            step += 1
            if progress:
                progress(step, total, "")
        losses.append(running / len(images))
        if progress:
            progress(step, total, f"epoch {len(losses)}/{epochs} loss {losses[-1]:.3f}")
    model.eval()
    return losses


@torch.no_grad()
def evaluate(
    model: TokenBudgetViT, images: torch.Tensor, labels: torch.Tensor, budget: float, batch: int = 100
) -> float:
    model.eval()
    keep = torch.tensor([max(1, round(budget * model.spec.tokens))])
    correct = 0
    for start in range(0, len(images), batch):
        logits, _ = model(images[start : start + batch].float().div_(255.0), keep)
        correct += int((logits.argmax(1) == labels[start : start + batch]).sum())
    return correct / len(images)


@torch.no_grad()
def prune(model: TokenBudgetViT, heads: int, mlp_hidden: int, drop_blocks: tuple[int, ...]) -> TokenBudgetViT:
    """Structured pruning: keep the `heads` heads and `mlp_hidden` MLP channels of largest
    weight norm in every block, and remove whole blocks listed in `drop_blocks`."""
    spec = model.spec
    kept_blocks = [i for i in range(spec.depth) if i not in drop_blocks]
    if any(b in drop_blocks for b in spec.prune_blocks):
        raise ValueError(f"cannot remove a block that prunes tokens ({spec.prune_blocks})")
    prune_blocks = tuple(kept_blocks.index(b) for b in spec.prune_blocks)
    new_spec = replace(spec, heads=heads, mlp_hidden=mlp_hidden, depth=len(kept_blocks), prune_blocks=prune_blocks)
    new = TokenBudgetViT(new_spec)
    new.stem.load_state_dict(model.stem.state_dict())
    new.cls.copy_(model.cls)
    new.pos.copy_(model.pos)
    new.norm.load_state_dict(model.norm.state_dict())
    new.head.load_state_dict(model.head.state_dict())
    hd, dim = spec.head_dim, spec.dim
    for new_block, old_index in zip(new.blocks, kept_blocks, strict=True):
        old = model.blocks[old_index]
        new_block.norm1.load_state_dict(old.norm1.state_dict())
        new_block.norm2.load_state_dict(old.norm2.state_dict())
        qkv_w = old.attn.qkv.weight.reshape(3, spec.heads, hd, dim)
        qkv_b = old.attn.qkv.bias.reshape(3, spec.heads, hd)
        proj_w = old.attn.proj.weight.reshape(dim, spec.heads, hd)
        score = qkv_w.pow(2).sum(dim=(0, 2, 3)) + proj_w.pow(2).sum(dim=(0, 2))
        keep_h = torch.sort(torch.topk(score, heads).indices).values
        new_block.attn.qkv.weight.copy_(qkv_w[:, keep_h].reshape(-1, dim))
        new_block.attn.qkv.bias.copy_(qkv_b[:, keep_h].reshape(-1))
        new_block.attn.proj.weight.copy_(proj_w[:, keep_h].reshape(dim, -1))
        new_block.attn.proj.bias.copy_(old.attn.proj.bias)
        channel_score = old.fc1.weight.norm(dim=1) * old.fc2.weight.norm(dim=0)
        keep_c = torch.sort(torch.topk(channel_score, mlp_hidden).indices).values
        new_block.fc1.weight.copy_(old.fc1.weight[keep_c])
        new_block.fc1.bias.copy_(old.fc1.bias[keep_c])
        new_block.fc2.weight.copy_(old.fc2.weight[:, keep_c])
        new_block.fc2.bias.copy_(old.fc2.bias)
    return new


@torch.no_grad()
def to_resolution(model: TokenBudgetViT, image_size: int) -> TokenBudgetViT:
    """The same weights at another input size; position embeddings are resized bicubically."""
    spec = replace(model.spec, image_size=image_size)
    new = TokenBudgetViT(spec)
    state = {k: v for k, v in model.state_dict().items() if k != "pos"}
    new.load_state_dict(state, strict=False)
    g_old, g_new = model.spec.grid, spec.grid
    pos = model.pos.reshape(1, g_old, g_old, -1).permute(0, 3, 1, 2)
    pos = F.interpolate(pos, size=(g_new, g_new), mode="bicubic", align_corners=False)
    new.pos.copy_(pos.permute(0, 2, 3, 1).reshape(1, g_new * g_new, -1))
    return new


@torch.no_grad()
def with_schedule(model: TokenBudgetViT, prune_blocks: tuple[int, ...], stage_ratio: float) -> TokenBudgetViT:
    """The same weights under another token schedule: where tokens are dropped is not a
    parameter, so a model trained ranking at one place can serve ranking at another (as EViT
    serves keep rates it was not trained at)."""
    new = TokenBudgetViT(replace(model.spec, prune_blocks=prune_blocks, stage_ratio=stage_ratio))
    new.load_state_dict(model.state_dict())
    new.eval()
    return new
