"""Win-rate arithmetic: outcomes, coverage, bootstrap intervals, the length-controlled rate, KL."""

import math

import numpy as np
import pytest

from rso_jax import win_rates


def test_win_rate_matches_hand_computation():
  # a > b, tie, a < b, tie -> (1 + 0.5 + 0 + 0.5) / 4.
  assert win_rates.win_rate([1, 2, 3, 4], [0, 2, 5, 4]) == 0.5
  # 2 wins, 1 tie of 3 -> 2.5 / 3.
  assert win_rates.win_rate([3.0, 1.0, 2.0], [1.0, 1.0, 1.0]) == pytest.approx(2.5 / 3)
  assert win_rates.win_rate([0.0], [1.0]) == 0.0
  np.testing.assert_array_equal(win_rates.win_outcomes([1, 1, 1], [0, 1, 2]), [1, 0.5, 0])
  # Pairwise judge: > 0.5 wins, == 0.5 ties, identical texts tie whatever the judge says, a
  # comparison it cannot read (NaN) stays unscored unless the texts are identical.
  np.testing.assert_array_equal(
      win_rates.preference_outcomes([0.9, 0.5, 0.2, 0.1, np.nan, np.nan],
                                    [False, False, False, True, False, True]),
      [1.0, 0.5, 0.0, 0.5, np.nan, 0.5])


def test_win_rate_rejects_bad_input():
  with pytest.raises(ValueError, match="non-finite score at index 1"):
    win_rates.win_rate([1.0, np.nan], [0.0, 0.0])
  with pytest.raises(ValueError, match="zero comparisons"):
    win_rates.win_rate([], [])


def test_rate_summary_counts_coverage_and_rates_only_the_scored():
  s = win_rates.rate_summary([1.0, np.nan, 0.0, 1.0, np.nan, np.nan, 0.5, np.nan])
  assert (s["requested"], s["scored"]) == (8, 4)
  assert s["coverage"] == 0.5
  assert s["rate"] == pytest.approx(2.5 / 4)
  lo, hi = s["ci"]
  assert 0.0 <= lo <= s["rate"] <= hi <= 1.0
  none = win_rates.rate_summary([np.nan, np.nan])
  assert none["coverage"] == 0.0 and "rate" not in none


def test_bootstrap_interval_matches_a_plain_resampling_oracle():
  x = np.random.default_rng(3).random(40)
  lo, hi = win_rates.bootstrap_interval(x, seed=7, num_resamples=500)
  rng = np.random.default_rng(7)  # the same draws, written out
  idx = rng.integers(0, 40, size=(500, 40))
  means = sorted(float(np.mean([x[i] for i in row])) for row in idx)
  assert lo == pytest.approx(np.quantile(means, 0.025))
  assert hi == pytest.approx(np.quantile(means, 0.975))
  # Wider with fewer prompts, and it covers the mean.
  lo2, hi2 = win_rates.bootstrap_interval(x[:10], seed=7)
  assert hi2 - lo2 > hi - lo and lo < x.mean() < hi


def test_length_controlled_rate_of_a_judge_that_only_prefers_longer_is_one_half():
  rng = np.random.default_rng(0)
  la = rng.integers(3, 30, 300).astype(float)
  lb = la - rng.integers(0, 8, 300)  # the policy is longer or as long: it wins 70%+ raw
  pref = 1.0 / (1.0 + np.exp(-0.8 * (la - lb)))
  raw = win_rates.preference_outcomes(pref, la == lb).mean()
  assert raw > 0.7
  assert win_rates.length_controlled(pref, la, lb) == pytest.approx(0.5, abs=1e-6)
  # Both directions of length difference: still exactly 1/2.
  lb2 = la + rng.integers(-6, 7, 300)
  pref2 = 1.0 / (1.0 + np.exp(-0.3 * (la - lb2)))
  assert win_rates.length_controlled(pref2, la, lb2) == pytest.approx(0.5, abs=1e-6)


def test_length_controlled_rate_keeps_a_quality_preference():
  """A judge with a real preference (+1 logit) on top of a length one: the rate at equal
  length is σ(1), whatever the lengths."""
  rng = np.random.default_rng(1)
  la = rng.integers(3, 30, 400).astype(float)
  lb = la + rng.integers(-5, 6, 400)
  d = la - lb
  pref = 1.0 / (1.0 + np.exp(-(1.0 + 0.5 * d / d.std())))
  assert win_rates.length_controlled(pref, la, lb) == pytest.approx(1 / (1 + math.exp(-1)),
                                                                    abs=1e-4)
  # NaN preferences are left out; equal lengths everywhere: the plain mean preference.
  pref_nan = pref.copy()
  pref_nan[::3] = np.nan
  assert np.isfinite(win_rates.length_controlled(pref_nan, la, lb))
  p = np.array([0.6, 0.7, 0.8])
  assert win_rates.length_controlled(p, [5, 5, 5], [5, 5, 5]) == pytest.approx(0.7, abs=1e-6)
  # One nonzero length difference everywhere: length and quality cannot be told apart.
  assert math.isnan(win_rates.length_controlled(p, [6, 6, 6], [5, 5, 5]))
  s = win_rates.length_controlled_summary(pref, la, lb)
  assert s["ci"][0] <= s["rate"] <= s["ci"][1]


def test_agreement_with_golden():
  # r* differs on 3 comparisons (the judge is right on 2), ties and 1/2 preferences skipped.
  assert win_rates.agreement([0.9, 0.2, 0.8, 0.5, 0.7], [1, 1, 0, 2, 3],
                             [0, 0, 1, 1, 3]) == pytest.approx(1 / 3)
  assert win_rates.agreement([0.9, 0.2, 0.3], [1, 0, 0], [0, 1, 1]) == 1.0
  assert win_rates.agreement([0.9], [1], [1]) is None


def test_kl_estimate_matches_numpy_oracle():
  rng = np.random.default_rng(0)
  lp, ls = rng.normal(size=(5, 3)), rng.normal(size=(5, 3))
  mean, se = win_rates.kl_estimate(lp, ls)
  per_prompt = [np.mean(lp[i] - ls[i]) for i in range(5)]
  m = sum(per_prompt) / 5
  oracle_se = np.sqrt(sum((p - m) ** 2 for p in per_prompt) / 4 / 5)
  assert mean == pytest.approx(np.mean(lp - ls))
  assert se == pytest.approx(oracle_se)
  with pytest.raises(ValueError, match="equal"):
    win_rates.kl_estimate(lp, ls[:, :2])
