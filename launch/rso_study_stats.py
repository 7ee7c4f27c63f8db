"""The RSO study's numbers (pure NumPy; `rso_study.py` imports them): the π*_β and best-of-N
references over π_sft's candidates, paired per-seed differences with a t interval, and a
curve read at a KL budget.

  pi_star(rewards, golden, beta)   E r* under π*_β restricted to the N candidates, and its KL
  best_of_n(rewards, golden)       r* of the reward's best candidate, and best-of-N's KL
  paired_t(a, b)                   mean of a − b over seeds with a 95% t interval
  at_kl(points, kl)                a (KL, y) curve read at kl (no extrapolation)
"""

from __future__ import annotations

import math
import os
import sys
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# pylint: disable-next=g-import-not-at-top,wrong-import-position
from study_report import at_kl as curve_at

# Two-sided 95% Student t quantiles t_{0.975, df}, df = 1..30 (beyond: the normal's 1.96).
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
         2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
         2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t975(df: int) -> float:
  """The 97.5% quantile of Student's t with `df` degrees of freedom (df >= 1)."""
  if df < 1:
    raise ValueError(f"t975: df={df!r} must be >= 1")
  return _T975[df - 1] if df <= len(_T975) else 1.96


def _weights(rewards: np.ndarray, beta: float) -> np.ndarray:
  """softmax(r / β) over each row's finite entries `[P, N]` (β = 0: uniform over the argmax)."""
  r = np.asarray(rewards, np.float64)
  ok = np.isfinite(r)
  if not ok.any(axis=1).all():
    raise ValueError("a prompt has no candidate with a finite reward")
  if beta == 0:
    top = np.where(ok, r, -np.inf) == np.max(np.where(ok, r, -np.inf), axis=1, keepdims=True)
    return top / top.sum(axis=1, keepdims=True)
  z = np.where(ok, r / beta, -np.inf)
  z = z - z.max(axis=1, keepdims=True)
  w = np.exp(z)
  return w / w.sum(axis=1, keepdims=True)


def pi_star(rewards: np.ndarray, golden: np.ndarray, beta: float) -> Dict[str, float]:
  """π*_β ∝ π_sft · exp(r / β) on the N candidates drawn from π_sft (paper Eq. 4): each
  candidate weighted softmax(r / β) over its prompt's candidates.

  Args:
    rewards: `[P, N]` the reward r of each candidate (NaN: not a candidate).
    golden: `[P, N]` r* of the candidates.
    beta: β >= 0 (0: the reward's best candidates, ties shared).

  Returns:
    golden: mean over prompts of E_w[r*]; kl: mean over prompts of KL(w ‖ the candidates'
    empirical law) = Σ_i w_i log(n w_i), n = the prompt's candidates, in nats.
  """
  if beta < 0:
    raise ValueError(f"pi_star: beta={beta!r} must be >= 0")
  w = _weights(rewards, beta)
  g = np.where(np.isfinite(np.asarray(rewards, np.float64)), np.asarray(golden, np.float64), 0.0)
  n = np.isfinite(np.asarray(rewards, np.float64)).sum(axis=1, keepdims=True)
  with np.errstate(divide="ignore", invalid="ignore"):
    kl = np.where(w > 0, w * np.log(n * w), 0.0).sum(axis=1)
  return {"golden": float((w * g).sum(axis=1).mean()), "kl": float(kl.mean())}


def best_of_n(rewards: np.ndarray, golden: np.ndarray) -> Dict[str, float]:
  """Best-of-N by the reward: mean r* of each prompt's highest-reward candidate (ties
  averaged), and KL(best-of-N ‖ π_sft) = log N − (N − 1)/N nats (the analytic value for N
  distinct candidates)."""
  r = np.asarray(rewards, np.float64)
  n = int(r.shape[1])
  out = pi_star(r, golden, 0.0)
  return {"golden": out["golden"], "kl": math.log(n) - (n - 1) / n}


def paired_t(a: Sequence[float], b: Sequence[float]) -> Dict[str, Optional[float]]:
  """a − b paired by position (seeds): mean, standard error, 95% t interval, n.

  Pairs with a None on either side are left out; fewer than 2 pairs give no interval."""
  d = [x - y for x, y in zip(a, b) if x is not None and y is not None]
  n = len(d)
  if n == 0:
    return {"mean": None, "se": None, "lo": None, "hi": None, "n": 0}
  mean = float(np.mean(d))
  if n < 2:
    return {"mean": mean, "se": None, "lo": None, "hi": None, "n": 1}
  se = float(np.std(d, ddof=1) / math.sqrt(n))
  half = t975(n - 1) * se
  return {"mean": mean, "se": se, "lo": mean - half, "hi": mean + half, "n": n}


def at_kl(points: Sequence[Tuple[float, float]], kl: float) -> Optional[float]:
  """y at `kl` on the piecewise-linear curve through (KL, y) points taken in training order,
  made monotone in KL by keeping the running maximum of KL (a checkpoint whose KL fell back is
  read at the KL already reached); None outside the KL the points span."""
  pts = []
  reach = -math.inf
  for x, y in points:
    if x > reach:
      pts.append((float(x), float(y)))
      reach = x
  return curve_at(pts, kl)
