"""Tests for named activations: run_with_cache, run_with_hooks and activation patching."""

import math

import pytest
import torch
import torch.nn.functional as F

from iluvattnshun.nn import MultilayerTransformer


@pytest.fixture
def model() -> MultilayerTransformer:
    torch.manual_seed(0)
    return MultilayerTransformer(
        vocab_size=13, d_model=32, n_heads=4, n_layers=3, dropout_attn=0.0, dropout_mlp=0.0, dropout_emb=0.0
    ).eval()


def test_activation_names_are_stable_and_complete(model: MultilayerTransformer) -> None:
    names = model.activation_names()
    assert names[0] == "embed" and names[-2:] == ["final_norm", "logits"]
    for i in range(3):
        for suffix in ("resid_pre", "attn.q", "attn.k", "attn.v", "attn.weights", "attn.z", "attn.out"):
            assert f"layers.{i}.{suffix}" in names
        for suffix in ("resid_mid", "mlp.hidden", "mlp.out", "resid_post"):
            assert f"layers.{i}.{suffix}" in names
    assert len(names) == len(set(names)) == 3 + 3 * 11


def test_run_with_cache_records_everything_with_documented_shapes(model: MultilayerTransformer) -> None:
    x = torch.randint(0, 13, (2, 7))
    logits, cache = model.run_with_cache(x)
    assert list(cache) == model.activation_names()
    torch.testing.assert_close(logits, model(x).logits, atol=1e-5, rtol=0)
    assert cache["layers.1.attn.q"].shape == (2, 4, 7, 8)
    assert cache["layers.1.attn.weights"].shape == (2, 4, 7, 7)
    assert cache["layers.2.mlp.hidden"].shape == (2, 7, 128)
    assert cache["logits"].shape == (2, 7, 13)
    torch.testing.assert_close(cache["layers.0.resid_post"], cache["layers.1.resid_pre"], atol=0, rtol=0)


def test_cache_holds_what_the_model_computes(model: MultilayerTransformer) -> None:
    """Recompute layer 1 by hand from cached inputs and compare with cached outputs."""
    x = torch.randint(0, 13, (2, 9))
    _, cache = model.run_with_cache(x)
    layer = model.layers[1]
    resid_pre = cache["layers.1.resid_pre"]
    q, k, v = cache["layers.1.attn.q"], cache["layers.1.attn.k"], cache["layers.1.attn.v"]

    # q/k/v from the residual stream, with RoPE applied to q and k
    qkv = layer.attn.qkv_proj(layer.norm_attn(resid_pre)).view(2, 9, 3, 4, 8).permute(2, 0, 3, 1, 4)
    torch.testing.assert_close(layer.attn.rotary(qkv[0]), q, atol=1e-6, rtol=0)
    torch.testing.assert_close(qkv[2], v, atol=1e-6, rtol=0)

    scores = q @ k.transpose(-2, -1) / math.sqrt(8)
    scores = scores.masked_fill(torch.triu(torch.ones(9, 9, dtype=torch.bool), 1), float("-inf"))
    weights = scores.softmax(-1)
    torch.testing.assert_close(weights, cache["layers.1.attn.weights"], atol=1e-6, rtol=0)
    z = weights @ v
    torch.testing.assert_close(z, cache["layers.1.attn.z"], atol=1e-6, rtol=0)
    attn_out = layer.attn.out_proj(z.transpose(1, 2).reshape(2, 9, 32))
    torch.testing.assert_close(attn_out, cache["layers.1.attn.out"], atol=1e-6, rtol=0)
    resid_mid = resid_pre + attn_out
    torch.testing.assert_close(resid_mid, cache["layers.1.resid_mid"], atol=1e-6, rtol=0)
    hidden = F.gelu(layer.mlp.fc_in(layer.norm_mlp(resid_mid)))
    torch.testing.assert_close(hidden, cache["layers.1.mlp.hidden"], atol=1e-6, rtol=0)
    torch.testing.assert_close(resid_mid + layer.mlp.fc_out(hidden), cache["layers.1.resid_post"], atol=1e-5, rtol=0)


def test_run_with_cache_filters(model: MultilayerTransformer) -> None:
    x = torch.randint(0, 13, (1, 5))
    _, cache = model.run_with_cache(x, names=["layers.0.resid_post", "embed"])
    assert list(cache) == ["embed", "layers.0.resid_post"]
    _, cache = model.run_with_cache(x, names=lambda n: n.endswith("attn.weights"))
    assert list(cache) == [f"layers.{i}.attn.weights" for i in range(3)]
    with pytest.raises(ValueError, match="resid_post"):
        model.run_with_cache(x, names=["layers.0.resid_postt"])


def test_identity_hook_changes_nothing(model: MultilayerTransformer) -> None:
    x = torch.randint(0, 13, (2, 8))
    clean = model(x).logits
    hooks = {name: (lambda t, n: t) for name in model.activation_names()}
    torch.testing.assert_close(model.run_with_hooks(x, hooks).logits, clean, atol=1e-5, rtol=0)


def test_hook_replacement_takes_effect(model: MultilayerTransformer) -> None:
    x = torch.randint(0, 13, (2, 8))
    out = model.run_with_hooks(x, {"layers.2.mlp.out": lambda t, n: torch.zeros_like(t)})
    _, cache = model.run_with_cache(x, names=["layers.2.resid_mid"])
    expected = model.unembed(model.final_norm(cache["layers.2.resid_mid"]))
    torch.testing.assert_close(out.logits, expected, atol=1e-5, rtol=0)


def test_patching_weights_hook_uses_explicit_path(model: MultilayerTransformer) -> None:
    x = torch.randint(0, 13, (1, 6))

    def uniform(t: torch.Tensor, name: str) -> torch.Tensor:
        causal = torch.tril(torch.ones_like(t))
        return causal / causal.sum(-1, keepdim=True)

    patched = model.run_with_hooks(x, {"layers.0.attn.weights": uniform}).logits
    assert not torch.allclose(patched, model(x).logits, atol=1e-4)


def test_residual_patching_restores_clean_logits_at_every_layer(model: MultilayerTransformer) -> None:
    clean_x = torch.randint(0, 13, (2, 10))
    corrupt_x = clean_x.clone()
    corrupt_x[:, 2] = (corrupt_x[:, 2] + 5) % 13
    clean_logits, clean_cache = model.run_with_cache(clean_x, names=lambda n: n.endswith("resid_post"))
    corrupt_logits = model(corrupt_x).logits
    assert not torch.allclose(clean_logits, corrupt_logits, atol=1e-3)
    for i in range(3):
        name = f"layers.{i}.resid_post"
        patched = model.run_with_hooks(corrupt_x, {name: lambda t, n: clean_cache[n]}).logits
        torch.testing.assert_close(patched, clean_logits, atol=1e-5, rtol=0)


def test_hooks_removed_after_exception(model: MultilayerTransformer) -> None:
    x = torch.randint(0, 13, (1, 4))

    def boom(t: torch.Tensor, name: str) -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        model.run_with_hooks(x, {"layers.1.resid_mid": boom})
    assert model._hook_fns == {}
    assert all(m._hook_fns is model._hook_fns for m in model.modules() if hasattr(m, "_hook_fns"))
    model(x)  # runs again without the hook


def test_unknown_hook_name_suggests_close_names(model: MultilayerTransformer) -> None:
    with pytest.raises(ValueError, match="layers.0.attn.weights"):
        model.run_with_hooks(torch.zeros(1, 3, dtype=torch.long), {"layers.0.attn.weight": lambda t, n: t})
