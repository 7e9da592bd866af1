"""Tests for the RoPE transformer, its KV cache and generation."""

from typing import Any, Callable

import pytest
import torch

from iluvattnshun.decode import Decoder
from iluvattnshun.nn import Attention, KVCache, MultilayerTransformer, RotaryEmbedding, causal_mask

ATOL = 1e-5


def make_model(seed: int = 0, **kwargs: float) -> MultilayerTransformer:
    torch.manual_seed(seed)
    defaults: dict[str, float] = dict(d_model=32, n_heads=4, n_layers=3, dropout_attn=0.0, dropout_mlp=0.0)
    defaults["dropout_emb"] = 0.0
    defaults.update(kwargs)
    model = MultilayerTransformer(vocab_size=17, **defaults)  # type: ignore[arg-type]
    return model.eval()


# ---------------------------------------------------------------------------------------------------------------
# RoPE


def test_rope_relative_shift_leaves_dot_products_unchanged() -> None:
    rope = RotaryEmbedding(16, base=100.0)
    torch.manual_seed(0)
    q, k = torch.randn(1, 1, 10, 16), torch.randn(1, 1, 10, 16)
    scores = rope(q) @ rope(k).transpose(-2, -1)
    shifted = rope(q, offset=37) @ rope(k, offset=37).transpose(-2, -1)
    torch.testing.assert_close(scores, shifted, atol=1e-4, rtol=1e-4)
    # ...while RoPE really does change the scores (a no-op rotation would pass the check above).
    assert not torch.allclose(scores, q @ k.transpose(-2, -1), atol=1e-2)


def test_rope_cached_tables_equal_fresh_ones() -> None:
    rope = RotaryEmbedding(8, base=500.0)
    rope.tables(5, torch.device("cpu"), torch.float32)
    cos_grown, sin_grown = rope.tables(300, torch.device("cpu"), torch.float32)  # grows the cache
    cos_small, _ = rope.tables(7, torch.device("cpu"), torch.float32)  # served from the grown cache
    fresh = RotaryEmbedding(8, base=500.0)
    cos_fresh, sin_fresh = fresh.tables(300, torch.device("cpu"), torch.float32)
    torch.testing.assert_close(cos_grown, cos_fresh, atol=0, rtol=0)
    torch.testing.assert_close(sin_grown, sin_fresh, atol=0, rtol=0)
    torch.testing.assert_close(cos_small, cos_fresh[:7], atol=0, rtol=0)
    assert rope._cos is not None and rope._cos.shape[0] >= 300


def test_rope_tables_are_reused_not_rebuilt() -> None:
    rope = RotaryEmbedding(8)
    x = torch.randn(2, 3, 20, 8)
    rope(x)
    table = rope._cos
    rope(x, offset=5)
    assert rope._cos is table


def test_rope_offset_equals_slice_of_longer_sequence() -> None:
    rope = RotaryEmbedding(16)
    x = torch.randn(2, 3, 12, 16)
    full = rope(x)
    torch.testing.assert_close(rope(x[:, :, 5:], offset=5), full[:, :, 5:], atol=1e-6, rtol=0)


def test_rope_rejects_odd_head_dim() -> None:
    with pytest.raises(ValueError, match="even head_dim"):
        RotaryEmbedding(7)


# ---------------------------------------------------------------------------------------------------------------
# Attention


def test_causality_future_tokens_do_not_change_past_logits() -> None:
    model = make_model()
    x = torch.randint(0, 17, (2, 12))
    t = 7
    y = x.clone()
    y[:, t] = (y[:, t] + 1) % 17
    a, b = model(x).logits, model(y).logits
    torch.testing.assert_close(a[:, :t], b[:, :t], atol=ATOL, rtol=0)
    assert not torch.allclose(a[:, t:], b[:, t:], atol=1e-4)


@pytest.mark.parametrize("with_padding", [False, True])
def test_fast_path_equals_explicit_path(with_padding: bool) -> None:
    torch.manual_seed(1)
    attn = Attention(32, 4, rope_base=1000.0).eval()
    x = torch.randn(3, 9, 32)
    pad = None
    if with_padding:
        pad = torch.zeros(3, 9, dtype=torch.bool)
        pad[0, :3] = True  # left padding
        pad[1, 4] = True  # a hole in the middle
    fast, none_weights = attn(x, key_padding_mask=pad)
    slow, weights = attn(x, key_padding_mask=pad, return_attn_weights=True)
    assert none_weights is None and weights is not None
    torch.testing.assert_close(fast, slow, atol=ATOL, rtol=0)
    if pad is not None:
        # padded keys get no weight from any query other than themselves
        assert torch.all(weights[1, :, 5:, 4] == 0)
        assert torch.all(weights[0, :, 3:, :3] == 0)


def test_model_fast_and_explicit_paths_agree() -> None:
    model = make_model()
    x = torch.randint(0, 17, (2, 15))
    torch.testing.assert_close(model(x).logits, model(x, return_attn_weights=True).logits, atol=ATOL, rtol=0)


def test_attention_weights_shape_rows_and_causal_zeros() -> None:
    model = make_model(n_layers=2)
    x = torch.randint(0, 17, (2, 10))
    weights = model(x, return_attn_weights=True).attn_weights
    assert len(weights) == 2
    for w in weights:
        assert w.shape == (2, 4, 10, 10)
        torch.testing.assert_close(w.sum(-1), torch.ones(2, 4, 10), atol=1e-6, rtol=0)
        upper = torch.triu(torch.ones(10, 10, dtype=torch.bool), diagonal=1)
        assert torch.all(w[..., upper] == 0)
        assert torch.all(w[..., ~upper] > 0)


def test_causal_mask_for_block_appended_to_cache() -> None:
    mask = causal_mask(3, 7, torch.device("cpu"))
    assert mask is not None
    expected = torch.tensor(
        [
            [1, 1, 1, 1, 1, 0, 0],
            [1, 1, 1, 1, 1, 1, 0],
            [1, 1, 1, 1, 1, 1, 1],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(mask[0, 0], expected)


# ---------------------------------------------------------------------------------------------------------------
# KV cache


def test_cache_prefill_then_single_steps_equals_full_forward() -> None:
    model = make_model()
    x = torch.randint(0, 17, (2, 14))
    full = model(x).logits
    n = 6
    out = model(x[:, :n], return_new_kv_cache=True)
    cache = out.kv_cache
    assert cache is not None and cache.length == n
    pieces = [out.logits]
    for t in range(n, 14):
        step = model(x[:, t : t + 1], kv_cache=cache, return_new_kv_cache=True)
        assert step.kv_cache is cache and cache.length == t + 1
        pieces.append(step.logits)
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=ATOL, rtol=0)


@pytest.mark.parametrize("explicit", [False, True])
def test_cache_prefill_in_chunks_equals_full_forward(explicit: bool) -> None:
    model = make_model()
    x = torch.randint(0, 17, (3, 20))
    full = model(x).logits
    cache = model.new_kv_cache(capacity=4)  # deliberately small: exercises growth
    pieces = []
    for start, end in [(0, 5), (5, 9), (9, 10), (10, 20)]:
        out = model(x[:, start:end], kv_cache=cache, return_new_kv_cache=True, return_attn_weights=explicit)
        pieces.append(out.logits)
    assert cache.length == 20 and cache.capacity >= 20
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=ATOL, rtol=0)


def test_cache_is_preallocated_and_written_in_place() -> None:
    model = make_model()
    cache = model.new_kv_cache(capacity=32)
    model(torch.randint(0, 17, (1, 5)), kv_cache=cache, return_new_kv_cache=True)
    buffers = [k.data_ptr() for k in cache.keys if k is not None]
    assert len(buffers) == 3 and cache.capacity == 32
    for _ in range(10):
        model(torch.randint(0, 17, (1, 1)), kv_cache=cache, return_new_kv_cache=True)
    assert [k.data_ptr() for k in cache.keys if k is not None] == buffers
    assert cache.length == 15


def test_cache_read_only_call_does_not_advance() -> None:
    model = make_model()
    x = torch.randint(0, 17, (1, 8))
    cache = model(x[:, :5], return_new_kv_cache=True).kv_cache
    assert cache is not None
    peek = model(x[:, 5:6], kv_cache=cache).logits
    assert cache.length == 5
    step = model(x[:, 5:6], kv_cache=cache, return_new_kv_cache=True).logits
    torch.testing.assert_close(peek, step, atol=ATOL, rtol=0)


def test_cache_batch_mismatch_is_a_clear_error() -> None:
    model = make_model()
    cache = model(torch.randint(0, 17, (2, 4)), return_new_kv_cache=True).kv_cache
    with pytest.raises(ValueError, match="batch size 2"):
        model(torch.randint(0, 17, (3, 1)), kv_cache=cache, return_new_kv_cache=True)


def test_cache_clone_branches_independently() -> None:
    model = make_model()
    x = torch.randint(0, 17, (1, 6))
    cache = model(x, return_new_kv_cache=True).kv_cache
    assert isinstance(cache, KVCache)
    branch = cache.clone()
    a = model(torch.tensor([[1]]), kv_cache=cache, return_new_kv_cache=True).logits
    b = model(torch.tensor([[1]]), kv_cache=branch, return_new_kv_cache=True).logits
    torch.testing.assert_close(a, b, atol=0, rtol=0)


# ---------------------------------------------------------------------------------------------------------------
# Generation


def greedy_by_recompute(model: MultilayerTransformer, prompt: torch.Tensor, n: int) -> torch.Tensor:
    seq = prompt
    for _ in range(n):
        nxt = model(seq).logits[:, -1].argmax(-1, keepdim=True)
        seq = torch.cat([seq, nxt], dim=1)
    return seq


def test_greedy_generate_with_cache_equals_recompute() -> None:
    model = make_model()
    prompt = torch.randint(0, 17, (3, 5))
    out = model.generate(prompt, max_new_tokens=12, temperature=0.0)
    assert out.shape == (3, 17)
    assert torch.equal(out[:, :5], prompt)
    assert torch.equal(out, greedy_by_recompute(model, prompt, 12))


def test_generate_feeds_each_token_once() -> None:
    model = make_model()
    seen: list[int] = []

    def count(t: torch.Tensor, name: str) -> None:
        seen.append(t.shape[1])

    with model.hooks({"embed": count}):
        model.generate(torch.randint(0, 17, (1, 4)), max_new_tokens=5, temperature=0.0)
    assert seen == [4, 1, 1, 1, 1]  # prompt once, then each new token except the last once


def test_seeded_sampling_is_reproducible_and_seed_dependent() -> None:
    model = make_model()
    prompt = torch.randint(0, 17, (2, 3))
    runs = [model.generate(prompt, 30, temperature=1.0, generator=torch.Generator().manual_seed(s)) for s in (7, 7, 8)]
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])


def test_top_k_restricts_choices() -> None:
    model = make_model()
    prompt = torch.randint(0, 17, (4, 3))
    greedy = model.generate(prompt, 1, temperature=0.0)
    top1 = model.generate(prompt, 1, temperature=2.0, top_k=1, generator=torch.Generator().manual_seed(0))
    assert torch.equal(greedy, top1)


def test_generate_restores_training_mode_and_validates_input() -> None:
    model = make_model().train()
    model.generate(torch.zeros(1, 2, dtype=torch.long), 2)
    assert model.training
    with pytest.raises(ValueError, match="temperature"):
        model.generate(torch.zeros(1, 2, dtype=torch.long), 2, temperature=-1.0)
    with pytest.raises(ValueError, match="prompt"):
        model.generate(torch.zeros(2, dtype=torch.long), 2)


@pytest.mark.parametrize("path", ["decoder", "general", "Decoder"])
def test_generate_names_each_bad_argument_before_any_work(path: str) -> None:
    model = make_model()
    prompt = torch.randint(0, 17, (1, 3))

    def generate(model: MultilayerTransformer, prompt: Any, new: Any = 2, **kw: Any) -> torch.Tensor:
        if path == "Decoder":
            if isinstance(new, int) and new > 10**9:  # a decoder is sized up front: its capacity is the cache's
                return Decoder(model, 1, new).generate(prompt, new, **kw)
            return Decoder(model, 1, 8).generate(prompt, new, **kw)
        return model.generate(prompt, new, fast=path == "decoder", **kw)

    bad: list[tuple[type[Exception], str, Callable[[], Any]]] = [
        (TypeError, "top_k must be an int, got float", lambda: generate(model, prompt, top_k=2.5)),
        (TypeError, "top_k must be an int, got bool", lambda: generate(model, prompt, top_k=True)),
        (TypeError, "max_new_tokens must be an int, got float", lambda: generate(model, prompt, 2.0)),
        (TypeError, "temperature must be a number, got str", lambda: generate(model, prompt, temperature="1")),
        (TypeError, "prompt must hold integer token ids", lambda: generate(model, prompt.float())),
        (TypeError, "prompt must be a .* tensor", lambda: generate(model, [[1, 2]])),
        (ValueError, r"prompt must have shape \(batch >= 1", lambda: generate(model, prompt[:0])),
        (ValueError, "max_new_tokens: .* cannot be allocated here", lambda: generate(model, prompt, 10**15)),
        (ValueError, "model: its parameters are on the meta device", lambda: generate(model.to("meta"), prompt)),
    ]
    for kind, message, call in bad:
        with pytest.raises(kind, match=message):
            call()


def test_generate_takes_any_integer_prompt_and_any_finite_temperature() -> None:
    model = make_model()
    prompt = torch.randint(0, 17, (4, 3))
    greedy = model.generate(prompt, 6, temperature=0.0)
    assert torch.equal(model.generate(prompt.to(torch.uint8), 6, temperature=0.0), greedy)  # as datasets store them
    assert model.generate(prompt.to(torch.int16), 6, temperature=0.0).dtype == torch.long
    for fast in (True, False):
        for temperature in (1e-45, 5e-324):  # logits / temperature overflow float32: the limit is greedy
            sampled = model.generate(prompt, 6, temperature=temperature, fast=fast, generator=torch.Generator())
            assert torch.equal(sampled, greedy)


@pytest.mark.parametrize("fast", [True, False])
def test_training_after_generate_uses_normal_tensors(fast: bool) -> None:
    # generate runs in inference mode; what it leaves behind (the RoPE tables it grew, its output) must train.
    model = make_model()
    out = model.generate(torch.zeros(1, 2, dtype=torch.long), 100, fast=fast)  # tables grown past 100 positions
    assert not out.is_inference()
    model.train()
    loss = model(out).logits.sum()  # 102 positions: read from the tables grown during generate
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


# ---------------------------------------------------------------------------------------------------------------
# Training signals


def test_gradients_reach_every_parameter() -> None:
    model = make_model().train()
    x = torch.randint(0, 17, (2, 9))
    loss = torch.nn.functional.cross_entropy(model(x).logits.flatten(0, 1), x.flatten())
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert p.grad.abs().sum() > 0, name


def test_return_xs_has_embedding_and_every_layer() -> None:
    model = make_model(n_layers=4)
    out = model(torch.randint(0, 17, (2, 6)), return_xs=True)
    assert len(out.xs) == 5
    assert all(h.shape == (2, 6, 32) for h in out.xs)
    logits, kv_cache, attn_weights, xs = out  # the 4-tuple contract
    assert kv_cache is None and attn_weights == [] and xs is out.xs


def test_constructor_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="divisible"):
        MultilayerTransformer(vocab_size=10, d_model=30, n_heads=4)


def test_model_defaults_are_model_config_defaults() -> None:
    # One set of defaults: the bare constructor builds what ModelConfig() describes, and build_model builds it too.
    from iluvattnshun.model_config import ModelConfig, build_model

    bare = MultilayerTransformer(11)
    assert bare.init_kwargs == {"vocab_size": 11, "bias": True, **ModelConfig().model_kwargs()}
    assert build_model(11, ModelConfig()).init_kwargs == bare.init_kwargs
    assert (bare.dim_model, bare.num_heads, bare.num_layers, bare.dropout_emb.p) == (128, 4, 4, 0.0)


def test_qk_norm_fast_explicit_decoder_and_optimiser_agree() -> None:
    # QK-norm: both attention paths and the decoder's one-token step give the same logits; the gain is a norm
    # gain (ones at init, not weight-decayed) and it matters (a changed gain changes the output).
    from iluvattnshun.decode import Decoder
    from iluvattnshun.optim import OptimConfig, build_optimizer

    torch.manual_seed(0)
    model = MultilayerTransformer(20, dim_model=32, num_heads=2, num_layers=2, qk_norm=True, dropout_attn=0.0,
                                  dropout_mlp=0.0, dropout_emb=0.0).eval()  # fmt: skip
    gains = [layer.attn.qk_gain for layer in model.layers]
    assert all(g is not None and g.shape == (32,) and bool((g == 1).all()) for g in gains)
    with torch.no_grad():
        for g in gains:
            g.uniform_(0.5, 2.0)
    x = torch.randint(0, 20, (2, 12))
    fast = model(x).logits
    torch.testing.assert_close(model(x, return_attn_weights=True).logits, fast, atol=1e-5, rtol=1e-5)
    decoder = Decoder(model, batch_size=2, capacity=12)
    decoder.prefill(x[:, :6])
    for t in range(6, 12):
        torch.testing.assert_close(decoder.step(x[:, t].contiguous(), t), fast[:, t], atol=1e-5, rtol=1e-5)
    optimizer = build_optimizer(model, OptimConfig(weight_decay=0.1), torch.device("cpu"))
    no_decay = next(g for g in optimizer.param_groups if g["weight_decay"] == 0.0)["params"]
    assert all(any(p is g for p in no_decay) for g in gains)
    with torch.no_grad():
        gains[0].mul_(3.0)
    assert not torch.allclose(model(x).logits, fast)
    assert (
        "qk_norm" in model.init_kwargs and MultilayerTransformer(**model.init_kwargs).layers[0].attn.qk_gain is not None
    )
