"""Fast autoregressive decoding: a preallocated key/value cache and a lean one-token step.

``MultilayerTransformer.forward`` is general (hooks, masks, any number of new tokens), which costs about sixty
small operations per layer per token; at batch 1 a token's time is then mostly Python and dispatch, not
arithmetic. The ``Decoder`` runs the same weights through a step written for one token: the cache is allocated at
its final size and written in place, attention reads the cache with two matrix products and a softmax, RoPE is
one row of the precomputed tables and a roll, and every weight is looked up once, up front. The prompt is
prefilled by the model itself; only the one-token steps take this path, and they compute what the model computes:
greedy decoding gives the same tokens (``tests/test_decode.py``). The sampling loop and argument checks that
``generate`` shares with the decoder live here too; the decoder reads its model through ``DecodableModel``, so this
module imports nothing of ``iluvattnshun.nn`` (which imports it).

Two ways to run the step:

- eager (the default; ``MultilayerTransformer.generate`` uses it whenever no hook is installed): no start-up
  cost, about 25 operations per layer, reads the model's parameters as they are;
- compiled (``Decoder(..., compile=True)``): the step is exported at static shapes (the position is a tensor and
  attention covers the whole capacity under a mask) and compiled ahead of time by AOTInductor into one C++
  function with the weights built in. A token then costs a fraction of the eager step (bench/RESULTS.md,
  "Decoding"), for a compilation of about half a minute when the decoder is built (on this project's 2-core CPU):
  worth it for long or many decodes.
"""

import functools
import math
import tempfile
import warnings
import weakref
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple, Protocol, cast

import torch
import torch.nn as nn
import torch.nn.functional as F

CPU_AOT_OPTIONS: dict[str, Any] = {
    "max_autotune": True,
    "autotune_num_choices_displayed": 0,
    "max_autotune_report_choices_stats": False,
}
"""AOTInductor settings for the compiled step on a CPU: autotuned matrix products (1.4x the untuned compiled step
at batch 1 on this project's CPU; bench/RESULTS.md), without printing the autotuning tables and statistics. On a
GPU the step is compiled untuned until a GPU measurement says otherwise."""


class DecodableModel(Protocol):
    """What a ``Decoder`` reads of its model (``iluvattnshun.nn.MultilayerTransformer`` is one): the sizes, the
    modules whose weights the step uses, and the general forward pass that prefills the prompt."""

    dim_model: int
    num_heads: int
    head_dim: int
    training: bool
    token_embedding: nn.Embedding
    layers: nn.ModuleList
    final_norm: nn.LayerNorm
    unembed: nn.Linear

    def __call__(self, x: torch.Tensor, *, return_new_kv_cache: bool) -> Any: ...

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]: ...

    def train(self, mode: bool = True) -> Any: ...

    def eval(self) -> Any: ...


def allocate_cache(make: Callable[[tuple[int, ...]], torch.Tensor], shape: tuple[int, ...]) -> torch.Tensor:
    """``make(shape)`` for a (B, H, capacity, D) key or value buffer; a buffer the allocator refuses is a
    ``ValueError`` that says how large it was (generate's ``max_new_tokens`` sets the capacity)."""
    try:
        return make(shape)
    except (RuntimeError, MemoryError) as e:  # torch.OutOfMemoryError is a RuntimeError
        if "allocat" not in str(e) and not isinstance(e, (MemoryError, torch.OutOfMemoryError)):
            raise
        B, H, capacity, D = shape
        raise ValueError(
            f"max_new_tokens: a key/value cache of {capacity:,} positions for batch {B} ({B * H * capacity * D:,} "
            "values per layer and buffer) cannot be allocated here; generate fewer tokens or smaller batches"
        ) from None


def check_generate_args(
    prompt: torch.Tensor,
    max_new_tokens: int,
    temperature: float,
    top_k: int | None,
    model: "nn.Module | DecodableModel | None" = None,
) -> torch.Tensor:
    """Check the arguments of ``generate``; returns the prompt as int64 token ids (on ``model``'s device).

    Raises:
        TypeError: naming an argument of the wrong type (a float ``max_new_tokens`` or ``top_k``, a string
            ``temperature``, a prompt that is not a tensor of integer token ids).
        ValueError: naming an argument with a bad value, or a model whose parameters hold no data (meta device).
    """
    if not isinstance(prompt, torch.Tensor):
        raise TypeError(f"prompt must be a (batch, length) tensor of token ids, got {type(prompt).__name__}")
    if prompt.dtype.is_floating_point or prompt.dtype.is_complex or prompt.dtype == torch.bool:
        raise TypeError(f"prompt must hold integer token ids, got {prompt.dtype}")
    if prompt.dim() != 2 or 0 in prompt.shape:
        raise ValueError(f"prompt must have shape (batch >= 1, length >= 1), got {tuple(prompt.shape)}")
    for name, value in (("max_new_tokens", max_new_tokens), ("top_k", top_k)):
        if value is not None and (isinstance(value, bool) or not hasattr(value, "__index__")):
            raise TypeError(f"{name} must be an int, got {type(value).__name__} {str(value)[:40]}")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float, torch.Tensor)):
        raise TypeError(f"temperature must be a number, got {type(temperature).__name__}")
    if isinstance(temperature, torch.Tensor) and temperature.numel() != 1:
        raise TypeError(f"temperature must be a number, got a tensor of shape {tuple(temperature.shape)}")
    if not (math.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"temperature must be a finite number >= 0, got {float(temperature)}")
    if model is not None:
        param = next(model.parameters(), None)
        if param is not None and param.is_meta:
            raise ValueError(
                "model: its parameters are on the meta device and hold no values; materialise them first "
                "(model.to_empty(device=...) and load_state_dict)"
            )
        if param is not None and prompt.device != param.device:
            raise ValueError(f"prompt is on {prompt.device}, the model on {param.device}: move one to the other")
    # The datasets store tokens in the smallest integer dtype (uint8 here); the embedding reads int64.
    return prompt.long()


def sample_tokens(
    logits: torch.Tensor, temperature: float, top_k: int | None, generator: torch.Generator | None
) -> torch.Tensor:
    """Pick one token per row of (B, V) logits.

    Any finite temperature > 0 samples: the logits are shifted so that each row's largest is 0 before the
    division, so a tiny temperature sends the others to -inf (greedy, in the limit) instead of overflowing. One
    that is 0 in float32 (at most 2**-150) is greedy.
    """
    if temperature <= 2**-150:
        return logits.argmax(dim=-1)
    logits = logits.float()
    logits = (logits - logits.amax(dim=-1, keepdim=True)) / float(temperature)  # (B, V), each row's largest 0
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, int(top_k), dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)


def sampling_loop(
    model: "nn.Module | DecodableModel",
    prompt: torch.Tensor,
    max_new_tokens: int,
    prefill: Callable[[torch.Tensor], torch.Tensor],
    step: Callable[[torch.Tensor, int], torch.Tensor],
    temperature: float,
    top_k: int | None,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """The loop both decoding paths share: ``prefill(prompt)`` gives the (B, V) logits after the (B, P) prompt,
    ``step(token, position)`` feeds one sampled token (B,) and gives the next logits. The model is in eval mode for
    the loop and restored afterwards. Returns (B, P + max_new_tokens) tokens."""
    B, P = prompt.shape
    try:
        out = prompt.new_empty(B, P + max_new_tokens)  # (B, P + N), filled in place
    except (RuntimeError, MemoryError):
        raise ValueError(
            f"max_new_tokens: {B} x {P + max_new_tokens:,} output tokens cannot be allocated here; generate fewer"
        ) from None
    out[:, :P] = prompt
    if max_new_tokens == 0:
        return out
    was_training = model.training
    model.eval()
    try:
        # Inference mode skips autograd's bookkeeping on every small op (about 15% of a token's time at batch 1);
        # what it creates stays inside: ``out`` and the caches were allocated outside and are written in place.
        with torch.inference_mode():
            logits = prefill(prompt)
            for i in range(max_new_tokens):
                token = sample_tokens(logits, temperature, top_k, generator)  # (B,)
                out[:, P + i] = token
                if i + 1 < max_new_tokens:
                    logits = step(token, P + i)
    finally:
        model.train(was_training)
    return out


class _Layer(NamedTuple):
    """One layer's parameters as the step reads them: (weight, bias[, eps]) per operation."""

    norm_attn: tuple[torch.Tensor, torch.Tensor | None, float]
    qkv: tuple[torch.Tensor, torch.Tensor | None]
    out: tuple[torch.Tensor, torch.Tensor | None]
    norm_mlp: tuple[torch.Tensor, torch.Tensor | None, float]
    fc_in: tuple[torch.Tensor, torch.Tensor | None]
    fc_out: tuple[torch.Tensor, torch.Tensor | None]
    qk_gain: torch.Tensor | None


class Decoder:
    """Decodes from one model at a fixed batch size and capacity; build it once and reuse it for many prompts.

    The eager step reads the model's parameters (not copies), so a model trained further is seen. A compiled
    decoder holds the weights the model had when it was built: it refuses to run once they have changed, moved or
    been replaced (build a new one; see ``weights_state`` for what is seen). A model moved to another device or
    dtype needs a new decoder either way.
    """

    def __init__(self, model: DecodableModel, batch_size: int, capacity: int, compile: bool = False) -> None:
        """Args:
        model: the model.
        batch_size: prompts decoded together.
        capacity: longest prompt + new tokens this decoder serves. The compiled step attends over all of it, so
            size it to what you decode.
        compile: compile the step ahead of time (see the module docstring); this takes about half a minute, here.
        """
        for name, value in (("batch_size", batch_size), ("capacity", capacity)):
            if isinstance(value, bool) or not hasattr(value, "__index__"):
                raise TypeError(f"{name} must be an int, got {type(value).__name__} {str(value)[:40]}")
        if capacity < 1 or batch_size < 1:
            raise ValueError(f"batch_size and capacity must be >= 1, got {batch_size}, {capacity}")
        param = next(model.parameters())
        self.model = model
        self.batch_size = batch_size
        self.capacity = capacity
        blocks: list[Any] = list(model.layers)  # TransformerLayer modules
        self.layers = [
            _Layer(
                (b.norm_attn.weight, b.norm_attn.bias, b.norm_attn.eps),
                (b.attn.qkv_proj.weight, b.attn.qkv_proj.bias),
                (b.attn.out_proj.weight, b.attn.out_proj.bias),
                (b.norm_mlp.weight, b.norm_mlp.bias, b.norm_mlp.eps),
                (b.mlp.fc_in.weight, b.mlp.fc_in.bias),
                (b.mlp.fc_out.weight, b.mlp.fc_out.bias),
                b.attn.qk_gain,
            )
            for b in blocks
        ]
        # Keys and values of layer i at 2i and 2i + 1, each (B, H, capacity, D). Zeros: slots past the written
        # prefix stay finite, so the compiled step's masked weights times them are 0, not NaN.
        shape = (batch_size, model.num_heads, capacity, model.head_dim)
        with torch.inference_mode(False):  # normal tensors even when built in inference mode: export writes them
            zeros = functools.partial(torch.zeros, device=param.device, dtype=param.dtype)
            self.cache = [allocate_cache(zeros, shape) for _ in range(2 * len(blocks))]
            self.slots = torch.arange(capacity, device=param.device)  # (capacity,) the compiled step's mask
            self.position = torch.zeros((), dtype=torch.long, device=param.device)  # the compiled step's input
        if blocks:
            self.cos, self.sin = blocks[0].attn.rotary.tables(capacity, param.device, param.dtype)  # (capacity, D)
        else:  # no attention layer reads them
            self.cos = self.sin = torch.zeros(capacity, model.head_dim, device=param.device, dtype=param.dtype)
        self.scale = 1.0 / math.sqrt(model.head_dim)
        self.compiled: Callable[..., torch.Tensor] | None = None
        if compile:
            self.weights = weights_state(model)  # what the compiled step was built with
            self.compiled = compile_step(self)

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
        prompt = check_generate_args(prompt, max_new_tokens, temperature, top_k, self.model)
        max_new_tokens = int(max_new_tokens)
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
        copied into the static cache. A compiled decoder checks here that the model's weights are still the ones
        it was built with."""
        if self.compiled is not None and weights_state(self.model) != self.weights:
            raise RuntimeError(
                "the model's parameters changed after this decoder compiled them into its step; build a new Decoder"
            )
        P = prompt.shape[1]
        out = self.model(prompt, return_new_kv_cache=True)
        assert out.kv_cache is not None
        for i in range(len(self.layers)):
            self.cache[2 * i][:, :, :P] = out.kv_cache.keys[i][:, :, :P]
            self.cache[2 * i + 1][:, :, :P] = out.kv_cache.values[i][:, :, :P]
        logits: torch.Tensor = out.logits[:, -1]
        return logits

    @torch.no_grad()
    def step(self, token: torch.Tensor, position: int) -> torch.Tensor:
        """Logits (B, V) after feeding ``token`` (B,) at ``position``; writes its keys and values into the cache."""
        if self.compiled is None:
            return self.token_logits(token, position, self.cache)
        # The compiled step reads its inputs at the layout it was exported with, unchecked: int64, contiguous,
        # (batch_size,) on the model's device.
        if token.shape != (self.batch_size,) or token.device != self.position.device:
            raise ValueError(
                f"this decoder steps {self.batch_size} tokens on {self.position.device}, got shape "
                f"{tuple(token.shape)} on {token.device}"
            )
        self.position.fill_(position)
        return self.compiled(token.to(torch.long).contiguous(), self.position, self.cache)

    def token_logits(
        self, token: torch.Tensor, position: int | torch.Tensor, cache: list[torch.Tensor]
    ) -> torch.Tensor:
        """The step's arithmetic, for both ways of running it. An int position (eager) reads the cache's written
        prefix; a 0-d tensor position (exported at static shapes) reads the whole cache and masks the slots after
        it. Writes the token's keys and values into ``cache`` and returns its logits (B, V)."""
        model = self.model
        B, C, H, D = token.shape[0], model.dim_model, model.num_heads, model.head_dim
        if isinstance(position, int):
            index: int | torch.Tensor = position
            cos, sin = self.cos[position], self.sin[position]  # (D,)
        else:
            index = position.view(1)
            cos, sin = self.cos.index_select(0, index), self.sin.index_select(0, index)  # (1, D)
            future = self.slots > position  # (capacity,)
        x = F.embedding(token, model.token_embedding.weight)  # (B, C)
        for layer, keys, values in zip(self.layers, cache[0::2], cache[1::2]):
            h = F.layer_norm(x, (C,), *layer.norm_attn)
            qkv = F.linear(h, *layer.qkv).view(B, 3, H, D)
            qk = qkv[:, :2]  # (B, 2, H, D)
            if layer.qk_gain is not None:
                qk = F.rms_norm(qk, (D,)) * layer.qk_gain.view(2, 1, D)
            # RoPE for one position: the rotate-half sign is folded into sin, so rotating is a roll by D/2.
            q, k = torch.addcmul(qk * cos, qk.roll(D // 2, -1), sin).unbind(1)  # (B, H, D)
            if isinstance(index, int):
                keys[:, :, index] = k
                values[:, :, index] = qkv[:, 2]
                keys, values = keys[:, :, : index + 1], values[:, :, : index + 1]  # (B, H, S, D)
                weights = (q.unsqueeze(2) @ keys.transpose(-2, -1)).mul_(self.scale).softmax(-1)  # (B, H, 1, S)
                attended = weights @ values  # (B, H, 1, D)
            else:
                # Every slot, the future ones masked. The products are sums over the last axes, which the compiler
                # turns into vectorised loops: as one-row matrix products they ran 3x slower at batch 8.
                keys[:, :, index] = k.unsqueeze(2)
                values[:, :, index] = qkv[:, 2:3].transpose(1, 2)
                scores = (q.unsqueeze(2) * keys).sum(-1) * self.scale  # (B, H, capacity)
                weights = scores.masked_fill(future, -math.inf).softmax(-1)
                attended = (weights.unsqueeze(-1) * values).sum(2)  # (B, H, D)
            x = x + F.linear(attended.view(B, C), *layer.out)
            h = F.layer_norm(x, (C,), *layer.norm_mlp)
            x = x + F.linear(F.gelu(F.linear(h, *layer.fc_in)), *layer.fc_out)
        x = F.layer_norm(x, (C,), model.final_norm.weight, model.final_norm.bias, model.final_norm.eps)
        return F.linear(x, model.unembed.weight)  # (B, V)


def weights_state(model: "torch.nn.Module | DecodableModel") -> list[tuple[int, int, torch.dtype, torch.device, int]]:
    """What changes when a parameter does: the parameter object (a load with ``assign=True`` replaces it), its
    storage, dtype and device (``.to`` replaces them) and its in-place version counter (an optimizer step or a
    copying load moves it). Writes through ``.data`` leave no trace."""
    return [(id(p), p.data_ptr(), p.dtype, p.device, p._version) for p in model.parameters()]


class _Step(torch.nn.Module):
    """A decoder's static-shape step as a module, which is what ``torch.export`` takes."""

    def __init__(self, decoder: Decoder) -> None:
        super().__init__()
        self.model = decoder.model  # its parameters become the compiled step's constants
        self.decoder = [decoder]  # a list: not a submodule

    def forward(self, token: torch.Tensor, position: torch.Tensor, cache: list[torch.Tensor]) -> torch.Tensor:
        return self.decoder[0].token_logits(token, position, cache)


def compile_step(decoder: Decoder) -> Callable[..., torch.Tensor]:
    """Export the decoder's step at its batch size and capacity and compile it with AOTInductor. The returned
    function takes (token (B,), position (0-d), cache) and writes the cache in place, like the eager step."""
    token = torch.zeros(decoder.batch_size, dtype=torch.long, device=decoder.position.device)
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        # deprecation notices that torch raises inside its own export and compiler code
        warnings.filterwarnings("ignore", message=".*LeafSpec.* is deprecated")
        warnings.filterwarnings("ignore", message="TypedStorage is deprecated")
        warnings.filterwarnings("ignore", message="`torch.jit.script_method` is deprecated")
        program = torch.export.export(_Step(decoder), (token, decoder.position, decoder.cache), strict=False)
        folder = tempfile.TemporaryDirectory(prefix="iluvattnshun-decoder-")
        package = torch._inductor.aoti_compile_and_package(
            program,
            package_path=str(Path(folder.name) / "step.pt2"),
            inductor_configs=CPU_AOT_OPTIONS if token.device.type == "cpu" else {},
        )
        step = torch._inductor.aoti_load_package(package)
    weakref.finalize(decoder, folder.cleanup)  # the package lives as long as its decoder
    return cast(Callable[..., torch.Tensor], step)
