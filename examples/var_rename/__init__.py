"""Variable renaming: the config, prompter and presets live in ``task``; ``python -m examples.var_rename`` trains."""

from examples.var_rename.task import PRESETS, VarRenameConfig, VarRenamePrompter

__all__ = ["PRESETS", "VarRenameConfig", "VarRenamePrompter"]
