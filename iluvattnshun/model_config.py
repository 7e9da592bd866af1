"""``ModelConfig`` and ``build_model``: the model's shape as config fields, named as the model's arguments.

The field names are ``MultilayerTransformer``'s argument names, so a value travels from ``--num_layers`` to
the module without renaming; the original names (``d_model``, ``n_heads``, ``n_layers``) are accepted as
aliases on the command line, in YAML and by the model's constructor, and nowhere else.
"""

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from iluvattnshun.config import Config
from iluvattnshun.nn import ORIGINAL_NAMES, MultilayerTransformer


@dataclass(kw_only=True)
class ModelConfig(Config):
    """Shape of the RoPE transformer."""

    ALIASES = ORIGINAL_NAMES

    num_layers: int = 4
    """Number of transformer layers."""
    dim_model: int = 128
    """Width of the residual stream."""
    num_heads: int = 4
    """Attention heads per layer (dim_model must be divisible by it, with an even quotient for RoPE)."""
    rope_base: float = 10000.0
    """RoPE base: smaller values rotate faster and favour local attention."""
    dropout_attn: float = 0.0
    """Dropout on each attention block's output."""
    dropout_mlp: float = 0.0
    """Dropout on each MLP block's output."""
    dropout_emb: float = 0.0
    """Dropout on the token embeddings."""
    tie_weights: bool = False
    """Use the token embedding as the output projection (a predicted token and the same token read as input
    then share one direction in the residual stream)."""
    qk_norm: bool = False
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
