"""The optimiser recipe: the learning-rate schedule and which parameters decay."""

import math

import pytest
import torch

from iluvattnshun.nn import MultilayerTransformer
from iluvattnshun.optim import OptimConfig, build_optimizer, lr_factor


def test_schedule_warms_up_then_holds_or_decays() -> None:
    flat = OptimConfig(warmup_steps=100, warmup_start_factor=0.01)
    assert [lr_factor(s, flat, 1000) for s in (0, 50, 100, 999)] == [0.01, 0.505, 1.0, 1.0]
    linear = OptimConfig(warmup_steps=100, lr_decay="linear", min_lr_factor=0.1, lr_decay_steps=1100)
    assert [round(lr_factor(s, linear, None), 3) for s in (100, 600, 1100, 2000)] == [1.0, 0.55, 0.1, 0.1]
    cosine = OptimConfig(warmup_steps=0, lr_decay="cosine", min_lr_factor=0.0, lr_decay_steps=100)
    assert lr_factor(50, cosine, None) == pytest.approx(0.5) and lr_factor(100, cosine, None) == pytest.approx(0.0)
    # decay over the last 20% of the steps after warmup only: constant until step 900 of 1,100
    late = OptimConfig(warmup_steps=100, lr_decay="linear", min_lr_factor=0.1, decay_fraction=0.2, lr_decay_steps=1100)
    assert [round(lr_factor(s, late, None), 3) for s in (500, 900, 1000, 1100)] == [1.0, 1.0, 0.55, 0.1]
    with pytest.raises(ValueError, match="decay_fraction"):
        OptimConfig(decay_fraction=0.0)


def test_weight_decay_on_matrices_or_on_every_parameter() -> None:
    model = MultilayerTransformer(10, dim_model=16, num_heads=2, num_layers=1)
    matrices = build_optimizer(model, OptimConfig(weight_decay=0.1), torch.device("cpu"))
    decayed = {id(p) for g in matrices.param_groups if g["weight_decay"] for p in g["params"]}
    names = {n for n, p in model.named_parameters() if id(p) in decayed}
    assert "layers.0.attn.qkv_proj.weight" in names and "token_embedding.weight" not in names
    assert not any(n.endswith("bias") or "norm" in n for n in names)
    every = build_optimizer(model, OptimConfig(weight_decay=0.1, decay_all_params=True), torch.device("cpu"))
    assert sum(len(g["params"]) for g in every.param_groups if g["weight_decay"]) == len(list(model.parameters()))
    assert math.isclose(every.param_groups[0]["betas"][1], 0.99)
