"""Fast autoregressive decoding: a preallocated key/value cache and a lean one-token step.

``MultilayerTransformer.forward`` is general (hooks, masks, any number of new tokens), which costs about sixty
small operations per layer per token; at batch 1 a token's time is then mostly Python and dispatch, not
arithmetic. The ``Decoder`` runs the same weights through a step written for one token: the cache is allocated at
its final size and written in place, attention reads the written prefix with two matrix products and a softmax,
RoPE is one row of the precomputed tables and a roll, and every weight and cache view is taken once, up front.
The prompt is prefilled by the model itself; only the one-token steps take this path, and they compute what the
model computes: greedy decoding gives the same tokens (``tests/test_decode.py``).
``MultilayerTransformer.generate`` uses it whenever no hook is installed.
"""

import math
from typing import NamedTuple, cast

import torch
import torch.nn.functional as F

from iluvattnshun.nn import MultilayerTransformer, RotaryEmbedding, TransformerLayer, check_generate_args, sampling_loop


class _Layer(NamedTuple):
    """One layer's tensors as the step reads them."""

    norm_attn: tuple[torch.Tensor, torch.Tensor | None, float]
    qkv: tuple[torch.Tensor, torch.Tensor | None]
    out: tuple[torch.Tensor, torch.Tensor | None]
    norm_mlp: tuple[torch.Tensor, torch.Tensor | None, float]
    fc_in: tuple[torch.Tensor, torch.Tensor | None]
    fc_out: tuple[torch.Tensor, torch.Tensor | None]
    keys: torch.Tensor
    """(B, H, capacity, D), a view of the decoder's cache."""
    values: torch.Tensor


class Decoder:
    """Decodes from one model at a fixed batch size and capacity; build it once and reuse it for many prompts.

    The step reads the model's parameters (not copies), so a model trained further is seen; a model moved to
    another device or dtype needs a new decoder.
    """

    def __init__(self, model: MultilayerTransformer, batch_size: int, capacity: int) -> None:
        """Args:
        model: the model.
        batch_size: prompts decoded together.
        capacity: longest prompt + new tokens this decoder serves.
        """
        if capacity < 1 or batch_size < 1:
            raise ValueError(f"batch_size and capacity must be >= 1, got {batch_size}, {capacity}")
        param = next(model.parameters())
        self.model = model
        self.batch_size = batch_size
        self.capacity = capacity
        shape = (model.num_layers, 2, batch_size, model.num_heads, capacity, model.head_dim)
        self.cache = torch.zeros(shape, device=param.device, dtype=param.dtype)  # zeros: masked slots stay finite
        blocks = [cast(TransformerLayer, block) for block in model.layers]
        self.layers = [
            _Layer(
                (b.norm_attn.weight, b.norm_attn.bias, b.norm_attn.eps),
                (b.attn.qkv_proj.weight, b.attn.qkv_proj.bias),
                (b.attn.out_proj.weight, b.attn.out_proj.bias),
                (b.norm_mlp.weight, b.norm_mlp.bias, b.norm_mlp.eps),
                (b.mlp.fc_in.weight, b.mlp.fc_in.bias),
                (b.mlp.fc_out.weight, b.mlp.fc_out.bias),
                self.cache[i, 0],
                self.cache[i, 1],
            )
            for i, b in enumerate(blocks)
        ]
        rotary = blocks[0].attn.rotary if blocks else RotaryEmbedding(model.head_dim)
        self.cos, self.sin = rotary.tables(capacity, param.device, param.dtype)  # (capacity, D)
        self.scale = 1.0 / math.sqrt(model.head_dim)

    @torch.no_grad()
    def generate(
        self,
        prompt: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """As ``MultilayerTransformer.generate``: (B, P) prompt -> (B, P + max_new_tokens) tokens."""
        check_generate_args(prompt, max_new_tokens, temperature, top_k)
        B, P = prompt.shape
        if B != self.batch_size or P + max_new_tokens > self.capacity:
            raise ValueError(
                f"this decoder serves batch {self.batch_size} and {self.capacity} positions, got batch {B} and "
                f"{P} + {max_new_tokens} positions"
            )
        return sampling_loop(self.model, prompt, max_new_tokens, self.prefill, self.step, temperature, top_k, generator)

    @torch.no_grad()
    def prefill(self, prompt: torch.Tensor) -> torch.Tensor:
        """Logits (B, V) after the (B, P) prompt, run through the general forward pass; its keys and values are
        copied into the static cache."""
        P = prompt.shape[1]
        out = self.model(prompt, return_new_kv_cache=True)
        assert out.kv_cache is not None
        for i, layer in enumerate(self.layers):
            layer.keys[:, :, :P] = out.kv_cache.keys[i][:, :, :P]
            layer.values[:, :, :P] = out.kv_cache.values[i][:, :, :P]
        logits: torch.Tensor = out.logits[:, -1]
        return logits

    @torch.no_grad()
    def step(self, token: torch.Tensor, position: int) -> torch.Tensor:
        """Logits (B, V) after feeding ``token`` (B,) at ``position``; writes its keys and values into the cache."""
        model = self.model
        B, C, H, D = token.shape[0], model.dim_model, model.num_heads, model.head_dim
        cos, sin = self.cos[position], self.sin[position]  # (D,)
        x = F.embedding(token, model.token_embedding.weight)  # (B, C)
        for layer in self.layers:
            h = F.layer_norm(x, (C,), *layer.norm_attn)
            qkv = F.linear(h, *layer.qkv).view(B, 3, H, D)
            qk = qkv[:, :2]
            # RoPE for one position: the rotate-half sign is folded into sin, so rotating is a roll by D/2.
            q, k = torch.addcmul(qk * cos, qk.roll(D // 2, -1), sin).unbind(1)  # (B, H, D)
            layer.keys[:, :, position] = k
            layer.values[:, :, position] = qkv[:, 2]
            keys, values = layer.keys[:, :, : position + 1], layer.values[:, :, : position + 1]  # (B, H, S, D)
            weights = (q.unsqueeze(2) @ keys.transpose(-2, -1)).mul_(self.scale).softmax(-1)  # (B, H, 1, S)
            x = x + F.linear((weights @ values).view(B, C), *layer.out)
            h = F.layer_norm(x, (C,), *layer.norm_mlp)
            x = x + F.linear(F.gelu(F.linear(h, *layer.fc_in)), *layer.fc_out)
        x = F.layer_norm(x, (C,), model.final_norm.weight, model.final_norm.bias, model.final_norm.eps)
        return F.linear(x, model.unembed.weight)  # (B, V)
