#!/usr/bin/env bash
# One command for a lent H100/H200 (torch and triton preinstalled, no package registry):
# install the project, run the kernels' tests compiled, the sweep and the NLSN benchmark, and
# leave CSV, plots and logs in one folder. Fits in about 8 minutes; each step has its own
# time limit and a failed step does not stop the next.
#   bash bench/gpu_check.sh OUT_DIR
set -uo pipefail
out=${1:?usage: bash bench/gpu_check.sh OUT_DIR}
mkdir -p "$out"
cd "$(dirname "$0")/.."

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to OUT/NAME.log
    local name=$1 limit=$2
    shift 2
    echo "== $name (limit ${limit}s): $*"
    local start=$SECONDS
    timeout "$limit" "$@" >"$out/$name.log" 2>&1
    local rc=$?
    echo "   rc $rc in $((SECONDS - start)) s; last lines:"
    tail -n 3 "$out/$name.log" | sed 's/^/   /'
    echo "$name rc=$rc seconds=$((SECONDS - start))" >>"$out/steps.txt"
}

{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"; } \
    >"$out/gpu.txt" 2>&1
cat "$out/gpu.txt"
step install 120 pip install --no-deps --no-build-isolation -e .
# The GPU-relevant tests first (compiled kernels against the reference, flex on CUDA, DDP
# with the Triton backend); the CPU-only compile/density/race checks skip themselves here.
step pytest 200 python -m pytest -q -p no:cacheprovider tests/test_forward.py tests/test_backward.py \
    tests/test_robustness.py tests/test_determinism.py tests/test_flex.py tests/test_torch_compile.py \
    tests/test_distributed.py
step sweep 230 python bench/sweep.py --sizes 150,300,600,2048 \
    --providers nlsa_triton,nlsa_torch,nlsa_reference,nla_sdpa,nlsa_flex --n-hashes 4 --channels 64,256 \
    --dtype fp32,bf16 --modes fwd,fwd_bwd --time-budget 200 --out "$out"
step nlsn_efficiency 60 python bench/nlsn_efficiency.py --device cuda --out "$out"
echo "results in $out"
