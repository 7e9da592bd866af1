"""Fast autoregressive decoding: a static key/value cache and a lean one-token step.

``MultilayerTransformer.forward`` is general (hooks, masks, any number of new tokens), which costs about sixty
small operations per layer per token; at batch 1 a token's time is then mostly dispatch, not arithmetic. The
``Decoder`` here runs the same weights through a step written for one token: the cache is preallocated at its
final size (B, H, capacity, D) and written in place at the step's position, attention covers the whole cache with
the positions not yet written masked out, so every step has the same shapes, and RoPE reads one precomputed row.
That is about a third of the operations, and, with the same shapes at every step, one graph ``torch.compile`` can
fuse once and replay (CUDA graphs on a GPU, ``mode="reduce-overhead"``).

The prompt is prefilled by the model itself; only the single-token steps take this path, and they compute what
the model computes (greedy decoding gives the same tokens; ``tests/test_decode.py``).
"""

import math
from typing import Callable, cast

import torch
import torch.nn.functional as F

from iluvattnshun.nn import MultilayerTransformer, RotaryEmbedding, TransformerLayer

Step = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class Decoder:
    """Decodes from one model at a fixed batch size and capacity; build it once and reuse it for many prompts."""

    def __init__(self, model: MultilayerTransformer, batch_size: int, capacity: int, compile: bool = False) -> None:
        """Args:
        model: the model (its weights are read at every step, so training it further is seen).
        batch_size: prompts decoded together.
        capacity: longest prompt + new tokens this decoder serves.
        compile: compile the one-token step with ``torch.compile`` (a fused graph; worth it for many tokens).
        """
        if capacity < 1 or batch_size < 1:
            raise ValueError(f"batch_size and capacity must be >= 1, got {batch_size}, {capacity}")
        param = next(model.parameters())
        self.model = model
        self.batch_size = batch_size
        self.capacity = capacity
        heads, head_dim = model.num_heads, model.head_dim
        shape = (model.num_layers, batch_size, heads, capacity, head_dim)
        self.keys = torch.zeros(shape, device=param.device, dtype=param.dtype)  # zeros: masked slots stay finite
        self.values = torch.zeros(shape, device=param.device, dtype=param.dtype)
        self.blocks = [cast(TransformerLayer, block) for block in model.layers]
        rotary = self.blocks[0].attn.rotary if self.blocks else RotaryEmbedding(head_dim)
        self.cos, self.sin = rotary.tables(capacity, param.device, param.dtype)  # (capacity, D)
        self.positions = torch.arange(capacity, device=param.device)
        self.scale = 1.0 / math.sqrt(head_dim)
        self._step: Step = self._eager_step
        if compile:
            self._step = torch.compile(self._eager_step, fullgraph=True, dynamic=False)

    @torch.no_grad()
    def generate(
        self,
        prompt: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Like ``MultilayerTransformer.generate``: (B, P) prompt -> (B, P + max_new_tokens) tokens."""
        from iluvattnshun.nn import _sample, check_generate_args

        check_generate_args(prompt, max_new_tokens, temperature, top_k)
        B, P = prompt.shape
        if B != self.batch_size or P + max_new_tokens > self.capacity:
            raise ValueError(
                f"this decoder serves batch {self.batch_size} and {self.capacity} positions, got batch {B} and "
                f"{P} + {max_new_tokens} positions"
            )
        model = self.model
        out = prompt.new_empty(B, P + max_new_tokens)
        out[:, :P] = prompt
        if max_new_tokens == 0:
            return out
        was_training = model.training
        model.eval()
        try:
            prefill = model(prompt, return_new_kv_cache=True)
            cache = prefill.kv_cache
            assert cache is not None
            for layer in range(model.num_layers):
                self.keys[layer, :, :, :P] = cache.keys[layer][:, :, :P]
                self.values[layer, :, :, :P] = cache.values[layer][:, :, :P]
            logits = prefill.logits[:, -1]  # (B, V)
            for i in range(max_new_tokens):
                token = _sample(logits, temperature, top_k, generator)  # (B,)
                out[:, P + i] = token
                if i + 1 < max_new_tokens:
                    position = torch.tensor(P + i, device=prompt.device)
                    logits = self._step(token, position)
        finally:
            model.train(was_training)
        return out

    def _eager_step(self, token: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        """Logits (B, V) after feeding ``token`` (B,) at ``position`` (a 0-d tensor); writes its keys/values."""
        model = self.model
        B = token.shape[0]
        where = position.view(1)
        visible = (self.positions <= position).view(1, 1, 1, -1)  # (1, 1, 1, S): written slots only
        cos, sin = self.cos.index_select(0, where), self.sin.index_select(0, where)  # (1, D)
        x = model.token_embedding(token)  # (B, C)
        for layer, block in enumerate(self.blocks):
            attn = block.attn
            h = F.layer_norm(x, (x.shape[-1],), block.norm_attn.weight, block.norm_attn.bias, block.norm_attn.eps)
            qkv = attn.qkv_proj(h).view(B, 3, attn.num_heads, attn.head_dim)  # (B, 3, H, D)
            qk = (
                qkv[:, :2] * cos
                + torch.cat([qkv[:, :2, :, attn.head_dim // 2 :], qkv[:, :2, :, : attn.head_dim // 2]], -1) * sin
            )
            q, k = qk.unbind(1)  # (B, H, D)
            self.keys[layer].index_copy_(2, where, k.unsqueeze(2))  # (B, H, S, D)
            self.values[layer].index_copy_(2, where, qkv[:, 2].unsqueeze(2))
            scores = (q.unsqueeze(2) @ self.keys[layer].transpose(-2, -1)) * self.scale  # (B, H, 1, S)
            weights = torch.softmax(scores.masked_fill(~visible, float("-inf")), dim=-1)
            z = (weights @ self.values[layer]).reshape(B, -1)  # (B, C)
            x = x + attn.out_proj(z)
            h = F.layer_norm(x, (x.shape[-1],), block.norm_mlp.weight, block.norm_mlp.bias, block.norm_mlp.eps)
            x = x + block.mlp.fc_out(F.gelu(block.mlp.fc_in(h)))
        x = F.layer_norm(x, (x.shape[-1],), model.final_norm.weight, model.final_norm.bias, model.final_norm.eps)
        logits: torch.Tensor = model.unembed(x)  # (B, V)
        return logits
