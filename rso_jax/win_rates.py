"""Win-rate arithmetic of the evaluation: outcomes, coverage, bootstrap intervals, the
length-controlled rate, the KL estimate. Pure NumPy: no model, no seqio, no gin.

  win_outcomes / win_rate      a against b by scores: 1 win, 1/2 tie, 0 loss
  preference_outcomes          under a pairwise judge: P(a ≻ b) > 1/2 wins; identical texts tie
  rate_summary                 rate, standard error, bootstrap interval and coverage of outcomes
                               of which some could not be scored (NaN)
  bootstrap_interval           percentile interval of a statistic over resampled prompts
  length_controlled            the judge's preference at equal length (AlpacaEval 2's idea)
  agreement                    how often a judge's preferred side is r*'s
  kl_estimate                  KL(π ‖ π_sft) from samples of π
"""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, Optional, Tuple

import numpy as np

BOOTSTRAP_RESAMPLES = 1000
LEVEL = 0.95
LOW_COVERAGE = 0.9  # a rate from fewer of the requested comparisons is marked


def win_outcomes(scores_a: Any, scores_b: Any) -> np.ndarray:
  """Per-comparison outcomes of a against b: 1 where a > b, 0.5 where a == b, 0 where a < b.

  Args:
    scores_a: `[M]` scores of the first system (any array-like; broadcast against `scores_b`).
    scores_b: `[M]` scores of the second system.

  Returns:
    float64 `[M]` outcomes.
  """
  a = np.asarray(scores_a, np.float64)
  b = np.asarray(scores_b, np.float64)
  a, b = np.broadcast_arrays(a, b)
  bad = ~(np.isfinite(a) & np.isfinite(b))
  if np.any(bad):
    i = int(np.flatnonzero(bad)[0])
    raise ValueError(f"win rate: non-finite score at index {i}: a={a.flat[i]!r}, "
                     f"b={b.flat[i]!r}")
  return np.where(a > b, 1.0, np.where(a == b, 0.5, 0.0))


def win_rate(scores_a: Any, scores_b: Any) -> float:
  """Fraction of comparisons a wins, ties counting 1/2: mean of `win_outcomes`."""
  out = win_outcomes(scores_a, scores_b)
  if out.size == 0:
    raise ValueError("win rate of zero comparisons")
  return float(out.mean())


def preference_outcomes(preference: Any, identical: Any) -> np.ndarray:
  """Outcomes under a pairwise judge: `P(a ≻ b) > 0.5` wins, identical texts tie (0.5).

  A NaN preference (a comparison the judge cannot read whole) stays NaN unless the texts are
  identical.
  """
  p = np.asarray(preference, np.float64)
  same = np.asarray(identical, bool)
  out = np.where(p > 0.5, 1.0, np.where(p == 0.5, 0.5, 0.0))
  out = np.where(np.isfinite(p), out, np.nan)
  return np.where(same, 0.5, out)


def stderr(x: Any) -> float:
  """Standard error of the mean of `x` (NaN for fewer than 2 values)."""
  x = np.asarray(x, np.float64)
  return float(x.std(ddof=1) / math.sqrt(x.size)) if x.size > 1 else float("nan")


def bootstrap_interval(values: Any, statistic: Callable[[np.ndarray], float] = np.mean, *,
                       seed: int = 0, num_resamples: int = BOOTSTRAP_RESAMPLES,
                       level: float = LEVEL) -> Tuple[float, float]:
  """Percentile bootstrap interval of `statistic` over the rows of `values` (prompts).

  `values`: `[M]` or `[M, ...]`, one row per prompt; rows are drawn with replacement
  `num_resamples` times from `np.random.default_rng(seed)`. (NaN, NaN) for no rows.
  """
  v = np.asarray(values, np.float64)
  m = v.shape[0] if v.ndim else 0
  if m == 0:
    return float("nan"), float("nan")
  rng = np.random.default_rng(seed)
  idx = rng.integers(0, m, size=(num_resamples, m))
  stats = np.array([statistic(v[i]) for i in idx], np.float64)
  stats = stats[np.isfinite(stats)]
  if stats.size == 0:
    return float("nan"), float("nan")
  alpha = (1.0 - level) / 2.0
  return float(np.quantile(stats, alpha)), float(np.quantile(stats, 1.0 - alpha))


def rate_summary(outcomes: Any, *, seed: int = 0) -> Dict[str, Any]:
  """Rate, standard error, 95% bootstrap interval and coverage of `[M]` outcomes (NaN =
  not scored). The rate is over the scored comparisons; `coverage` = scored / requested."""
  o = np.asarray(outcomes, np.float64).reshape(-1)
  ok = np.isfinite(o)
  scored = o[ok]
  out: Dict[str, Any] = {"requested": int(o.size), "scored": int(ok.sum()),
                         "coverage": float(ok.mean()) if o.size else float("nan")}
  if scored.size:
    out["rate"] = float(scored.mean())
    out["stderr"] = stderr(scored)
    out["ci"] = list(bootstrap_interval(scored, seed=seed))
  return out


def _fit_logistic(x: np.ndarray, p: np.ndarray, ridge: float = 1e-7, iters: int = 100
                  ) -> np.ndarray:
  """θ maximizing Σ p·log σ(Xθ) + (1−p)·log σ(−Xθ) − ridge·|θ₁..|²/2 (soft labels p) by Newton."""
  theta = np.zeros(x.shape[1])
  penalty = np.full(x.shape[1], ridge * x.shape[0])
  penalty[0] = 0.0  # the intercept is not shrunk
  for _ in range(iters):
    q = 1.0 / (1.0 + np.exp(-(x @ theta)))
    grad = x.T @ (p - q) - penalty * theta
    hess = (x * (q * (1 - q))[:, None]).T @ x + np.diag(penalty) + 1e-12 * np.eye(x.shape[1])
    step = np.linalg.solve(hess, grad)
    theta = theta + step
    if np.max(np.abs(step)) < 1e-10:
      break
  return theta


def length_controlled(preference: Any, length_a: Any, length_b: Any) -> float:
  """The judge's win probability of a over b at equal length.

  Fits `logit P(a ≻ b) = θ₀ + θ₁·(ℓ_a − ℓ_b)/s` (s: the standard deviation of the length
  differences) to the judge's preferences as soft labels and returns σ(θ₀), the preference
  where the length difference is zero (AlpacaEval 2's length-controlled win rate, without its
  per-instruction term). A judge whose preference is a function of the length difference
  alone, P = σ(c·(ℓ_a − ℓ_b)), gets exactly 1/2. Comparisons with a NaN preference are left
  out; NaN when none is left, or when every comparison has the same nonzero length difference
  (length and quality cannot be told apart).
  """
  p = np.asarray(preference, np.float64).reshape(-1)
  d = np.asarray(length_a, np.float64).reshape(-1) - np.asarray(length_b, np.float64).reshape(-1)
  ok = np.isfinite(p) & np.isfinite(d)
  p, d = np.clip(p[ok], 0.0, 1.0), d[ok]
  if p.size == 0:
    return float("nan")
  s = d.std()
  if s == 0:
    if np.any(d != 0):
      return float("nan")
    theta = _fit_logistic(np.ones((p.size, 1)), p)
  else:
    theta = _fit_logistic(np.stack([np.ones_like(d), d / s], axis=1), p)
  return float(1.0 / (1.0 + math.exp(-theta[0])))


def length_controlled_summary(preference: Any, length_a: Any, length_b: Any, *, seed: int = 0
                              ) -> Dict[str, Any]:
  """`length_controlled` with its bootstrap interval over comparisons (prompts)."""
  rows = np.stack([np.asarray(preference, np.float64).reshape(-1),
                   np.asarray(length_a, np.float64).reshape(-1),
                   np.asarray(length_b, np.float64).reshape(-1)], axis=1)
  fn = lambda r: length_controlled(r[:, 0], r[:, 1], r[:, 2])
  return {"rate": fn(rows),
          "ci": list(bootstrap_interval(rows, fn, seed=seed, num_resamples=200))}


def agreement(preference: Any, golden_a: Any, golden_b: Any) -> Optional[float]:
  """Fraction of comparisons with r*(a) ≠ r*(b) and a scored preference ≠ 1/2 where the judge
  prefers r*'s side (None when there is no such comparison)."""
  p = np.asarray(preference, np.float64).reshape(-1)
  g = np.asarray(golden_a, np.float64).reshape(-1) - np.asarray(golden_b, np.float64).reshape(-1)
  ok = np.isfinite(p) & (g != 0) & (p != 0.5)
  if not ok.any():
    return None
  return float(np.mean((p[ok] > 0.5) == (g[ok] > 0)))


def kl_estimate(policy_logps: Any, sft_logps: Any) -> Tuple[float, float]:
  """(mean, standard error) of `log π − log π_sft` over `[B, N]` samples from π.

  The standard error uses the B per-prompt means (prompts are the independent units).
  """
  lp, ls = np.asarray(policy_logps, np.float64), np.asarray(sft_logps, np.float64)
  if lp.shape != ls.shape or lp.ndim != 2:
    raise ValueError(f"kl_estimate: need equal [B, N] log-probs, got {lp.shape} and {ls.shape}")
  if not np.all(np.isfinite(lp)) or not np.all(np.isfinite(ls)):
    raise ValueError("kl_estimate: non-finite log-probabilities")
  diff = lp - ls
  return float(diff.mean()), stderr(diff.mean(axis=1))
