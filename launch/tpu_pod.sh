#!/usr/bin/env bash
# Run a gin config on every host of a Cloud TPU pod slice. JAX's multi-controller runtime
# discovers the pod itself; rso_jax calls jax.distributed.initialize() when RSO_JAX_DISTRIBUTED=1.
#   launch/tpu_pod.sh TPU_NAME ZONE gin/experiments/tldr.gin --gin_file=gin/recipes/t5_large.gin \
#       --gin.RUN_DIR=\"gs://bucket/run\" --gin.PRETRAINED_CHECKPOINT=\"gs://bucket/t5_large\" ...
# DRY_RUN=1 prints the command instead of running it.
set -euo pipefail
tpu=$1; zone=$2; gin_file=$3; shift 3
overrides=$(printf ' %q' "$@")
cmd=(gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" --worker=all --command "
  cd ~/rso_jax && RSO_JAX_DISTRIBUTED=1 python3 -m rso_jax.train --gin_file=$gin_file \
    --gin.MESH_SHAPE='(1, -1, 1)' $overrides")
if [ "${DRY_RUN:-0}" = 1 ]; then printf '%q ' "${cmd[@]}"; echo; exit 0; fi
"${cmd[@]}"
