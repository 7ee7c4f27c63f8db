"""The embedded task's oracle reward and its calibrated noisy proxies (pure Python / NumPy).

A reward model of kind "oracle_rm" (`inference.OracleRewardModel`) scores

  r̂(x, y) = r*(x, y) / τ + σ · z(x, y),        z(x, y) ~ N(0, 1)

where r* is the task's golden reward, τ the simulated annotator's Bradley–Terry temperature
(so σ = 0 gives exactly the annotator's model, P(y1 ≻ y2) = sigmoid(r̂1 − r̂2) = the paper's
Bradley–Terry preference on r*), and z a fixed function of the text: the SHA-256 of
`seed, x, y`, turned into a standard normal. The same (x, y) always gets the same reward, so
a noisy proxy is a reward model with errors, not a noisy annotator: the rejection sampler can
exploit its mistakes as it exploits a trained one's.

σ is calibrated to a target pairwise accuracy on pairs of π_sft's samples: for a pair with
r* gap Δ ≠ 0 the proxy ranks it right with probability Φ(|Δ| / (τ σ √2)), and
`noise_for_accuracy` solves mean_pairs Φ(...) = target for σ by bisection.
"""
from __future__ import annotations

import hashlib
import math
from typing import Sequence

import numpy as np


def text_normals(texts: Sequence[tuple[str, str]], seed: int) -> np.ndarray:
  """z(x, y) `[M]` float64: one standard normal per (prompt, response), a fixed function of
  `seed` and the texts (Box–Muller on two 64-bit fractions of their SHA-256)."""
  out = np.empty((len(texts),), np.float64)
  for i, (x, y) in enumerate(texts):
    d = hashlib.sha256(f"{int(seed)}\n{x}\n{y}".encode("utf-8", "surrogatepass")).digest()
    u1 = (int.from_bytes(d[:8], "big") + 0.5) / 2.0**64  # (0, 1): log is finite
    u2 = int.from_bytes(d[8:16], "big") / 2.0**64
    out[i] = math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2)
  return out


def _phi(z: np.ndarray) -> np.ndarray:
  """The standard normal CDF."""
  return 0.5 * (1.0 + np.vectorize(math.erf)(np.asarray(z, np.float64) / math.sqrt(2.0)))


def expected_accuracy(gaps: np.ndarray, tau: float, noise: float) -> float:
  """Mean P(the proxy ranks the pair as r* does) over pairs with r* gaps `gaps` `[P]` (0 gaps
  excluded): Φ(|Δ| / (τ σ √2)); 1.0 at σ = 0."""
  g = np.abs(np.asarray(gaps, np.float64))
  g = g[g > 0]
  if not g.size:
    raise ValueError("expected_accuracy: no pair with unequal r* (every gap is 0)")
  if noise == 0:
    return 1.0
  return float(_phi(g / (tau * noise * math.sqrt(2.0))).mean())


def noise_for_accuracy(gaps: np.ndarray, tau: float, target: float, tol: float = 1e-5) -> float:
  """σ with `expected_accuracy(gaps, tau, σ) == target` (bisection; σ = 0 for target 1).

  Args:
    gaps: r*(x, y1) − r*(x, y2) of pairs of π_sft's samples `[P]` (zeros ignored).
    tau: the reward's temperature (r̂ = r*/τ + σ z).
    target: the pairwise accuracy wanted, in (0.5, 1].
  """
  if not 0.5 < float(target) <= 1.0:
    raise ValueError(f"target accuracy {target!r}: need a number in (0.5, 1]")
  if not tau > 0:
    raise ValueError(f"tau={tau!r} must be > 0")
  if target == 1.0:
    return 0.0
  lo, hi = 0.0, 1.0
  while expected_accuracy(gaps, tau, hi) > target:
    hi *= 2.0
    if hi > 1e9:
      raise ValueError(f"no noise level reaches accuracy {target}")
  while hi - lo > tol * max(hi, 1e-12):
    mid = 0.5 * (lo + hi)
    if expected_accuracy(gaps, tau, mid) > target:
      lo = mid
    else:
      hi = mid
  return 0.5 * (lo + hi)
