#!/usr/bin/env bash
# Multi-node GPU through JAX's own runtime (no engine of ours): run this on every node.
#   COORDINATOR=host0:1234 NUM_NODES=2 NODE_RANK=0 launch/multinode_gpu.sh gin/rso_hinge.gin [--gin.X=V ...]
# Under SLURM, `srun` sets the variables JAX detects itself: use RSO_JAX_DISTRIBUTED=1 instead.
set -euo pipefail
gin_file=$1; shift
export JAX_COORDINATOR_ADDRESS=${COORDINATOR:?set COORDINATOR=host:port}
export JAX_NUM_PROCESSES=${NUM_NODES:?set NUM_NODES}
export JAX_PROCESS_ID=${NODE_RANK:?set NODE_RANK}
exec python3 -m rso_jax.train --gin_file="$gin_file" \
  --gin.MESH_SHAPE="(-1, ${GPUS_PER_NODE:-8}, 1)" "$@"
