"""iluvattnshun: quick attention experiments with small RoPE transformers."""

__version__ = "0.1.0"
