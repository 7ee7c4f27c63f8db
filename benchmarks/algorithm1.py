"""Algorithm 1 of the paper (arXiv 2309.06657, App. A.1) in plain Python, without jax.

The peer of the vectorized sampler in `benchmarks/rejection.py` and of the sampling stage in
`benchmarks/sampling_stage.py` (whose peer process must not load jax).
"""

import math


def reference(rewards, num_samples, beta, rng):
  """Indices of `num_samples` candidates accepted by statistical rejection sampling.

  rewards: a sequence of floats (one per candidate); beta: the temperature of Eq. 4's
  acceptance rule `u < exp((r - r_max) / beta)`; rng: a `random.Random`.
  """
  candidates = dict(enumerate(rewards))
  accepted = []
  while len(accepted) < num_samples:
    max_reward = max(candidates.values())
    to_remove = []
    for c, r in candidates.items():
      if rng.random() >= math.exp((r - max_reward) / beta):
        continue
      accepted.append(c)
      to_remove.append(c)
      if len(accepted) == num_samples:
        break
    for c in to_remove:
      candidates.pop(c)
  return accepted
