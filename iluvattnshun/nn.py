"""RoPE transformer with a preallocated KV cache, autoregressive generation and named activations.

Shapes are written beside the lines that make them: B batch, T new tokens, S = cache length + T keys,
H heads, D head dim, C model dim, V vocab.

Every interesting activation has a stable dotted name (see ``MultilayerTransformer.activation_names``):

    embed
    layers.{i}.resid_pre          (B, T, C)  residual stream entering layer i
    layers.{i}.attn.q / .k / .v   (B, H, T, D)  after RoPE (v has none)
    layers.{i}.attn.weights       (B, H, T, S)  softmax attention pattern (forces the explicit path)
    layers.{i}.attn.z             (B, H, T, D)  per-head attention output, before the output projection
    layers.{i}.attn.out           (B, T, C)  attention output added to the residual stream
    layers.{i}.resid_mid          (B, T, C)  residual stream after attention
    layers.{i}.mlp.hidden         (B, T, 4C) after GELU
    layers.{i}.mlp.out            (B, T, C)
    layers.{i}.resid_post         (B, T, C)  residual stream leaving layer i
    final_norm                    (B, T, C)
    logits                        (B, T, V)

``run_with_cache`` records any of them in one forward pass; ``run_with_hooks`` lets a function replace
any of them (activation patching). With no hooks installed the model takes its fast path.

One module, read top to bottom like a single model file: the layers, the cache and the named activations are one
forward pass; the lean decoding step that bypasses them lives in ``iluvattnshun.decode``.
"""

import contextlib
import difflib
import math
from typing import Any, Callable, Iterator, Mapping, NamedTuple, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from iluvattnshun.compat import model_sizes
from iluvattnshun.decode import Decoder, allocate_cache, check_generate_args, sampling_loop

HookFn = Callable[[torch.Tensor, str], torch.Tensor | None]
"""A hook receives an activation and its name; returning a tensor replaces the activation."""

NameFilter = Sequence[str] | Callable[[str], bool] | None


class RotaryEmbedding(nn.Module):
    """Rotary position embedding (Su et al., 2021) in the rotate-half layout.

    The cos/sin tables are computed once and reused; they grow (to the next power of two) when a longer
    sequence arrives and are rebuilt only when the device or dtype changes.
    """

    inv_freq: torch.Tensor

    def __init__(self, head_dim: int, base: float = 10000.0) -> None:
        super().__init__()
        if head_dim % 2 != 0:
            raise ValueError(f"RoPE needs an even head_dim, got {head_dim}")
        self.head_dim = head_dim
        self.base = base
        inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)  # (D/2,)
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self._cos: torch.Tensor | None = None  # (L, D), in the dtype and device last asked for
        self._sin: torch.Tensor | None = None

    def tables(self, length: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (cos, sin) of shape (length, head_dim), from the cache when it is large enough."""
        cos, sin = self._cos, self._sin
        if cos is None or sin is None or cos.shape[0] < length or cos.device != device or cos.dtype != dtype:
            size = max(length, 1 << max(length - 1, 0).bit_length(), cos.shape[0] if cos is not None else 0)
            # Normal tensors even when first asked for in inference mode (generate): training reuses them.
            with torch.inference_mode(False), torch.no_grad():
                # The angles are computed in float32 (and on the target device) so that every dtype gets the
                # same positions; bf16 angles would be off by whole radians at position ~1000.
                pos = torch.arange(size, device=device, dtype=torch.float32)
                freqs = torch.outer(pos, self.inv_freq.to(device=device, dtype=torch.float32))  # (L, D/2)
                # The rotate-half sign is folded into the sin table: rotate(x) = x * cos + cat(x2, x1) * sin.
                cos = torch.cat([freqs.cos(), freqs.cos()], dim=-1).to(dtype)  # (L, D)
                sin = torch.cat([-freqs.sin(), freqs.sin()], dim=-1).to(dtype)  # (L, D)
            self._cos, self._sin = cos, sin
        return cos[:length], sin[:length]

    def forward(self, x: torch.Tensor, offset: int = 0) -> torch.Tensor:
        """Rotate ``x`` of shape (..., T, head_dim) as if its first position were ``offset``."""
        seq_len = x.shape[-2]
        cos, sin = self.tables(offset + seq_len, x.device, x.dtype)
        cos, sin = cos[offset:], sin[offset:]  # (T, D)
        return rotate(x, cos, sin)

    def rotate_tokens_first(self, x: torch.Tensor, offset: int = 0) -> torch.Tensor:
        """Rotate ``x`` of shape (B, T, ..., head_dim), positions along dim 1, as if its first were ``offset``.

        This is the qkv projection's own layout: rotating there, before the heads are moved in front of the
        positions, keeps every tensor dense and the moves free views (the same numbers as ``forward``).
        """
        seq_len = x.shape[1]
        cos, sin = self.tables(offset + seq_len, x.device, x.dtype)
        table_shape = (seq_len,) + (1,) * (x.dim() - 3) + (self.head_dim,)
        cos, sin = cos[offset:].view(table_shape), sin[offset:].view(table_shape)  # (T, 1, ..., D)
        return rotate(x, cos, sin)


class _Rotate(torch.autograd.Function):
    """``x * cos + cat(x2, x1) * sin`` (rotate-half RoPE, its sign folded into ``sin``) without the cat.

    Each half of the output takes the other half's product in place, forward and backward: the same roundings in
    the same order as the plain expression (bitwise the same numbers), in fewer kernels and a single autograd node.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(cos, sin)
        h = x.shape[-1] // 2
        out = x * cos
        out[..., :h] += x[..., h:] * sin[..., :h]
        out[..., h:] += x[..., :h] * sin[..., h:]
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        cos, sin = ctx.saved_tensors
        h = grad.shape[-1] // 2
        grad_sin = grad * sin  # the rotation's transpose is the same swap of halves
        grad_x = grad * cos
        grad_x[..., :h] += grad_sin[..., h:]
        grad_x[..., h:] += grad_sin[..., :h]
        return grad_x, None, None


_rotate_apply: Callable[..., torch.Tensor] = _Rotate.apply
"""``_Rotate.apply`` with its return type (torch types ``Function.apply`` in some releases and not in others)."""


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE of ``x`` (..., D) with (cos, sin) tables broadcastable to it, as ``RotaryEmbedding.tables`` makes them."""
    return _rotate_apply(x, cos, sin)


class KVCache:
    """Per-layer key/value buffers, preallocated and written in place.

    ``keys[i]`` and ``values[i]`` have shape (B, H, capacity, D); positions ``[0, length)`` are filled.
    Buffers are allocated on the first write (so they take the dtype the attention actually computes in,
    e.g. bf16 under autocast). Writing past ``capacity`` grows the buffers by doubling: decoding never
    fails for lack of room, and a cache sized up front (as ``generate`` does) never reallocates.

    The cache is mutated in place by the model; use ``clone()`` to branch from a shared prefix.
    """

    def __init__(self, num_layers: int, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"KVCache capacity must be >= 1, got {capacity}")
        self.keys: list[torch.Tensor | None] = [None] * num_layers
        self.values: list[torch.Tensor | None] = [None] * num_layers
        self.capacity = capacity
        self.length = 0

    def __len__(self) -> int:
        return self.length

    def reserve(self, length: int) -> None:
        """Make room for ``length`` positions, doubling the capacity as often as needed."""
        if length <= self.capacity:
            return
        new_capacity = self.capacity
        while new_capacity < length:
            new_capacity *= 2
        for buffers in (self.keys, self.values):
            for i, buf in enumerate(buffers):
                if buf is not None:
                    grown = buf.new_empty(buf.shape[0], buf.shape[1], new_capacity, buf.shape[3])
                    grown[:, :, : self.length] = buf[:, :, : self.length]
                    buffers[i] = grown
        self.capacity = new_capacity

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store new keys/values (B, H, T, D) after the filled positions; return all keys/values (B, H, S, D)."""
        start, end = self.length, self.length + k.shape[2]
        kbuf, vbuf = self.keys[layer], self.values[layer]
        if kbuf is None or vbuf is None:
            shape = (k.shape[0], k.shape[1], self.capacity, k.shape[3])
            kbuf, vbuf = allocate_cache(k.new_empty, shape), allocate_cache(v.new_empty, shape)
            self.keys[layer], self.values[layer] = kbuf, vbuf
        elif kbuf.shape[0] != k.shape[0]:
            raise ValueError(f"KV cache holds batch size {kbuf.shape[0]} but the input has batch size {k.shape[0]}")
        elif (kbuf.shape[1], kbuf.shape[3]) != (k.shape[1], k.shape[3]):
            raise ValueError(
                f"KV cache layer {layer} holds {kbuf.shape[1]} heads of dim {kbuf.shape[3]}, this model's "
                f"{k.shape[1]} heads of dim {k.shape[3]}: the cache comes from another model"
            )
        kbuf[:, :, start:end] = k
        vbuf[:, :, start:end] = v
        return kbuf[:, :, :end], vbuf[:, :, :end]

    def clone(self) -> "KVCache":
        """An independent copy (buffers copied), to branch decoding from a shared prefix."""
        out = KVCache(len(self.keys), self.capacity)
        out.keys = [None if k is None else k.clone() for k in self.keys]
        out.values = [None if v is None else v.clone() for v in self.values]
        out.length = self.length
        return out


class _Hookable(nn.Module):
    """Gives a module named hook points that share one registry with the rest of the model."""

    def __init__(self) -> None:
        super().__init__()
        self._hook_prefix = ""
        self._hook_fns: dict[str, HookFn] = {}

    def _hook(self, name: str, x: torch.Tensor) -> torch.Tensor:
        if not self._hook_fns:  # the common case: one dict truth test, nothing else
            return x
        full = self._hook_prefix + name
        fn = self._hook_fns.get(full)
        if fn is None:
            return x
        out = fn(x, full)
        return x if out is None else out

    def _hooked(self, name: str) -> bool:
        return bool(self._hook_fns) and (self._hook_prefix + name) in self._hook_fns


class Attention(_Hookable):
    """Multi-head causal self-attention with RoPE and an optional KV cache."""

    def __init__(
        self,
        dim_model: int,
        num_heads: int,
        rope_base: float = 10000.0,
        bias: bool = True,
        layer_idx: int = 0,
        qk_norm: bool = False,
    ) -> None:
        super().__init__()
        self.layer_idx = layer_idx  # which layer of a KVCache this module reads and writes
        if dim_model % num_heads != 0:
            raise ValueError(f"dim_model ({dim_model}) must be divisible by num_heads ({num_heads})")
        self.dim_model = dim_model
        self.num_heads = num_heads
        self.head_dim = dim_model // num_heads
        self.qkv_proj = nn.Linear(dim_model, 3 * dim_model, bias=bias)  # one matmul for q, k and v
        self.out_proj = nn.Linear(dim_model, dim_model, bias=bias)
        self.rotary = RotaryEmbedding(self.head_dim, rope_base)
        # QK-norm: queries and keys RMS-normalised per head, times a learnable gain per head dimension (shared by
        # the heads), before RoPE. Bounded scores keep the softmax out of its flat, uniform regime, where the
        # gradient that would sharpen attention vanishes (the first plateau of multi-hop tasks).
        # One vector (q's gain, then k's): like every norm gain it is neither re-initialised nor weight-decayed.
        self.qk_gain = nn.Parameter(torch.ones(2 * self.head_dim)) if qk_norm else None  # (2D,)

    def forward(
        self,
        x: torch.Tensor,
        *,
        kv_cache: KVCache | None = None,
        key_padding_mask: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
        return_attn_weights: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Attend from the new tokens ``x`` to the cached ones and to themselves, causally.

        Args:
            x: (B, T, C) input of the new tokens.
            kv_cache: keys/values of earlier positions; the new ones are written into its layer ``layer_idx`` at
                ``kv_cache.length``.
            key_padding_mask: (B, S) with True at keys to ignore (S counts cached and new positions).
            attn_mask: a precomputed (B or 1, 1, T, S) boolean mask, True = may attend (the model builds it once
                for all layers); built here from the other arguments when None.
            return_attn_weights: compute the softmax explicitly and return it.

        Returns:
            (output (B, T, C), attention weights (B, H, T, S) or None)
        """
        B, T, C = x.shape
        offset = kv_cache.length if kv_cache is not None else 0
        qkv = self.qkv_proj(x).view(B, T, 3, self.num_heads, self.head_dim)  # (B, T, 3, H, D)
        qk, v = qkv.split([2, 1], dim=2)  # (B, T, 2, H, D), (B, T, 1, H, D): one node, its backward one cat
        if self.qk_gain is not None:
            qk = F.rms_norm(qk, (self.head_dim,)) * self.qk_gain.view(2, 1, self.head_dim)  # (B, T, 2, H, D)
        # One rotation for q and k together, in the projection's layout; moving the heads forward is then a view.
        q, k = self.rotary.rotate_tokens_first(qk, offset).permute(2, 0, 3, 1, 4).unbind(0)  # 2 x (B, H, T, D)
        v = v.squeeze(2).transpose(1, 2)  # (B, H, T, D)
        q, k, v = self._hook("q", q), self._hook("k", k), self._hook("v", v)
        if kv_cache is not None:
            k, v = kv_cache.write(self.layer_idx, k, v)  # (B, H, S, D)
        S = k.shape[2]

        if attn_mask is None:
            attn_mask = causal_mask(T, S, x.device, key_padding_mask)
        need_weights = return_attn_weights or self._hooked("weights")
        weights: torch.Tensor | None = None
        if need_weights:
            # Explicit path: materialise the (T, S) pattern so it can be returned or patched.
            scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(self.head_dim))  # (B, H, T, S)
            mask = attn_mask if attn_mask is not None or T == 1 else causal_mask(T, S, x.device, force=True)
            if mask is not None:
                scores = scores.masked_fill(~mask, float("-inf"))
            weights = self._hook("weights", torch.softmax(scores, dim=-1))
            z = weights @ v  # (B, H, T, D)
        else:
            # Fast path: fused kernel (flash / memory-efficient on GPU), same numbers as the explicit path.
            # Without a mask, T > 1 means S == T (plain causal); T == 1 attends to everything cached.
            is_causal = attn_mask is None and T > 1
            z = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal)  # (B, H, T, D)
        z = self._hook("z", z)
        out = self.out_proj(z.transpose(1, 2).reshape(B, T, C))  # (B, T, C)
        return self._hook("out", out), weights


def causal_mask(
    T: int, S: int, device: torch.device, key_padding_mask: torch.Tensor | None = None, force: bool = False
) -> torch.Tensor | None:
    """Boolean mask (True = may attend) for T new queries over S keys, the last T of which are the queries.

    Query i sits at absolute position S - T + i and sees keys 0 .. S - T + i: causal within the new block and
    the whole cache before it. Returns None when plain causal attention with S == T suffices (or when a single
    query needs no mask), unless ``force``. Padding removes keys; each query always keeps its own position so
    that a padded query row stays finite (its output is meaningless and must be masked out of any loss).
    """
    if key_padding_mask is None and not force and (S == T or T == 1):
        return None
    offset = S - T
    q_pos = torch.arange(T, device=device).unsqueeze(1) + offset  # (T, 1)
    k_pos = torch.arange(S, device=device).unsqueeze(0)  # (1, S)
    mask = (k_pos <= q_pos).view(1, 1, T, S)  # (1, 1, T, S)
    if key_padding_mask is not None:
        if key_padding_mask.shape[-1] != S:
            raise ValueError(
                f"key_padding_mask covers {key_padding_mask.shape[-1]} positions but attention has {S} keys "
                f"(cached + new)"
            )
        keep = ~key_padding_mask.to(device=device, dtype=torch.bool).view(-1, 1, 1, S)  # (B, 1, 1, S)
        mask = (mask & keep) | (k_pos == q_pos).view(1, 1, T, S)
    return mask


class MLP(_Hookable):
    """Position-wise feed-forward: C -> 4C -> C with GELU."""

    def __init__(self, dim_model: int, bias: bool = True) -> None:
        super().__init__()
        self.fc_in = nn.Linear(dim_model, 4 * dim_model, bias=bias)
        self.fc_out = nn.Linear(4 * dim_model, dim_model, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self._hook("hidden", F.gelu(self.fc_in(x)))  # (B, T, 4C)
        return self._hook("out", self.fc_out(hidden))  # (B, T, C)


class TransformerLayer(_Hookable):
    """Pre-LayerNorm block: x + drop(attn(ln(x))), then x + drop(mlp(ln(x)))."""

    def __init__(
        self,
        dim_model: int,
        num_heads: int,
        rope_base: float = 10000.0,
        dropout_attn: float = 0.0,
        dropout_mlp: float = 0.0,
        bias: bool = True,
        layer_idx: int = 0,
        qk_norm: bool = False,
    ) -> None:
        super().__init__()
        self.norm_attn = nn.LayerNorm(dim_model)
        self.attn = Attention(dim_model, num_heads, rope_base, bias=bias, layer_idx=layer_idx, qk_norm=qk_norm)
        self.dropout_attn = nn.Dropout(dropout_attn)
        self.norm_mlp = nn.LayerNorm(dim_model)
        self.mlp = MLP(dim_model, bias=bias)
        self.dropout_mlp = nn.Dropout(dropout_mlp)

    def forward(
        self, x: torch.Tensor, kv_cache: KVCache | None, attn_mask: torch.Tensor | None, return_attn_weights: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Returns (residual stream (B, T, C), attention weights or None); the arguments are ``Attention``'s
        (``attn_mask`` is the model's mask, padding included, built once for all layers)."""
        x = self._hook("resid_pre", x)
        attn_out, weights = self.attn(
            self.norm_attn(x), kv_cache=kv_cache, attn_mask=attn_mask, return_attn_weights=return_attn_weights
        )
        x = self._hook("resid_mid", x + dropout(self.dropout_attn, attn_out))
        x = x + dropout(self.dropout_mlp, self.mlp(self.norm_mlp(x)))
        return self._hook("resid_post", x), weights


def dropout(module: nn.Dropout, x: torch.Tensor) -> torch.Tensor:
    """``module(x)``, skipped where it is the identity (evaluation, or p = 0: the CPU recipes' default)."""
    return module(x) if module.training and module.p > 0 else x


class ModelOutput(NamedTuple):
    """What ``MultilayerTransformer.forward`` returns; unpacks as ``logits, kv_cache, attn_weights, xs``."""

    logits: torch.Tensor
    """(B, T, V) next-token logits."""
    kv_cache: KVCache | None
    """The cache holding this call's keys/values when ``return_new_kv_cache`` (else None)."""
    attn_weights: list[torch.Tensor]
    """Per layer (B, H, T, S) when ``return_attn_weights`` (else empty)."""
    xs: list[torch.Tensor]
    """Residual stream after the embedding and after every layer (num_layers + 1 entries) when ``return_xs``."""


class MultilayerTransformer(_Hookable):
    """Decoder-only RoPE transformer over a token vocabulary.

    Design decisions: pre-LayerNorm blocks followed by a final LayerNorm (without it the residual stream's
    growing norm reaches the unembedding unnormalised); untied input embedding and output projection (with
    vocabularies of a few dozen symbols tying saves nothing and entangles the two roles that interpretability
    work wants to read separately; ``tie_weights=True`` ties them). Initialisation follows GPT-2: N(0, 0.02),
    with the projections that write into the residual stream scaled by 1/sqrt(2 * num_layers).
    """

    def __init__(
        self,
        vocab_size: int,
        dim_model: int = 128,
        num_heads: int = 4,
        num_layers: int = 4,
        rope_base: float = 10000.0,
        dropout_attn: float = 0.0,
        dropout_mlp: float = 0.0,
        dropout_emb: float = 0.0,
        bias: bool = True,
        tie_weights: bool = False,
        qk_norm: bool = False,
        **original_names: int,
    ) -> None:
        """Args are ``ModelConfig``'s fields, and these defaults are its defaults (it reads them from here); the
        original names ``d_model``, ``n_heads`` and ``n_layers`` are
        accepted for ``dim_model``, ``num_heads`` and ``num_layers``."""
        super().__init__()
        sizes = model_sizes({"dim_model": dim_model, "num_heads": num_heads, "num_layers": num_layers}, original_names)
        dim_model, num_heads, num_layers = sizes["dim_model"], sizes["num_heads"], sizes["num_layers"]
        # The constructor arguments: MultilayerTransformer(**model.init_kwargs) builds the same architecture.
        self.init_kwargs: dict[str, Any] = {
            "vocab_size": vocab_size,
            **sizes,
            "rope_base": rope_base,
            "dropout_attn": dropout_attn,
            "dropout_mlp": dropout_mlp,
            "dropout_emb": dropout_emb,
            "bias": bias,
            "tie_weights": tie_weights,
            "qk_norm": qk_norm,
        }
        for name, value in (("vocab_size", vocab_size), ("dim_model", dim_model), ("num_heads", num_heads)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if num_layers < 0:
            raise ValueError(f"num_layers must be >= 0, got {num_layers}")
        self.vocab_size = vocab_size
        self.dim_model = dim_model
        self.num_heads = num_heads
        self.num_layers = num_layers
        self.head_dim = dim_model // num_heads
        self.token_embedding = nn.Embedding(vocab_size, dim_model)
        self.dropout_emb = nn.Dropout(dropout_emb)
        self.layers = nn.ModuleList(
            TransformerLayer(
                dim_model, num_heads, rope_base, dropout_attn, dropout_mlp, bias=bias, layer_idx=i, qk_norm=qk_norm
            )
            for i in range(num_layers)
        )
        self.final_norm = nn.LayerNorm(dim_model)
        self.unembed = nn.Linear(dim_model, vocab_size, bias=False)
        if tie_weights:
            self.unembed.weight = self.token_embedding.weight
        self._init_weights()

        # One registry shared by every hookable submodule; names are the submodules' dotted paths.
        for path, module in self.named_modules():
            if isinstance(module, _Hookable):
                module._hook_prefix = f"{path}." if path else ""
                module._hook_fns = self._hook_fns
        self._names = self._list_activation_names()

    def _init_weights(self) -> None:
        residual_std = 0.02 / math.sqrt(2 * max(self.num_layers, 1))
        for name, p in self.named_parameters():
            if p.dim() < 2:
                continue  # norm gains and biases keep their defaults (ones / zeros)
            std = residual_std if name.endswith(("out_proj.weight", "fc_out.weight")) else 0.02
            nn.init.normal_(p, mean=0.0, std=std)
        for module in self.modules():
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)

    # ----------------------------------------------------------------------------------------------------------
    # Forward and generation

    def forward(
        self,
        x: torch.Tensor,
        kv_cache: KVCache | None = None,
        return_new_kv_cache: bool = False,
        return_attn_weights: bool = False,
        return_xs: bool = False,
        key_padding_mask: torch.Tensor | None = None,
    ) -> ModelOutput:
        """Run the model on token ids.

        Args:
            x: (B, T) token ids.
            kv_cache: keys/values of earlier positions (from ``new_kv_cache`` or a previous call). ``x`` is
                treated as the continuation: positions start at ``kv_cache.length``.
            return_new_kv_cache: advance the cache by this call's T positions and return it. Without a given
                cache a new one is made. With a given cache and False, the cache is only read (its length does
                not move).
            return_attn_weights: return per-layer attention patterns (uses the explicit softmax path).
            return_xs: return the residual stream after the embedding and after every layer.
            key_padding_mask: (B, S) True at positions to ignore as keys, S = cached + new positions.

        Returns:
            ``ModelOutput(logits, kv_cache, attn_weights, xs)``.
        """
        if x.dim() != 2:
            raise ValueError(f"expected token ids of shape (batch, seq), got {tuple(x.shape)}")
        if x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool:
            raise ValueError(f"token ids must be integers, got {x.dtype}")
        if x.dtype not in (torch.int64, torch.int32):
            x = x.long()  # the datasets store tokens in the smallest integer dtype; the embedding reads these two
        if x.device.type == "cpu" and x.numel():
            # (on a GPU the check would cost a sync per forward; the embedding asserts there instead)
            lo, hi = (int(v) for v in torch.aminmax(x))  # one pass over the ids
            if not 0 <= lo <= hi < self.vocab_size:
                raise ValueError(f"token ids must be in [0, {self.vocab_size}), got {lo}..{hi}")
        if kv_cache is not None and len(kv_cache.keys) != self.num_layers:
            raise ValueError(
                f"the KV cache has {len(kv_cache.keys)} layers, this model {self.num_layers}: it comes from another model"
            )
        B, T = x.shape
        if kv_cache is None and return_new_kv_cache:
            kv_cache = KVCache(self.num_layers, T)
        offset = kv_cache.length if kv_cache is not None else 0
        if kv_cache is not None:
            kv_cache.reserve(offset + T)
        attn_mask = causal_mask(T, offset + T, x.device, key_padding_mask)  # built once, shared by all layers

        h = self._hook("embed", dropout(self.dropout_emb, self.token_embedding(x)))  # (B, T, C)
        xs = [h] if return_xs else []
        attn_weights: list[torch.Tensor] = []
        for layer in self.layers:
            h, weights = layer(h, kv_cache, attn_mask, return_attn_weights)
            if return_attn_weights and weights is not None:
                attn_weights.append(weights)
            if return_xs:
                xs.append(h)
        h = self._hook("final_norm", self.final_norm(h))
        logits = self._hook("logits", self.unembed(h))  # (B, T, V)

        if kv_cache is not None and return_new_kv_cache:
            kv_cache.length = offset + T
        return ModelOutput(logits, kv_cache if return_new_kv_cache else None, attn_weights, xs)

    def new_kv_cache(self, capacity: int) -> KVCache:
        """An empty cache with room for ``capacity`` positions (it grows if exceeded)."""
        return KVCache(self.num_layers, capacity)

    @torch.no_grad()
    def generate(
        self,
        prompt: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
        fast: bool = True,
    ) -> torch.Tensor:
        """Sample ``max_new_tokens`` tokens after ``prompt`` using the KV cache.

        The prompt is prefilled once; afterwards each sampled token is fed exactly once, through
        ``iluvattnshun.decode.Decoder``'s lean one-token step unless a hook is installed (hooks see every
        activation of the general forward pass) or ``fast`` is false. The model is put in eval mode for the call
        and restored afterwards.

        Args:
            prompt: (B, P) token ids of any integer dtype, on the model's device; all prompts in a batch have the
                same length.
            max_new_tokens: number of tokens to append (an int).
            temperature: 0 means greedy (argmax); any other finite value > 0 divides the logits before sampling
                (a tiny one approaches greedy; see ``sample_tokens``).
            top_k: sample only among the k most likely tokens (an int).
            generator: a ``torch.Generator`` on the model's device for reproducible sampling.
            fast: use the lean one-token step (same tokens as the general forward pass).

        Returns:
            (B, P + max_new_tokens) int64: the prompt followed by the new tokens.

        Raises:
            TypeError, ValueError: naming a bad argument (see ``check_generate_args``), before any work.
        """
        prompt = check_generate_args(prompt, max_new_tokens, temperature, top_k, self)
        max_new_tokens = int(max_new_tokens)
        B, P = prompt.shape
        if fast and not self._hook_fns:
            decoder = Decoder(self, B, P + max_new_tokens)  # sized for this call: no check left to repeat
            return sampling_loop(
                self, prompt, max_new_tokens, decoder.prefill, decoder.step, temperature, top_k, generator
            )
        cache = self.new_kv_cache(P + max_new_tokens)

        def prefill(tokens: torch.Tensor) -> torch.Tensor:
            logits: torch.Tensor = self(tokens, kv_cache=cache, return_new_kv_cache=True).logits[:, -1]  # (B, V)
            return logits

        def step(token: torch.Tensor, position: int) -> torch.Tensor:
            return prefill(token[:, None])  # the cache knows the position

        return sampling_loop(self, prompt, max_new_tokens, prefill, step, temperature, top_k, generator)

    # ----------------------------------------------------------------------------------------------------------
    # Named activations: caching and patching

    def _list_activation_names(self) -> list[str]:
        names = ["embed"]
        for i in range(self.num_layers):
            p = f"layers.{i}."
            names += [p + "resid_pre"]
            names += [p + f"attn.{n}" for n in ("q", "k", "v", "weights", "z", "out")]
            names += [p + "resid_mid", p + "mlp.hidden", p + "mlp.out", p + "resid_post"]
        return names + ["final_norm", "logits"]

    def activation_names(self) -> list[str]:
        """All hookable activation names, in the order the forward pass produces them."""
        return list(self._names)

    def _select_names(self, names: NameFilter) -> list[str]:
        if names is None:
            return self.activation_names()
        if callable(names):
            return [n for n in self._names if names(n)]
        self._check_names(names)
        return list(names)

    def _check_names(self, names: Sequence[str] | Mapping[str, object]) -> None:
        known = set(self._names)
        for name in names:
            if name not in known:
                close = difflib.get_close_matches(name, self._names, n=3)
                hint = f"; did you mean {', '.join(close)}?" if close else "; see model.activation_names()"
                raise ValueError(f"unknown activation name {name!r}{hint}")

    @contextlib.contextmanager
    def hooks(self, hooks: Mapping[str, HookFn]) -> Iterator[None]:
        """Install ``{name: fn}`` hooks for the duration of a ``with`` block; they are removed even on error."""
        self._check_names(hooks)
        clash = set(hooks) & set(self._hook_fns)
        if clash:
            raise ValueError(f"hooks already installed for {sorted(clash)}")
        self._hook_fns.update(hooks)
        try:
            yield
        finally:
            for name in hooks:
                self._hook_fns.pop(name, None)

    def run_with_hooks(self, x: torch.Tensor, hooks: Mapping[str, HookFn], **kwargs: bool) -> ModelOutput:
        """One forward pass with hooks; each ``fn(tensor, name)`` may return a replacement tensor.

        Hooking ``layers.{i}.attn.weights`` switches that layer to the explicit attention path.
        """
        with self.hooks(hooks):
            out: ModelOutput = self(x, **kwargs)
        return out

    def run_with_cache(
        self, x: torch.Tensor, names: NameFilter = None, detach: bool = True, **kwargs: bool
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One forward pass recording activations.

        Args:
            x: (B, T) token ids.
            names: which activations to record: a list of names, a predicate on names, or None for all.
            detach: store detached tensors (set False to keep gradients flowing through the cache).

        Returns:
            (logits, {name: tensor}) with names in forward order.
        """
        cache: dict[str, torch.Tensor] = {}

        def record(t: torch.Tensor, name: str) -> None:
            cache[name] = t.detach() if detach else t

        selected = self._select_names(names)
        out = self.run_with_hooks(x, {n: record for n in selected}, **kwargs)
        order = {n: i for i, n in enumerate(self._names)}
        return out.logits, dict(sorted(cache.items(), key=lambda kv: order[kv[0]]))


def flops_per_token(model: MultilayerTransformer, seq_len: int, training: bool = True) -> float:
    """Model FLOPs per token, the PaLM / nanoGPT convention: 6N + 12 * L * C * T for training, a third of it
    for a forward pass. N counts matmul weights only (embedding lookups are free); the attention term counts
    the full T x T square, as the convention does, not the causal half."""
    matmul_params = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    forward = 2 * matmul_params + 2 * 2 * model.num_layers * seq_len * model.dim_model
    return float(forward * (3 if training else 1))
