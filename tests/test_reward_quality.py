"""rso_jax.reward_quality: a reward model's quality against the embedded task's r*."""
import numpy as np
import pytest

import helpers
from helpers import GoldenScorer, LengthScorer
from rso_jax import reward_models, reward_quality
from rso_jax.tasks import synthetic


def test_reward_model_evaluation_against_an_oracle_and_a_real_checkpoint(tmp_path):
  """A judge that IS the golden reward scores perfectly; a random BT checkpoint loads by its
  manifest and gives finite statistics."""
  perfect = reward_quality.evaluate_reward_model(scorer=GoldenScorer())
  assert perfect["accuracy_golden"] == 1.0 and perfect["accuracy_golden_symmetrized"] == 1.0
  assert perfect["pearson_relative"] == pytest.approx(1.0, abs=1e-3)  # float32 rewards
  assert perfect["spearman_relative"] == pytest.approx(1.0, abs=1e-3)  # float32 ties
  assert perfect["within_prompt_spearman"] == pytest.approx(1.0)
  assert perfect["reward_slope"] == pytest.approx(20.0, rel=1e-3)
  assert perfect["position_bias"] == pytest.approx(0.0, abs=1e-9)
  bt = helpers.save(tmp_path / "bt", reward_models.BradleyTerryRewardModel(helpers.CFG),
                    {"inputs": 32, "targets": 32})
  out = reward_quality.evaluate_reward_model(bt)
  assert 0.0 <= out["accuracy_golden"] <= 1.0 and np.isfinite(out["pearson_r_star"])


class OrderScorer(LengthScorer):
  """A pairwise judge with a position preference: ρ(x, A, B) = σ(len(A) − len(B) + 0.5)."""
  kind = "pairwise_rm"

  def prefer(self, prompts, y1, y2):
    d = np.array([len(a) - len(b) + 0.5 for a, b in zip(y1, y2)], np.float64)
    return 1.0 / (1.0 + np.exp(-d))


def test_accuracy_on_sample_pairs_matches_a_plain_python_count():
  """Every pair of one prompt's samples with distinct texts and unequal r*, counted by hand."""
  prompts = ["owl cat ram", "ant bee"]
  samples = [["owl cat ram", "owl cat", "owl cat", "cat owl ram dog", "owl cat ram ram"],
             ["ant bee", "bee", "ant bee cow", "bee ant", "ant"]]
  golden = synthetic.golden_rewards(prompts, samples)
  b, hi, lo = reward_quality.sample_pairs(samples, golden)
  want = [(i, j, k) for i, row in enumerate(samples) for j in range(5) for k in range(5)
          if row[j] != row[k] and golden[i, j] > golden[i, k] + 1e-6]
  assert sorted(zip(b.tolist(), hi.tolist(), lo.tolist())) == sorted(want)
  for scorer, sym in ((GoldenScorer(), False), (LengthScorer(), False), (OrderScorer(), True)):
    out = reward_quality.sample_pair_accuracy(scorer, prompts, samples, golden, prefix="s/")
    points = []
    for i, j, k in want:
      x, hi_y, lo_y = prompts[i], samples[i][j], samples[i][k]
      orders = ((hi_y, lo_y, 1), (lo_y, hi_y, 0)) if sym else ((hi_y, lo_y, 1),)
      got = []
      for a, c, a_is_better in orders:
        p = float(scorer.prefer([x], [a], [c])[0])
        p_better = p if a_is_better else 1.0 - p
        got.append(1.0 if p_better > 0.5 else 0.5 if p_better == 0.5 else 0.0)
      points.append(sum(got) / len(got))
    assert out["s/pairs_untied"] == len(want)
    assert out["s/accuracy_golden"] == pytest.approx(sum(points) / len(points)), scorer
  assert reward_quality.sample_pair_accuracy(GoldenScorer(), prompts, samples,
                                             golden)["accuracy_golden"] == 1.0

  class BTLengthScorer(LengthScorer):
    """A BT model whose pairs must be read from the rewards it already gave."""
    kind = "bt_rm"

    def prefer(self, prompts, y1, y2):
      raise AssertionError("the pairs were scored again")

  shifted = LengthScorer().reward(prompts, samples) - np.array([[7.0], [-3.0]], np.float32)
  from_rewards = reward_quality.sample_pair_accuracy(BTLengthScorer(), prompts, samples, golden,
                                                    prefix="s/", rewards=shifted)
  assert from_rewards == reward_quality.sample_pair_accuracy(LengthScorer(), prompts, samples,
                                                             golden, prefix="s/")
