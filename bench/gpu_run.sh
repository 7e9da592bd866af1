#!/usr/bin/env bash
# The GPU checks in one go (for a lent GPU machine without internet): CUDA tests, then the GPU benchmarks.
#
#   bash bench/gpu_run.sh [OUT_DIR]
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
timeout 90 python3 -m bench.bench_nn --device cuda --repeats 3 > "$out/bench_nn_cuda.txt" 2>&1
shakespeare=${ILUVATTNSHUN_SHAKESPEARE:-.whl/shakespeare.txt}
timeout 240 python3 -m bench.bench_train --device cuda --shakespeare_path="$shakespeare" > "$out/bench_train_cuda.txt" 2>&1
timeout 180 python3 -m bench.bench_decode --device cuda --batches 1,32 --repeats 3 > "$out/bench_decode_cuda.txt" 2>&1
timeout 300 python3 -m bench.bench_sweep --device cuda --runs 1,4,8 --minutes 1 --repeats 1 > "$out/bench_sweep_cuda.txt" 2>&1
timeout 180 python3 -m bench.bench_nanogpt --device cuda --threads 0 --shapes quick,small,paper > "$out/bench_nanogpt_cuda.txt" 2>&1
timeout 240 python3 -m pytest -m cuda -q -p no:cacheprovider > "$out/cuda_tests.txt" 2>&1
tail -n 3 "$out/cuda_tests.txt"
