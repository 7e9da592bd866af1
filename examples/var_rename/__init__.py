"""Variable renaming task: config, prompter and trainer live in ``task``; ``python -m examples.var_rename`` trains."""

from examples.var_rename.task import (
    PRESETS,
    VarRenameConfig,
    VarRenamePromptConfig,
    VarRenamePrompter,
    VarRenameTrainer,
)

__all__ = ["PRESETS", "VarRenameConfig", "VarRenamePromptConfig", "VarRenamePrompter", "VarRenameTrainer"]
