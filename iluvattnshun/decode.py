"""Fast autoregressive decoding: a static key/value cache and a lean one-token step.

``MultilayerTransformer.forward`` is general (hooks, masks, any number of new tokens), which costs about sixty
small operations per layer per token; at batch 1 a token's time is then mostly Python and dispatch, not
arithmetic. The ``Decoder`` runs the same weights through a step written for one token: the cache is preallocated
at its final size and written in place at the step's position, attention covers the whole cache with the unwritten
positions masked out (every step has the same shapes), RoPE reads one precomputed row, and every view of a weight
or cache slice is taken once, up front. The prompt is prefilled by the model itself; only the one-token steps take
this path, and they compute what the model computes: greedy decoding gives the same tokens
(``tests/test_decode.py``). ``MultilayerTransformer.generate`` uses it whenever no hook is installed.

``compile=True`` compiles the step with ``torch.compile`` (same shapes at every step: one graph); on this
project's CPU it was slower than the eager step (bench/RESULTS.md, "Decoding"), so it is off by default.
"""

from typing import Callable, NamedTuple, cast

import torch
import torch.nn.functional as F

from iluvattnshun.nn import MultilayerTransformer, RotaryEmbedding, TransformerLayer, check_generate_args, sample_tokens


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

    def __init__(self, model: MultilayerTransformer, batch_size: int, capacity: int, compile: bool = False) -> None:
        """Args:
        model: the model.
        batch_size: prompts decoded together.
        capacity: longest prompt + new tokens this decoder serves.
        compile: compile the one-token step with ``torch.compile``.
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
        half = model.head_dim // 2
        self.rotate = torch.cat([torch.arange(half, 2 * half), torch.arange(half)]).to(param.device)  # halves swapped
        self.positions = torch.arange(capacity, device=param.device)
        self._step: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = self.step
        if compile:
            self._step = torch.compile(self.step, fullgraph=True, dynamic=False)

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
        model = self.model
        out = prompt.new_empty(B, P + max_new_tokens)  # (B, P + N), filled in place
        out[:, :P] = prompt
        if max_new_tokens == 0:
            return out
        was_training = model.training
        model.eval()
        try:
            prefill = model(prompt, return_new_kv_cache=True)
            cache = prefill.kv_cache
            assert cache is not None
            for i, layer in enumerate(self.layers):
                layer.keys[:, :, :P] = cache.keys[i][:, :, :P]
                layer.values[:, :, :P] = cache.values[i][:, :, :P]
            logits = prefill.logits[:, -1]  # (B, V)
            positions = torch.arange(P, P + max_new_tokens, device=prompt.device)
            for i in range(max_new_tokens):
                token = sample_tokens(logits, temperature, top_k, generator)  # (B,)
                out[:, P + i] = token
                if i + 1 < max_new_tokens:
                    logits = self._step(token, positions[i])
        finally:
            model.train(was_training)
        return out

    @torch.no_grad()
    def step(self, token: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        """Logits (B, V) after feeding ``token`` (B,) at ``position`` (a 0-d tensor); writes its keys/values."""
        model = self.model
        B, C, H, D = token.shape[0], model.dim_model, model.num_heads, model.head_dim
        where = position.view(1)
        cos, sin = self.cos.index_select(0, where), self.sin.index_select(0, where)  # (1, D)
        visible = (self.positions <= position).view(1, -1)  # (1, S): the keys written so far
        x = model.token_embedding(token)  # (B, C)
        for layer in self.layers:
            h = F.layer_norm(x, (C,), *layer.norm_attn)
            qkv = F.linear(h, *layer.qkv).view(B, 3, H, 1, D)  # (B, 3, H, 1, D)
            qk = qkv[:, :2]
            q, k = torch.addcmul(qk * cos, qk.index_select(-1, self.rotate), sin).unbind(1)  # (B, H, 1, D)
            layer.keys.index_copy_(2, where, k)  # (B, H, S, D)
            layer.values.index_copy_(2, where, qkv[:, 2])
            z = F.scaled_dot_product_attention(q, layer.keys, layer.values, attn_mask=visible)  # (B, H, 1, D)
            x = x + F.linear(z.view(B, C), *layer.out)
            h = F.layer_norm(x, (C,), *layer.norm_mlp)
            x = x + F.linear(F.gelu(F.linear(h, *layer.fc_in)), *layer.fc_out)
        x = F.layer_norm(x, (C,), model.final_norm.weight, model.final_norm.bias, model.final_norm.eps)
        logits: torch.Tensor = model.unembed(x)  # (B, V)
        return logits
