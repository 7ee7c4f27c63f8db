#!/usr/bin/env bash
# The paper's ablations (beta, gamma, tournament) on the embedded task, one seed, as gin overrides
# of one config (Table 1 over seeds: launch/paper_table.py). Upstream
# artifacts (SFT, reward model) are built once and shared; each sampling configuration gets its
# own directory. Every run appends to runs/embedded/eval_summary.json and redraws eval_plot.png.
set -euo pipefail
# Each policy goes to runs/embedded/<POLICY_NAME>.
run() { name=$1; shift; python3 -m rso_jax.train --gin_file=gin/rso_hinge.gin \
  --gin.POLICY_NAME="'$name'" "$@"; }
# Table 1 (loss x data setting, over seeds, mean +- SE): python3 launch/paper_table.py
# beta ablation (paper: 0, 0.05, 0.5, 5) and gamma ablation (0.005, 0.05, 0.5)
for beta in 0.05 5.0; do
  run "rso_hinge_beta$beta" --gin.sample.sample_configured.beta=$beta
done
for gamma in 0.005 0.5; do run "rso_hinge_gamma$gamma" --gin.GAMMA=$gamma; done
# Tournament-rank pairs (Table 2)
run rso_hinge_tournament --gin.sample.sample_configured.pair_method="'tournament'"
