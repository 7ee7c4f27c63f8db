"""The collection stage's body: on-policy preference pairs rated by the embedded environment's
simulated annotator, as OpenAI collected the TL;DR comparisons (samples of SFT-like policies
shown to raters).

  collect_pairs   two samples per prompt from a policy, labeled by a Bradley-Terry draw on the
                  environment's golden reward, P(y1 ≻ y2) = σ((r*(y1) − r*(y2)) / τ)

The stage around it (reuse, the setting it checks, the files it writes) is
`pipeline.CollectStage`.
"""
from __future__ import annotations

import json
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import jax
import numpy as np

from rso_jax import checkpoints
from rso_jax import inference
from rso_jax import progress
from rso_jax.tasks import synthetic

# The annotator's draws: a stream of their own, apart from the sampling key.
_RATER_STREAM = 0xC011EC7


def collect_pairs(policy_checkpoint: str, prompts: Sequence[str], *,
                  golden: Callable[[Sequence[str], Sequence[str]], np.ndarray],
                  bt_temperature: float, seed: int, temperature: float,
                  top_k: Optional[int]) -> Tuple[List[str], Dict[str, Any]]:
  """(JSONL lines `{prompt, chosen, rejected}`, counts) for two samples of each prompt.

  Pairs with two equal or an empty response are dropped and counted (`identical`, `empty`);
  `label_agreement_with_r_star` is over the pairs whose r* differ.
  """
  policy = inference.load(policy_checkpoint, expect=checkpoints.GENERATIVE_KINDS,
                          role="policy", batch_size=512)
  bar = progress.Progress("[collect] sampled", len(prompts))
  # [P] prompts -> [P][2] responses
  texts = policy.generate(list(prompts), key=jax.random.key(seed), num_decodes=2,
                          temperature=temperature, top_k=top_k, progress=bar.update).texts
  keep = [i for i, (a, b) in enumerate(texts) if a.strip() and b.strip() and a != b]
  x = [prompts[i] for i in keep]
  y1, y2 = [texts[i][0] for i in keep], [texts[i][1] for i in keep]
  r1, r2 = golden(x, y1), golden(x, y2)
  first = synthetic.bt_labels(r1, r2, np.random.default_rng([seed, _RATER_STREAM]),
                              bt_temperature)
  lines = [json.dumps({"prompt": p, "chosen": a if f else b, "rejected": b if f else a})
           for p, a, b, f in zip(x, y1, y2, first)]
  untied = r1 != r2
  agree = float(np.mean(first[untied] == (r1 > r2)[untied])) if untied.any() else float("nan")
  equal = sum(a == b for a, b in texts)
  counts = dict(pairs=len(lines), prompts=len(prompts), identical=equal,
                empty=len(prompts) - len(keep) - equal, label_agreement_with_r_star=agree,
                golden_mean=float(np.mean(np.concatenate([r1, r2]))) if keep else float("nan"))
  return lines, counts
