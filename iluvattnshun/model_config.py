"""``ModelConfig`` and ``build_model``: the model's shape as config fields, named as the model's arguments.

The field names are ``MultilayerTransformer``'s argument names, so a value travels from ``--num_layers`` to
the module without renaming; the original names (``d_model``, ``n_heads``, ``n_layers``) are accepted as
aliases on the command line, in YAML and by the model's constructor, and nowhere else. The defaults are the
constructor's: one set, written once, in ``MultilayerTransformer.__init__``.
"""

import dataclasses
import inspect
import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from iluvattnshun.config import Config
from iluvattnshun.compat import MODEL_NAMES
from iluvattnshun.nn import MultilayerTransformer

_DEFAULTS: dict[str, Any] = {
    name: param.default
    for name, param in inspect.signature(MultilayerTransformer.__init__).parameters.items()
    if param.default is not inspect.Parameter.empty
}
"""``MultilayerTransformer``'s argument defaults: the field defaults below."""


@dataclass(kw_only=True)
class ModelConfig(Config):
    """Shape of the RoPE transformer."""

    ALIASES = MODEL_NAMES

    num_layers: int = _DEFAULTS["num_layers"]
    """Number of transformer layers."""
    dim_model: int = _DEFAULTS["dim_model"]
    """Width of the residual stream."""
    num_heads: int = _DEFAULTS["num_heads"]
    """Attention heads per layer (dim_model must be divisible by it, with an even quotient for RoPE)."""
    rope_base: float = _DEFAULTS["rope_base"]
    """RoPE base: smaller values rotate faster and favour local attention."""
    dropout_attn: float = _DEFAULTS["dropout_attn"]
    """Dropout on each attention block's output."""
    dropout_mlp: float = _DEFAULTS["dropout_mlp"]
    """Dropout on each MLP block's output."""
    dropout_emb: float = _DEFAULTS["dropout_emb"]
    """Dropout on the token embeddings."""
    tie_weights: bool = _DEFAULTS["tie_weights"]
    """Use the token embedding as the output projection (a predicted token and the same token read as input
    then share one direction in the residual stream)."""
    qk_norm: bool = _DEFAULTS["qk_norm"]
    """RMS-normalise each head's queries and keys (with a learnable gain) before RoPE: keeps the attention softmax
    out of its flat regime, which shortens the first plateau of multi-hop tasks (bench/RESULTS.md)."""

    def validate(self) -> None:
        super().validate()
        for name in ("num_layers", "dim_model", "num_heads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.dim_model % self.num_heads:
            raise ValueError(f"dim_model ({self.dim_model}) must be divisible by num_heads ({self.num_heads})")
        if (self.dim_model // self.num_heads) % 2:
            raise ValueError(f"dim_model / num_heads must be even for RoPE, got {self.dim_model // self.num_heads}")
        if not (math.isfinite(self.rope_base) and self.rope_base > 0):
            raise ValueError(f"rope_base must be a finite number > 0, got {self.rope_base}")
        for name in ("dropout_attn", "dropout_mlp", "dropout_emb"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")

    def model_kwargs(self) -> dict[str, Any]:
        """This config's fields, as ``MultilayerTransformer`` arguments."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(ModelConfig)}


def build_model(vocab_size: int, config: ModelConfig) -> MultilayerTransformer:
    """The RoPE transformer a ``ModelConfig`` describes."""
    return MultilayerTransformer(vocab_size, **config.model_kwargs())


ACTIVATIONS_PER_LAYER = 16
"""Values of width dim_model that autograd keeps per token and layer, at the least: both LayerNorms' inputs and
outputs (4), q, k and v (3), the attention output (1), the MLP's hidden layer before and after GELU (8). The model
keeps more (19 without QK-norm: the qkv projection, the rotated q and k, the output projection's input); this is
a lower bound, so that a run refused for memory is one that cannot fit."""


class StepMemory(NamedTuple):
    """A lower bound on the memory one training step takes, in bytes, by what takes it."""

    state: int
    """Parameters, their gradients and AdamW's two moments: 4 float32 values per parameter."""
    activations: int
    """What autograd keeps for the backward pass, the logits with their log-softmax, and the batch's token ids."""


def training_step_memory(
    vocab_size: int, config: ModelConfig, batch_size: int, seq_len: int, bytes_per_value: int = 2
) -> StepMemory:
    """A lower bound on the memory of one training step of ``build_model(vocab_size, config)`` on a micro-batch of
    ``batch_size`` sequences of ``seq_len`` tokens, activations at ``bytes_per_value`` (2 under bf16 autocast, 4 in
    float32). The attention itself adds nothing here: the fused kernels keep O(T) per head, not the T x T pattern.

    Per token: ``ACTIVATIONS_PER_LAYER * dim_model`` values per layer, the float32 logits and their log-softmax
    (``2 * vocab_size * 4`` bytes) and the int64 prompt and answer ids (16 bytes).
    """

    def parameters(num_layers: int) -> int:
        with torch.device("meta"):  # the real count, without allocating a parameter
            model = MultilayerTransformer(vocab_size, **{**config.model_kwargs(), "num_layers": num_layers})
        return sum(p.numel() for p in model.parameters())

    one, two = parameters(1), parameters(2)
    params = one + (config.num_layers - 1) * (two - one)  # layers are alike: any depth is counted at once
    per_token = config.num_layers * ACTIVATIONS_PER_LAYER * config.dim_model * bytes_per_value + 8 * vocab_size + 16
    return StepMemory(state=16 * params, activations=batch_size * seq_len * per_token)
