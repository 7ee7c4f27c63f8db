"""What the paper-table study is made of: data settings, losses, baselines, ablations, the γ
sweep and iterative RSO's round 2 (`paper_table.py` builds its cells from these;
`study_report.py` reports them)."""

from __future__ import annotations

SETTINGS = ("direct", "sft_sample_rank", "rso_sample_rank")
LOSSES = ("sigmoid_norm", "hinge", "hinge_norm")
BASELINES = ("raft", "rest")  # SFT on selected samples: no preference loss (loss "sft")
SAMPLE_OVERRIDE = "--gin.sample.sample_configured."  # the sampling stage's gin overrides
# name: (DATA_SETTING, gin overrides) -- the rso_sample_rank / hinge_norm cell, one knob changed.
ABLATIONS = {
    "beta0": ("rso_sample_rank", (SAMPLE_OVERRIDE + "beta=0.0",)),  # = top-k over N
    "beta0.05": ("rso_sample_rank", (SAMPLE_OVERRIDE + "beta=0.05",)),
    "beta5": ("rso_sample_rank", (SAMPLE_OVERRIDE + "beta=5.0",)),
    "gamma0.005": ("rso_sample_rank", ("--gin.GAMMA=0.005",)),
    "gamma0.5": ("rso_sample_rank", ("--gin.GAMMA=0.5",)),
    "tournament": ("rso_sample_rank", (SAMPLE_OVERRIDE + "pair_method='tournament'",)),
    "single_pass": ("rso_sample_rank", (SAMPLE_OVERRIDE + "rejection_mode='single_pass'",)),
    "proposal_correction": ("rso_sample_rank", (SAMPLE_OVERRIDE + "proposal_correction=True",)),
    "best_of_n": ("best_of_n", ()),  # 8 independent best-of-8 draws, then first-round pairs
}
ABLATED = ("rso_sample_rank", "hinge_norm")  # the cell the ablations change
FRONTIER_LOSS = ABLATED[1]
# The frontier's sweep (`--gammas`): every data setting's hinge_norm cell at these γ besides the
# experiment's own (0.05): a decade grid that holds the paper's γ ablations (0.005, 0.5).
GAMMAS = (0.005, 0.5, 5.0)
KL_BUDGETS = (1.0, 2.0, 4.0, 8.0)  # nats: where the settings are compared at equal KL
# Iterative RSO (`--round2`, gin/variants/iterative.gin): round 2 from these round-1 cells of each seed,
# the experiment's γ and the paper's other γ ablation (where the study has them).
ROUND2 = ("rso_sample_rank-hinge_norm", "rso_sample_rank-hinge_norm-gamma0.5")
DECODINGS = ("greedy", "sample")
# Keys of the evaluation's results[decoding]; fractions, shown in %.
WIN_RATES = ("vs_sft_targets/proxy", "vs_sft_targets/golden", "vs_sft/proxy", "vs_sft/golden")


class StudyError(ValueError):
  """A configuration the study refuses (exit status 2, one line)."""
