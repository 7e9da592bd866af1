#!/usr/bin/env bash
# The classic layers x heads grid on variable renaming: 4 x 3 = 12 runs, one tmux pane each, spread
# round-robin over every visible GPU (plain CPU runs when there is none). Extra arguments go to the
# launcher (python -m iluvattnshun.sweep launch --help lists them):
#
#   bash examples/var_rename/sweep.sh --dry-run                       # print the 12 commands only
#   bash examples/var_rename/sweep.sh --gpus 0,1 --max-parallel 3     # 6 panes; the other runs queue
#   bash examples/var_rename/sweep.sh --replace --extra='--preset=small --max_steps=2000'
#
# Follow the runs with `tmux attach -t var_rename` (or --attach), then compare them:
#
#   python -m iluvattnshun.sweep wait logs/var_rename --prefix layers_heads
#   python -m iluvattnshun.sweep summarize logs/var_rename --prefix layers_heads --html layers_heads.html
set -euo pipefail
cd "$(dirname "$0")/../.."  # the panes run from the repository root, where logs/ lives

PYTHON=${PYTHON:-$(command -v python || command -v python3)}

exec "$PYTHON" -m iluvattnshun.sweep launch \
    --cmd "$(printf '%q' "$PYTHON") -m examples.var_rename" \
    --grid num_layers=1,2,3,4 \
    --grid num_heads=1,2,4 \
    --session var_rename \
    --prefix layers_heads \
    "$@"
