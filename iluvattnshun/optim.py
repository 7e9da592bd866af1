"""``OptimConfig`` and the optimiser and learning-rate schedule it describes: AdamW, linear warmup, optional decay."""

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, LRScheduler

from iluvattnshun.compat import OPTIM_NAMES
from iluvattnshun.config import Config


@dataclass(kw_only=True)
class OptimConfig(Config):
    """AdamW with linear warmup and an optional decay."""

    ALIASES = OPTIM_NAMES

    lr: float = 1e-3
    """Peak learning rate."""
    weight_decay: float = 0.01
    """AdamW weight decay (on matrices only, not on norms, biases or embeddings, unless decay_all_params)."""
    decay_all_params: bool = False
    """Apply the weight decay to every parameter, as a plain AdamW(model.parameters()) does."""
    beta2: float = 0.99
    """AdamW beta2."""
    warmup_steps: int = 100
    """Steps of linear warmup from warmup_start_factor * lr to lr."""
    warmup_start_factor: float = 0.01
    """Learning-rate factor at step 0 of the warmup."""
    lr_decay: Literal["none", "cosine", "linear"] = "none"
    """Decay after warmup, down to min_lr_factor * lr at lr_decay_steps (or max_steps)."""
    lr_decay_steps: int | None = None
    """Step at which the decay ends (none: max_steps)."""
    min_lr_factor: float = 0.1
    """Learning-rate factor at the end of the decay."""
    decay_fraction: float = 1.0
    """Share of the steps after warmup that the decay spans, at their end (0.15: constant, then decay over the
    last 15%)."""

    def validate(self) -> None:
        super().validate()
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be a finite number >= 0, got {self.weight_decay}")
        if not 0 <= self.beta2 < 1:
            raise ValueError(f"beta2 must be in [0, 1), got {self.beta2}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        for name in ("warmup_start_factor", "min_lr_factor"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if not 0 < self.decay_fraction <= 1:
            raise ValueError(f"decay_fraction must be in (0, 1], got {self.decay_fraction}")
        if self.lr_decay_steps is not None and self.lr_decay_steps < 1:
            raise ValueError(f"lr_decay_steps must be >= 1, got {self.lr_decay_steps}")
        max_steps = getattr(self, "max_steps", None)
        if self.lr_decay != "none" and self.lr_decay_steps is None and max_steps is None:
            raise ValueError(f"lr_decay={self.lr_decay} needs lr_decay_steps or max_steps to know where to end")


def build_optimizer(model: nn.Module, config: OptimConfig, device: torch.device) -> Optimizer:
    """AdamW with weight decay on matrices only (not on norms, biases or embeddings) unless ``decay_all_params``;
    fused on CUDA, multi-tensor (``foreach``) on a CPU: a few ops for all parameters instead of a few per parameter,
    with the same numbers as the per-parameter loop (CPU's fused kernel rounds differently)."""
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    params = [p for p in model.parameters() if p.requires_grad]

    def decayed(p: nn.Parameter) -> bool:
        return config.decay_all_params or (p.dim() >= 2 and id(p) not in embeddings)

    groups = [
        {"params": [p for p in params if decayed(p)], "weight_decay": config.weight_decay},
        {"params": [p for p in params if not decayed(p)], "weight_decay": 0.0},
    ]
    if device.type == "cuda":
        return torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, config.beta2), fused=True)
    foreach = True if device.type == "cpu" else None  # elsewhere torch's own default
    return torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, config.beta2), foreach=foreach)


def build_scheduler(optimizer: Optimizer, config: OptimConfig, max_steps: int | None) -> LRScheduler:
    """Per-step ``lr_factor`` schedule (warmup, then constant or decay)."""
    return LambdaLR(optimizer, lambda step: lr_factor(step, config, max_steps))


def lr_factor(step: int, config: OptimConfig, max_steps: int | None) -> float:
    """Learning-rate multiplier at ``step``: linear warmup, then constant, cosine or linear decay."""
    if step < config.warmup_steps:
        return config.warmup_start_factor + (1 - config.warmup_start_factor) * step / config.warmup_steps
    end = config.lr_decay_steps or max_steps
    if config.lr_decay == "none" or end is None or end <= config.warmup_steps:
        return 1.0
    start = end - config.decay_fraction * (end - config.warmup_steps)
    progress = min(1.0, max(0.0, (step - start) / (end - start)))
    if config.lr_decay == "cosine":
        shape = 0.5 * (1 + math.cos(math.pi * progress))
    else:
        shape = 1 - progress
    return config.min_lr_factor + (1 - config.min_lr_factor) * shape
