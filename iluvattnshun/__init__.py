"""iluvattnshun: quick attention experiments with small RoPE transformers."""

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["__version__", "load_run"]

if TYPE_CHECKING:
    from iluvattnshun.run import load_run


def __getattr__(name: str) -> Any:
    # Imported lazily so that `import iluvattnshun.nn` does not pull in the trainer and its dependencies.
    if name == "load_run":
        from iluvattnshun.run import load_run

        return load_run
    raise AttributeError(f"module 'iluvattnshun' has no attribute {name!r}")
