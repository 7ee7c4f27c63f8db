#!/usr/bin/env bash
# Multi-node GPU through JAX's own runtime (no engine of ours): run this on every node.
#   COORDINATOR=host0:1234 NUM_NODES=2 NODE_RANK=0 launch/multinode_gpu.sh gin/rso_hinge.gin [--gin.X=V ...]
# Under SLURM, `srun` sets the variables JAX detects itself: use RSO_JAX_DISTRIBUTED=1 instead.
# DRY_RUN=1 prints the environment and command instead of running it.
set -euo pipefail
gin_file=$1; shift
export JAX_COORDINATOR_ADDRESS=${COORDINATOR:?set COORDINATOR=host:port}
export JAX_NUM_PROCESSES=${NUM_NODES:?set NUM_NODES}
export JAX_PROCESS_ID=${NODE_RANK:?set NODE_RANK}
cmd=(python3 -m rso_jax.train --gin_file="$gin_file"
     --gin.MESH_SHAPE="(-1, ${GPUS_PER_NODE:-8}, 1)" "$@")
if [ "${DRY_RUN:-0}" = 1 ]; then
  echo "JAX_COORDINATOR_ADDRESS=$JAX_COORDINATOR_ADDRESS JAX_NUM_PROCESSES=$JAX_NUM_PROCESSES" \
       "JAX_PROCESS_ID=$JAX_PROCESS_ID $(printf '%q ' "${cmd[@]}")"
  exit 0
fi
exec "${cmd[@]}"
