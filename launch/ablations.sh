#!/usr/bin/env bash
# The paper's ablations on the embedded task over seeds 0 1 2 (mean ± SE): the rso_sample_rank /
# hinge_norm cell with one knob changed -- beta 0 / 0.05 / 5, gamma 0.005 / 0.5, tournament pairs,
# single-pass rejection, proposal correction, best-of-N (launch/paper_table.py's ABLATIONS); no
# gamma sweep or round 2 of its own (the gamma ablations are the study's frontier cells).
# Shares launch/paper_table.py's run root: each seed's SFT policy, reward model and unchanged
# cell are built once for both studies; finished cells are reused. Flags pass through
# (e.g. --seeds 0, --dry_run, -- --gin.TRAIN_STEPS=100).
set -euo pipefail
cd "$(dirname "$0")/.."
exec python3 launch/paper_table.py --settings rso_sample_rank --losses hinge_norm --baselines \
  --gammas --round2 --ablations all --out benchmarks/results/ablations.md --frontier "" "$@"
