"""How well a reward model ranks responses of the embedded task, measured against its golden
reward r* (the simulated rater's): accuracies on held-out D_hf pairs and on pairs of π_sft's
own samples (where RSO reads the reward model), and rank correlations with r*.

  evaluate_reward_model   the held-out quality of a pairwise ρ or a Bradley-Terry model
  correlations            reward vs r*: pooled, relative to the prompt's baseline, within prompt
  sample_pairs, sample_pair_accuracy   every within-prompt pair of samples with unequal r*, and
                          the reward model's accuracy on them
  heldout_accuracy        agreement with the labels of a pairs task's split (any task: a
                          judge's held-out comparisons)
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import jax
import numpy as np
from scipy import stats
import seqio

from rso_jax import checkpoints
from rso_jax import inference
from rso_jax import recipe
from rso_jax.tasks import embedded
from rso_jax.tasks import synthetic


def correlations(rewards: np.ndarray, golden: np.ndarray, prefix: str = "") -> Dict[str, float]:
  """Correlations of rewards `[P, n]` with r* `[P, n]`; column 0 is each prompt's baseline."""
  def corr(fn, x, y):  # over the entries where both are finite (NaN: an excluded sample)
    x, y = np.ravel(x), np.ravel(y)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if len(x) < 2 or np.std(x) == 0 or np.std(y) == 0:
      return float("nan")
    return float(fn(x, y)[0])

  rewards, golden = np.asarray(rewards, np.float64), np.asarray(golden, np.float64)
  rel_r, rel_g = rewards - rewards[:, :1], golden - golden[:, :1]
  out = {
      "pearson_r_star": corr(stats.pearsonr, rewards[:, 1:], golden[:, 1:]),
      "spearman_r_star": corr(stats.spearmanr, rewards[:, 1:], golden[:, 1:]),
      "pearson_relative": corr(stats.pearsonr, rel_r[:, 1:], rel_g[:, 1:]),
      "spearman_relative": corr(stats.spearmanr, rel_r[:, 1:], rel_g[:, 1:]),
  }
  per = [corr(stats.spearmanr, r, g) for r, g in zip(rewards, golden)]
  per = [v for v in per if np.isfinite(v)]
  out["within_prompt_spearman"] = float(np.mean(per)) if per else float("nan")
  a, b = rel_g[:, 1:].ravel(), rel_r[:, 1:].ravel()
  ok = np.isfinite(a) & np.isfinite(b)
  a, b = a[ok], b[ok]
  denom = float(np.sum((a - a.mean()) ** 2))
  out["reward_slope"] = float(np.dot(a - a.mean(), b - b.mean()) / denom) if denom else float("nan")
  return {prefix + k: v for k, v in out.items()}


def evaluate_reward_model(path: Optional[str] = None, split: str = "validation", *,
                          scorer: Optional[inference.RewardModel] = None, env_config: Any = None,
                          batch_size: int = 256, policy_checkpoint: Optional[str] = None,
                          num_policy_samples: int = 8,
                          temperature: float = recipe.PAPER.temperature,
                          top_k: Optional[int] = recipe.PAPER.top_k,
                          num_prompts: Optional[int] = None,
                          seed: int = 0) -> Dict[str, float]:
  """Held-out quality of a reward model (pairwise ρ or BT) on the embedded synthetic task.

  Pairs: the `D_hf` pairs of `split`; each is shown in both orders, (chosen, rejected) and
  (rejected, chosen). Candidates for the pointwise reward: per prompt of `split` (its first
  `num_prompts`), its SFT demonstration (the baseline y_b, reward 0) and the
  2·pairs_per_prompt responses of its `D_hf` pairs. With `policy_checkpoint` (an SFT policy), also `num_policy_samples` samples per
  prompt (`temperature`, `top_k`: the sampling stage's; the first is the baseline, as in the
  paper), keys `sft_samples/...`: the correlations below and `accuracy_golden` over every pair of
  one prompt's samples with unequal r* (`sample_pairs`) -- the reward model where RSO uses it.

  Returns floats:
    accuracy_golden: P(y_hi ≻ y_lo) > 0.5 on pairs with unequal r*, mean over both orders.
    accuracy_golden_symmetrized: the same with logit ρ averaged over the two orders.
    accuracy_labels: agreement with the D_hf labels (all pairs, both orders).
    label_agreement_ceiling: agreement of the D_hf labels themselves with r* (unequal pairs).
    position_bias: mean P(A) over both orders − 0.5 (0 for BT by construction).
    pearson_r_star / spearman_r_star: pointwise reward vs r*(x, y), pooled over the non-baseline
      candidates (scipy.stats).
    pearson_relative / spearman_relative: reward − reward(y_b) vs r*(x, y) − r*(x, y_b), pooled
      (the shift-free quantity the rejection sampler reads).
    within_prompt_spearman: mean over prompts of the Spearman correlation across its candidates.
    reward_slope: least-squares slope of the relative reward on the relative r* (an ideal ρ of
      the simulated rater has slope 1/τ = 1/0.15 ≈ 6.7).
  """
  if scorer is None:
    scorer = inference.load(path, expect=checkpoints.REWARD_KINDS, role="reward model",
                            batch_size=batch_size)
  data = synthetic.build_environment(env_config or embedded.registered_config())
  out = _dhf_pair_accuracy(scorer, data.dhf[split])
  prompts = list(data.prompts[split])[:num_prompts]  # the first num_prompts (None: all)
  by_prompt: Dict[str, List[str]] = {p: [] for p in prompts}
  for p in data.dhf[split]:
    if p.prompt in by_prompt:
      by_prompt[p.prompt].extend([p.chosen, p.rejected])
  cands = [[demo] + by_prompt[p] for p, demo in zip(prompts, data.sft[split])]
  n = min(len(c) for c in cands)
  cands = [c[:n] for c in cands]
  base = [c[0] for c in cands]  # y_b = the SFT demo (column 0)
  rewards = scorer.reward(prompts, cands, base)  # [P, n]
  r_star = functools.partial(synthetic.golden_rewards, ordered=data.config.ordered)
  out.update(correlations(rewards, r_star(prompts, cands)))
  if policy_checkpoint:
    out.update(_sample_quality(scorer, policy_checkpoint, prompts, num_policy_samples,
                               temperature=temperature, top_k=top_k, seed=seed, r_star=r_star))
  return out


def heldout_accuracy(scorer: inference.RewardModel, pairs_task: str, split: str = "validation",
                     *, max_pairs: Optional[int] = 2000, prefix: str = "") -> Dict[str, Any]:
  """How often `scorer` prefers the labeled `chosen` of the first `max_pairs` pairs of a pairs
  task's split, each pair shown in both orders (a tie, P = 1/2, counts 1/2; a pair it cannot
  read whole is left out and counted)."""
  ds = seqio.get_mixture_or_task(pairs_task).get_dataset(
      sequence_length=None, split=split, shuffle=False, num_epochs=1)
  x, yc, yr = [], [], []
  for ex in ds.as_numpy_iterator():
    if max_pairs is not None and len(x) >= max_pairs:
      break
    x.append(ex["inputs_pretokenized"].decode("utf-8"))
    yc.append(ex["chosen_pretokenized"].decode("utf-8"))
    yr.append(ex["rejected_pretokenized"].decode("utf-8"))
  out: Dict[str, Any] = {"task": f"{pairs_task} ({split})", "pairs": len(x)}
  if x:
    p = np.concatenate([np.asarray(scorer.prefer(x, yc, yr), np.float64),
                        1.0 - np.asarray(scorer.prefer(x, yr, yc), np.float64)])
    ok = np.isfinite(p)
    out["unscorable"] = int((~ok).sum() // 2)
    if ok.any():
      o = np.where(p[ok] > 0.5, 1.0, np.where(p[ok] == 0.5, 0.5, 0.0))
      out["accuracy"] = float(o.mean())
  return {prefix + k: v for k, v in out.items()}


def _dhf_pair_accuracy(scorer: inference.RewardModel, pairs: Sequence[Any]) -> Dict[str, float]:
  """Accuracies and position bias on D_hf pairs, each shown in both orders."""
  x = [p.prompt for p in pairs]
  yc, yr = [p.chosen for p in pairs], [p.rejected for p in pairs]
  rc = np.array([p.chosen_reward for p in pairs])
  rr = np.array([p.rejected_reward for p in pairs])
  p_cr = np.asarray(scorer.prefer(x, yc, yr), np.float64)  # chosen shown first (A)
  p_rc = np.asarray(scorer.prefer(x, yr, yc), np.float64)  # rejected shown first
  untied = ~np.isclose(rc, rr)
  c_better = rc > rr
  acc_1 = (p_cr > 0.5) == c_better
  acc_2 = (p_rc < 0.5) == c_better
  logit = lambda p: np.log(np.clip(p, 1e-12, 1)) - np.log(np.clip(1 - p, 1e-12, 1))
  sym = 0.5 * (logit(p_cr) - logit(p_rc))
  return {
      "pairs": float(len(pairs)),
      "pairs_untied": float(untied.sum()),
      "accuracy_golden": float(np.mean(np.concatenate([acc_1[untied], acc_2[untied]]))),
      "accuracy_golden_symmetrized": float(np.mean(((sym > 0) == c_better)[untied])),
      "accuracy_labels": float(np.mean(np.concatenate([p_cr > 0.5, p_rc < 0.5]))),
      "label_agreement_ceiling": float(np.mean(c_better[untied])),
      "position_bias": float(np.mean(np.concatenate([p_cr, p_rc])) - 0.5),
  }


def _sample_quality(scorer: inference.RewardModel, policy_checkpoint: str,
                    prompts: Sequence[str], num_samples: int, *, temperature: float,
                    top_k: Optional[int], seed: int,
                    r_star: Callable = synthetic.golden_rewards) -> Dict[str, float]:
  """`sft_samples/...`: correlations and pair accuracy on the policy's own samples (r* by
  `r_star`)."""
  policy = inference.load(policy_checkpoint, expect=checkpoints.GENERATIVE_KINDS,
                          role="policy", batch_size=32)
  gen = policy.generate(prompts, key=jax.random.key(seed), num_decodes=num_samples,
                        temperature=temperature, top_k=top_k)
  samples = gen.texts
  rewards = np.asarray(scorer.reward(prompts, samples, [s[0] for s in samples]), np.float64)
  golden = r_star(prompts, samples)
  # What the sampling stage drops: decodes without EOS, responses the reward model cannot
  # read whole (NaN). They take no part in the statistics.
  valid = np.asarray(gen.finished) & np.isfinite(rewards)
  out = correlations(np.where(valid, rewards, np.nan), golden, prefix="sft_samples/")
  out.update(sample_pair_accuracy(scorer, prompts, samples, golden, valid=valid,
                                  prefix="sft_samples/", rewards=rewards))
  out["sft_samples/golden_mean"] = float(np.mean(golden))
  out["sft_samples/excluded"] = float(np.sum(~valid))
  return out


def sample_pairs(samples: Sequence[Sequence[str]], golden: np.ndarray,
                 valid: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Every within-prompt pair (i, j), i < j, of distinct valid texts with unequal r*.

  Args:
    samples: `[P][n]` response texts.
    golden: `[P, n]` r* of them.
    valid: `[P, n]` bool, the samples that take part (default: all).

  Returns:
    (prompt `[M]`, better `[M]`, worse `[M]`) int arrays: the sample of higher r* and the other.
  """
  golden = np.asarray(golden, np.float64)
  valid = np.ones(golden.shape, bool) if valid is None else np.asarray(valid, bool)
  rows = []
  for b, (texts, g, ok) in enumerate(zip(samples, golden, valid)):
    for i in range(len(texts)):
      for j in range(i + 1, len(texts)):
        if ok[i] and ok[j] and texts[i] != texts[j] and not np.isclose(g[i], g[j]):
          rows.append((b, i, j) if g[i] > g[j] else (b, j, i))
  out = np.asarray(rows, np.int64).reshape(-1, 3)
  return out[:, 0], out[:, 1], out[:, 2]


def sample_pair_accuracy(scorer: inference.RewardModel, prompts: Sequence[str],
                          samples: Sequence[Sequence[str]], golden: np.ndarray,
                          valid: Optional[np.ndarray] = None, prefix: str = "",
                          rewards: Optional[np.ndarray] = None) -> Dict[str, float]:
  """The reward model's preference on pairs of one prompt's samples vs r* (`sample_pairs`).

  accuracy_golden: P(better ≻ worse) > 0.5 (= 0.5 counts half), the mean over both orders of
    presentation (they agree for BT); pairs_untied: how many pairs it is over.
  `rewards`: a BT model's `[P, N]` rewards of `samples` (any per-prompt shift): its preference
  σ(r_better − r_worse) is read from them instead of scoring every pair again with `prefer`.
  """
  b, hi, lo = sample_pairs(samples, golden, valid)
  if not len(b):
    return {prefix + "accuracy_golden": float("nan"), prefix + "pairs_untied": 0.0}
  score = lambda p: np.where(p == 0.5, 0.5, (p > 0.5).astype(np.float64))
  if rewards is not None and getattr(scorer, "kind", None) == "bt_rm":
    d = np.asarray(rewards, np.float64)[b, hi] - np.asarray(rewards, np.float64)[b, lo]
    acc = np.where(d == 0, 0.5, (d > 0).astype(np.float64))
    return {prefix + "accuracy_golden": float(np.mean(acc)), prefix + "pairs_untied": float(len(b))}
  x = [prompts[i] for i in b]
  y_hi = [samples[i][j] for i, j in zip(b, hi)]
  y_lo = [samples[i][j] for i, j in zip(b, lo)]
  acc = score(np.asarray(scorer.prefer(x, y_hi, y_lo), np.float64))
  if getattr(scorer, "kind", None) == "pairwise_rm":
    acc = 0.5 * (acc + score(1.0 - np.asarray(scorer.prefer(x, y_lo, y_hi), np.float64)))
  return {prefix + "accuracy_golden": float(np.mean(acc)), prefix + "pairs_untied": float(len(b))}
