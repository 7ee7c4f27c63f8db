#!/usr/bin/env bash
# Multi-node GPU through SLURM and JAX's own runtime: one task per node, all its GPUs; JAX
# reads SLURM's environment (coordinator = the first node, process id = SLURM_PROCID) when
# RSO_JAX_DISTRIBUTED=1. Submit from a login node of the repository's checkout:
#   NODES=4 GPUS_PER_NODE=8 PARTITION=gpu TIME=12:00:00 \
#     launch/gpu_slurm.sh gin/experiments/tldr.gin --gin_file=gin/recipes/t5_large.gin \
#       --gin.RUN_DIR=\"/shared/runs/tldr\" ...
# SLURM sends SIGTERM 120 s before the time limit (--signal): every process saves the same
# step (JAX's preemption service + orbax's synchronized check) and exits 143; the job is
# requeued and the same command resumes. Optional: ACCOUNT, JOB_NAME, MESH_SHAPE (default
# (-1, GPUS_PER_NODE, 1): FSDP within a node, data parallel across nodes), SBATCH_EXTRA.
# DRY_RUN=1 prints the batch script instead of submitting it.
set -euo pipefail
if [ $# -lt 1 ]; then
  echo "usage: [NODES=N GPUS_PER_NODE=G PARTITION=P TIME=HH:MM:SS] $0 GIN_FILE [--gin.X=V ...]" >&2
  exit 2
fi
gin_file=$1; shift
nodes=${NODES:-2}
gpus=${GPUS_PER_NODE:-8}
mesh=${MESH_SHAPE:-"(-1, $gpus, 1)"}
overrides=$(printf ' %q' "$@")
script="#!/usr/bin/env bash
#SBATCH --job-name=${JOB_NAME:-rso_jax}
#SBATCH --nodes=$nodes
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=$gpus
#SBATCH --time=${TIME:-24:00:00}
#SBATCH --signal=TERM@120
#SBATCH --requeue
#SBATCH --output=${JOB_NAME:-rso_jax}-%j.log${PARTITION:+
#SBATCH --partition=$PARTITION}${ACCOUNT:+
#SBATCH --account=$ACCOUNT}${SBATCH_EXTRA:+
#SBATCH $SBATCH_EXTRA}
set -euo pipefail
cd $(printf '%q' "$PWD")
rc=0
srun --kill-on-bad-exit=1 env RSO_JAX_DISTRIBUTED=1 python3 -m rso_jax.train \\
  --gin_file=$(printf '%q' "$gin_file") --gin.MESH_SHAPE='$mesh'$overrides || rc=\$?
# 143: stopped by SLURM's signal after saving; requeue to resume with the same command.
if [ \$rc = 143 ]; then scontrol requeue \"\$SLURM_JOB_ID\"; fi
exit \$rc"
if [ "${DRY_RUN:-0}" = 1 ]; then
  printf '%s\n' "$script"
  exit 0
fi
printf '%s\n' "$script" | sbatch
