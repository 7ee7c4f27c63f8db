#!/usr/bin/env bash
# GPU benchmarks of rso_jax, in one prepared run. NEVER called by CI (it needs an NVIDIA GPU and
# exits 2 at once without one).
#
#   bash benchmarks/gpu.sh                 # everything, log in ${OUT:-/tmp}/rso_jax_gpu_bench_*.log
#   DRY_RUN=1 bash benchmarks/gpu.sh       # print the commands only (no GPU needed)
#   STAGES=train bash benchmarks/gpu.sh    # a subset: train, decode, sampling (comma list)
#
# What runs (in this order, the GPU-native stage first so a time limit loses the least):
#   1. train   benchmarks/train_step.py --platform gpu --dtype bfloat16, one process per size
#              (base at BATCH 32, large at BATCH_LARGE 16): the RSO policy step (hinge-norm
#              loss, fwd+bwd, AdamW) of rso_jax's trainer, with
#              ms/step, tokens/s, MFU against the GPU's dense bf16 peak (from nvidia-smi's name:
#              H100/H200 989 TFLOP/s, A100 312; PEAK_TFLOPS=... overrides) and the peak HBM
#              (jax `memory_stats()['peak_bytes_in_use']`). The torch peer runs only if torch
#              sees CUDA (PEERS, default eager; add compile with PEERS=eager,compile).
#   2. decode  benchmarks/decoding.py --platform gpu --dtype bfloat16 --sizes base,large: the
#              rso_jax sampler (N = 64 candidates of DECODE_PROMPTS prompts of PROMPT_LEN tokens,
#              RESP_LEN tokens each) vs HF generate on the same GPU (skipped if torch has no
#              CUDA), tokens/s and rso_jax's peak device memory.
#   3. sampling benchmarks/sampling_stage.py --platform gpu --dtype bfloat16 --sizes base,large
#              --settings embedded,tldr --rm_arch ${RM_ARCH:-encoder_decoder}: the sampling
#              stage's per-prompt work (SAMPLING_PROMPTS prompts x 64 candidates per call:
#              decode, BT rewards, Algorithm 1, pairs, reference log-probs, records) vs HF
#              generate + an HF reward model + Python Algorithm 1 on the same GPU.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "${HERE}/.." && pwd)"
PY="${PYTHON:-python3}"
STAGES="${STAGES:-train,decode,sampling}"
SIZES="${SIZES:-base,large}"
BATCH="${BATCH:-32}"
PROMPT_LEN="${PROMPT_LEN:-512}"
RESP_LEN="${RESP_LEN:-128}"
PEERS="${PEERS:-eager}"
OUT_DIR="${OUT:-/tmp}"
LOG="${OUT_DIR}/rso_jax_gpu_bench_$(date +%Y%m%d_%H%M%S).log"

# The torch peer runs in the same process as jax: at large, batch 32 does not fit one 141 GB
# H200 (torch eager alone took 56 GiB at base, batch 32), so large trains at BATCH_LARGE.
BATCH_LARGE="${BATCH_LARGE:-16}"
train_cmd() {  # train_cmd SIZE -> TRAIN_CMD
  local batch="${BATCH}"
  if [[ "$1" == large ]]; then batch="${BATCH_LARGE}"; fi
  TRAIN_CMD=("${PY}" "${REPO}/benchmarks/train_step.py" --platform gpu --dtype bfloat16
             --sizes "$1" --batch "${batch}" --prompt_length "${PROMPT_LEN}"
             --response_length "${RESP_LEN}" --iters 10 --min_seconds 5 --warmup 2
             --peers "${PEERS}")
  if [[ -n "${PEAK_TFLOPS:-}" ]]; then TRAIN_CMD+=(--peak_tflops "${PEAK_TFLOPS}"); fi
}
DECODE_CMD=("${PY}" "${REPO}/benchmarks/decoding.py" --platform gpu --dtype bfloat16
            --sizes "${SIZES}" --prompts "${DECODE_PROMPTS:-8}" --prompt_length "${PROMPT_LEN}"
            --length "${RESP_LEN}" --repeats 2)
SAMPLING_CMD=("${PY}" "${REPO}/benchmarks/sampling_stage.py" --platform gpu --dtype bfloat16
              --sizes "${SIZES}" --settings embedded,tldr --prompts "${SAMPLING_PROMPTS:-16}"
              --num_decodes 64 --repeats 2 --rm_arch "${RM_ARCH:-encoder_decoder}")

want() { [[ ",${STAGES}," == *",$1,"* ]]; }
show() { printf '%q ' "$@"; printf '\n'; }

if [[ -n "${DRY_RUN:-}" ]]; then
  echo "# DRY_RUN: commands only (log would be ${LOG})"
  echo "nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader"
  if want train; then
    for size in ${SIZES//,/ }; do train_cmd "${size}"; show "${TRAIN_CMD[@]}"; done
  fi
  if want decode; then show "${DECODE_CMD[@]}"; fi
  if want sampling; then show "${SAMPLING_CMD[@]}"; fi
  exit 0
fi

# --- fail fast without a GPU -----------------------------------------------------------------
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "gpu.sh: no NVIDIA GPU visible (nvidia-smi missing or failing); this script is for GPU" \
       "machines only (never CI). DRY_RUN=1 prints the commands." >&2
  exit 2
fi
GPU_NAME="$(nvidia-smi --query-gpu=name --format=csv,noheader | head -n1)"
if ! JAX_PLATFORMS=cuda "${PY}" -c "import jax; assert jax.devices()[0].platform == 'gpu'" \
     >/dev/null 2>&1; then
  echo "gpu.sh: nvidia-smi sees '${GPU_NAME}' but jax has no GPU backend (install jax[cuda12])" >&2
  exit 2
fi
if [[ -z "${PEAK_TFLOPS:-}" ]]; then
  case "${GPU_NAME}" in
    *H200*|*H100*) PEAK_TFLOPS=989 ;;
    *A100*) PEAK_TFLOPS=312 ;;
    *) PEAK_TFLOPS="" ;;
  esac
fi

# train_step.py runs the torch peer in the same process as jax: without this, XLA takes 75 % of
# the GPU's memory at start and torch gets the rest. Peak HBM is read from each framework's own
# allocator statistics either way.
export XLA_PYTHON_CLIENT_PREALLOCATE="${XLA_PYTHON_CLIENT_PREALLOCATE:-false}"
export PYTHONUNBUFFERED=1

mkdir -p "${OUT_DIR}"
exec > >(tee -a "${LOG}") 2>&1
echo "== rso_jax GPU benchmarks $(date -u +%FT%TZ) on ${GPU_NAME} (bf16 peak ${PEAK_TFLOPS:-unknown} TFLOP/s)"
echo "== repo $(git -C "${REPO}" rev-parse --short HEAD 2>/dev/null || echo '?'), log ${LOG}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"${PY}" -c "import jax, jaxlib; print('jax', jax.__version__, 'jaxlib', jaxlib.__version__, jax.devices())"

status=0
run() {
  local name="$1"; shift
  echo; echo "== [${name}] $(show "$@")"
  local t0=${SECONDS}
  if "$@"; then echo "== [${name}] done in $((SECONDS - t0)) s"
  else local rc=$?; echo "== [${name}] FAILED (exit ${rc}) after $((SECONDS - t0)) s"; status=1; fi
}
if want train; then
  for size in ${SIZES//,/ }; do
    train_cmd "${size}"
    run "train-${size}" env JAX_PLATFORMS=cuda "${TRAIN_CMD[@]}"
  done
fi
if want decode; then run decode "${DECODE_CMD[@]}"; fi
if want decode; then run decoder-sampling "${PY}" "${REPO}/benchmarks/decoder_sampling.py" --platform gpu --dtype bfloat16 --hidden 896 --layers 24 --heads 14 --kv_heads 2 --head_dim 64 --mlp 4864 --vocab 151936 --prompts "${DECODE_PROMPTS:-8}" --prompt_length "${PROMPT_LEN}" --length "${RESP_LEN}" --repeats 2; fi
if want sampling; then run sampling "${SAMPLING_CMD[@]}"; fi
echo; echo "== log: ${LOG}"
exit "${status}"
