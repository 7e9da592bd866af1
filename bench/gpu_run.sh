#!/usr/bin/env bash
# The GPU checks in one go (for a lent GPU machine without internet): CUDA tests first, then the GPU benchmarks.
#
#   bash bench/gpu_run.sh [OUT_DIR]
#
# Sized for one device call of at most 10 minutes: the parts are capped at 420 s in all, the most important first,
# so that a part that hangs costs its own cap and the rest still run. Each part's output goes to OUT_DIR/<part>.txt
# and one line per part (exit status, seconds) to OUT_DIR/summary.txt; exit status 124 means the part hit its cap.
#
#   part           cap   measures
#   cuda_tests     100   every test marked cuda (bf16, cached generation, compiled decoder, DDP, trainer on CUDA)
#   bench_nn       100   training step eager / torch.compile / CUDA graph; fast vs explicit attention; generation
#   bench_train     60   Trainer against a bare loop (pinned-memory copies: goal under 5% overhead)
#   bench_sweep    100   K = 1, 4, 8 quick runs packed on GPU 0 by the sweep launcher (goal: >= 4x aggregate at 8)
#   bench_decode    30   decoding at batch 1 and 32
#   bench_nanogpt   30   the project against nanoGPT's architecture at the quick, small and paper shapes
#
# Packages missing on the GPU machine travel as wheels in .whl/ (python 3.12 wheels of datasets, plotly and
# their pure-python dependencies: datasets dill multiprocess plotly huggingface-hub httpx2 httpcore2 truststore),
# installed with --no-deps into a private directory. Tiny Shakespeare can travel as .whl/shakespeare.txt.
set -u
out=${1:-${OUT:-/tmp/gpu_out}}
mkdir -p "$out" /tmp/pylib
if [ -d .whl ]; then
    python3 -m pip install -q --no-deps --target /tmp/pylib .whl/*.whl > "$out/pip.log" 2>&1
    export PYTHONPATH=/tmp/pylib:$PWD
fi
export NO_COLOR=1
python3 -c "import datasets, plotly, iluvattnshun.task, torch; print(torch.__version__, torch.cuda.get_device_name())" \
    | tee "$out/env.txt"

part() {  # part NAME CAP_SECONDS COMMAND...: run COMMAND under its cap, record its exit status and seconds
    local name=$1 cap=$2 start=$SECONDS status
    shift 2
    timeout "$cap" "$@" > "$out/$name.txt" 2>&1
    status=$?
    echo "$name: exit $status, $((SECONDS - start)) s (cap $cap s)" | tee -a "$out/summary.txt"
}

shakespeare=${ILUVATTNSHUN_SHAKESPEARE:-.whl/shakespeare.txt}
part cuda_tests 100 python3 -m pytest -m cuda -q -p no:cacheprovider
part bench_nn 100 python3 -m bench.bench_nn --device cuda --repeats 3 --json "$out/bench_nn.json"
part bench_train 60 python3 -m bench.bench_train --device cuda --skip profile,gen --rounds 2 \
    --shakespeare_path="$shakespeare"
part bench_sweep 100 python3 -m bench.bench_sweep --device cuda --runs 1,4,8 --minutes 0.25 --repeats 1
part bench_decode 30 python3 -m bench.bench_decode --device cuda --batches 1,32 --repeats 3
part bench_nanogpt 30 python3 -m bench.bench_nanogpt --device cuda --threads 0 --shapes quick,small,paper --repeats 3
tail -n 3 "$out/cuda_tests.txt"
