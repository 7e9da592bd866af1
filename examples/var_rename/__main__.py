"""python -m examples.var_rename [--preset=quick|paper] [--field=value ...]"""

from examples.var_rename.task import PRESETS, VarRenamePrompter
from iluvattnshun.task import main

main(VarRenamePrompter, PRESETS)
