"""The paper's sampling recipe, in one place (Sec. 5: N = 64 candidates per prompt from π_sft
at temperature 0.7 with top-k 40; keep k = 8 by rejection sampling at β = 0.5).

Every stage that draws from a policy (sampling, evaluation, infer, the collection stage)
takes these values as its defaults, and `SamplingRecipe(...)` is the one check of a user's
values (a ConfigError naming the setting).
"""
from __future__ import annotations

import dataclasses
from typing import Optional

from rso_jax import errors


@dataclasses.dataclass(frozen=True)
class SamplingRecipe:
  """How responses are drawn from a policy and how many are kept.

  num_candidates: N responses drawn per prompt.
  num_samples: k responses kept of the N (`num_samples <= num_candidates`).
  temperature: T >= 0 of the draws (0 = greedy).
  top_k: keep the k most likely tokens at each step; None = off.
  top_p: nucleus sampling mass in (0, 1]; None = off.
  beta: β >= 0 of the optimal policy π* ∝ π_sft · exp(r / β) (Eq. 4); 0 = top-k-over-N.
  """
  num_candidates: int = 64
  num_samples: int = 8
  temperature: float = 0.7
  top_k: Optional[int] = 40
  top_p: Optional[float] = None
  beta: float = 0.5

  def __post_init__(self):
    errors.check_int("num_candidates", self.num_candidates)
    errors.check_int("num_samples", self.num_samples)
    errors.check_int("top_k", self.top_k, optional=True)
    if self.num_samples > self.num_candidates:
      raise errors.ConfigError(f"num_samples={self.num_samples} > "
                               f"num_candidates={self.num_candidates}")
    errors.check_number("beta", self.beta, hint="paper: 0.5; 0 = top-k-over-N")
    errors.check_number("temperature", self.temperature)
    if self.top_p is not None:
      try:
        errors.check_number("top_p", self.top_p, strict=True)
        ok = self.top_p <= 1
      except errors.ConfigError:
        ok = False
      if not ok:
        raise errors.ConfigError(f"top_p={self.top_p!r} must be in (0, 1] or None")


PAPER = SamplingRecipe()
