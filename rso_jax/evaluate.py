r"""Evaluation of a trained policy against π_sft: win rates, golden reward, KL; report and plot.

  python -m rso_jax.evaluate --policy=runs/rso --sft=runs/sft --reward=runs/rm \
      --output_dir=runs/eval --name=rso_hinge

On the same held-out prompts, the policy π and π_sft are decoded greedily and/or by sampling
with the paper's law (temperature 0.7, top-k 40; Sec. 5); the same random key is used for both
policies (common random numbers), so equal params give equal decodes. Reported per decoding:

  * win rate of π against π_sft and against the SFT targets (`sft_target_pretokenized`), under
    the proxy reward model (π wins when `ρ(x, y_π, y_other) > 0.5`) and under the golden reward
    r* where the task has one (π wins when `r*(x, y_π) > r*(x, y_other)`); identical texts and
    equal scores count 1/2 (`win_rate`);
  * mean r* of π's, π_sft's decodes and of the SFT targets.

KL estimate (the constraint of the RSO objective, π* ∝ π_sft·exp(r/β), Sec. 3.1):

  KL(π ‖ π_sft) = E_x E_{y~π(·|x)}[log π(y|x) − log π_sft(y|x)]

with `kl_samples_per_prompt` responses per prompt drawn from π at temperature 1, no top-k /
top-p; `log π` is the sampler's untempered `model_logps`, `log π_sft` is `decoding.score` with
the SFT params. The standard error treats prompts as the independent units (std of the
per-prompt means / sqrt(#prompts)). The sampler never emits the pad token 0, so the draw is
from π renormalized without token 0, which differs from π only by π's mass on 0; responses
that hit `max_decode_length` without EOS are kept (both log-probs cover the same tokens) and
counted in `kl/unfinished_fraction`.

Outputs in `output_dir`: `eval_<name>.json` (this report), `eval_summary.json` (every report
by name) and `eval_plot.png` (mean r* against KL for every policy in the summary), each written
atomically (temp file + rename).
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import jax
import numpy as np

from rso_jax import checkpoints
from rso_jax import fs
from rso_jax import inference
from rso_jax import partitioning
from rso_jax import reports

DECODINGS = ("greedy", "sample")
AUTO = "auto"

GoldenFn = Callable[[Sequence[str], Sequence[str]], np.ndarray]


# ------------------------------------------------------------------------------------------------
# Win-rate arithmetic (pure).


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


def proxy_outcomes(preference: Any, identical: Any) -> np.ndarray:
  """Outcomes under a pairwise judge: `ρ(x, y_a, y_b) > 0.5` wins, identical texts tie (0.5)."""
  p = np.asarray(preference, np.float64)
  return win_outcomes(np.where(np.asarray(identical, bool), 0.5, p), 0.5)


def _stderr(x: np.ndarray) -> float:
  x = np.asarray(x, np.float64)
  return float(x.std(ddof=1) / math.sqrt(x.size)) if x.size > 1 else float("nan")


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
  return float(diff.mean()), _stderr(diff.mean(axis=1))


# ------------------------------------------------------------------------------------------------
# Prompts.


def read_eval_prompts(task_name: str, split: str, num_prompts: Optional[int]) -> Dict[str, Any]:
  """The first `num_prompts` prompts of a seqio task, in order (no shuffling).

  Returns a dict with `texts` [P], `targets` [P] raw `sft_target_pretokenized` (None if the task
  has none), `available` (prompts in the split) and `notes` (human-readable). Tokenization is
  the inference layer's (with the checkpoint's vocabulary, lengths and over-length rule).
  """
  import seqio  # pylint: disable=g-import-not-at-top
  import rso_jax.tasks  # pylint: disable=g-import-not-at-top,unused-import
  if num_prompts is not None and (int(num_prompts) != num_prompts or num_prompts < 1):
    raise ValueError(f"num_prompts must be a positive int, got {num_prompts!r}")
  task = seqio.get_mixture_or_task(task_name)
  ds = task.get_dataset(sequence_length=None, split=split, shuffle=False, num_epochs=1)
  texts, targets, available = [], [], 0
  has_targets = True
  for ex in ds.as_numpy_iterator():
    available += 1
    if num_prompts is not None and len(texts) >= num_prompts:
      continue  # keep counting what the split holds
    texts.append(_text(ex["inputs_pretokenized"]))
    if "sft_target_pretokenized" in ex:
      targets.append(_text(ex["sft_target_pretokenized"]))
    else:
      has_targets = False
  notes = []
  if num_prompts is not None and num_prompts > len(texts):
    notes.append(f"num_prompts={num_prompts} but {task_name}/{split} has only {len(texts)} "
                 f"prompts: evaluating all {len(texts)}")
  for n in notes:
    logging.warning("%s", n)
  if not texts:
    raise ValueError(f"task {task_name!r} split {split!r} has no prompts")
  return dict(texts=texts, targets=targets if has_targets else None, available=available,
              notes=notes)


def _text(x: Any) -> str:
  return x.decode("utf-8") if isinstance(x, (bytes, np.bytes_)) else str(x)


def _mean(x: Sequence[float]) -> float:
  return float(np.mean(np.asarray(x, np.float64)))


# ------------------------------------------------------------------------------------------------
# The evaluation.


def _comparisons(prefix: str, prompts: List[str], ys: List[str], others: List[str],
                 scorer: Optional[inference.RewardModel], golden: Optional[np.ndarray],
                 golden_other: Optional[np.ndarray]) -> Dict[str, Any]:
  """Proxy and golden win rates (with standard errors) of `ys` against `others`.

  A comparison the reward model cannot read whole (NaN preference, see inference.py) is
  dropped from the proxy win rate and counted in `<prefix>/proxy_unscorable`.
  """
  out: Dict[str, Any] = {}
  identical = np.array([a == b for a, b in zip(ys, others)])
  out[f"{prefix}/identical_fraction"] = float(identical.mean())
  if scorer is not None:
    pref = np.asarray(scorer.prefer(prompts, ys, others), np.float64).reshape(-1)
    if pref.shape != (len(ys),):
      raise ValueError(f"prefer returned {pref.shape[0]} values for {len(ys)} pairs")
    ok = np.isfinite(pref) | identical
    out[f"{prefix}/proxy_unscorable"] = int((~ok).sum())
    if ok.any():
      o = proxy_outcomes(np.where(ok, pref, 0.5)[ok], identical[ok])
      out[f"{prefix}/proxy"], out[f"{prefix}/proxy_stderr"] = float(o.mean()), _stderr(o)
  if golden is not None and golden_other is not None:
    o = win_outcomes(golden, golden_other)
    out[f"{prefix}/golden"], out[f"{prefix}/golden_stderr"] = float(o.mean()), _stderr(o)
  return out


def _decode_both(policy: inference.Generator, sft: inference.Generator, prompts: List[str],
                 mode: str, key, *, temperature: float, top_k: Optional[int]):
  """One decode per prompt from π and π_sft with the same key (common random numbers).

  Returns `({"policy", "sft"} -> texts [P], -> lengths [P] in tokens, -> #unfinished,
  #prompts whose context was cut)`.
  """
  ys, lens, unfinished = {}, {}, {}
  for who, model in (("policy", policy), ("sft", sft)):
    if mode == "greedy":
      out = model.greedy(prompts, top_k=top_k)
    else:
      out = model.generate(prompts, key=key, num_decodes=1, temperature=temperature,
                           top_k=top_k)
    ys[who] = [row[0] for row in out.texts]
    truncated = int(np.sum(out.prompt_truncated))
    lens[who] = [int(x) for x in out.lengths[:, 0]]
    unfinished[who] = int(np.sum(~np.asarray(out.finished[:, 0])))
  return ys, lens, unfinished, truncated


def _kl_report(policy: inference.Generator, sft: inference.Generator, prompts: List[str], key,
               samples_per_prompt: int) -> Dict[str, Any]:
  """KL(π ‖ π_sft) from `samples_per_prompt` untempered samples of π per prompt."""
  out = policy.generate(prompts, key=key, num_decodes=samples_per_prompt, temperature=1.0,
                        top_k=None)
  lp = np.asarray(out.model_logps)  # [P, N] log π(y|x)
  ls = sft.score(prompts, np.asarray(out.tokens))  # [P, N] log π_sft(y|x), same tokens
  mean, se = kl_estimate(lp, ls)
  return {"kl/mean": mean, "kl/stderr": se, "kl/num_samples": int(lp.size),
          "kl/unfinished_fraction": float(np.mean(~np.asarray(out.finished))),
          "kl/policy_logp_mean": float(lp.mean()), "kl/sft_logp_mean": float(ls.mean())}


def evaluate_policy(
    policy_path: str,
    sft_path: str,
    *,
    reward_path: Optional[str] = None,
    scorer: Optional[inference.RewardModel] = None,
    prompts_task: str = "synthetic_prompts",
    split: str = "validation",
    num_prompts: Optional[int] = 256,
    input_length: Optional[int] = None,
    max_decode_length: Optional[int] = None,
    keep_context: str = "start",
    decoding: Sequence[str] = DECODINGS,
    temperature: float = 0.7,
    top_k: Optional[int] = 40,
    kl_samples_per_prompt: int = 8,
    seed: int = 0,
    batch_size: int = 64,
    golden_reward_fn: Union[GoldenFn, str, None] = AUTO,
    output_dir: Optional[str] = None,
    name: Optional[str] = None,
    mesh_shape: Sequence[int] = (-1, 1, 1),
    num_examples: int = 8,
) -> Dict[str, Any]:
  """Evaluates `policy_path` against `sft_path` on `num_prompts` prompts (see module doc).

  Args:
    policy_path: the trained policy (run dir, step dir or params dir; see `checkpoints`).
    sft_path: π_sft, the reference of the KL and the opponent of the win rates.
    reward_path: proxy reward model checkpoint (pairwise ρ or BT; its kind comes from its
      manifest; ignored with `scorer`); neither given: no proxy win rates.
    scorer: a loaded `inference.RewardModel` (anything with `prefer(prompts [M], y1 [M],
      y2 [M]) -> [M]` = P(y1 ≻ y2)).
    prompts_task, split: a seqio task with `inputs` (+ `sft_target_pretokenized` for the win
      rate against the SFT targets).
    num_prompts: prompts evaluated (the first ones of the split; None or more than the split
      holds = all, noted in the report).
    input_length, max_decode_length: prompt / response lengths in tokens (default: the policy
      checkpoint's `inputs` / `targets` lengths); longer prompts have their context cut
      (`keep_context`, counted in `prompts_truncated`).
    decoding: any of "greedy" and "sample" (temperature `temperature`, `top_k`).
    kl_samples_per_prompt: samples per prompt of the KL estimate (T = 1, no top-k); 0 = skip.
    seed: randomness of the sampled decodes and the KL samples.
    batch_size: prompts per compiled call (rounded up to the data-parallel size).
    golden_reward_fn: `f(prompts [M], responses [M]) -> [M]`; "auto" = the synthetic task's
      r* for `synthetic*` tasks, none otherwise.
    output_dir: where to write the report, summary and plot (None = write nothing).
    name: the policy's name in the summary (default: the policy directory's name).
    mesh_shape: (data, fsdp, tensor) mesh.
    num_examples: decoded examples kept in the report.

  Returns:
    The report: settings, `results[<decoding>]` (win rates `vs_sft/{proxy,golden}`,
    `vs_sft_targets/{proxy,golden}` with `_stderr`, `golden/{policy,sft,sft_targets}`, mean
    lengths, ...), `kl/{mean,stderr,...}`, examples and notes.
  """
  t0 = time.time()
  decodings = (decoding,) if isinstance(decoding, str) else tuple(decoding)
  for d in decodings:
    if d not in DECODINGS:
      raise ValueError(f"decoding={d!r}: choose from {DECODINGS}")
  if int(batch_size) != batch_size or batch_size < 1:
    raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
  if int(kl_samples_per_prompt) != kl_samples_per_prompt or kl_samples_per_prompt < 0:
    raise ValueError(f"kl_samples_per_prompt must be an int >= 0, got {kl_samples_per_prompt!r}")
  name = reports.safe_name(name or fs.basename(fs.abspath(policy_path)))
  mesh = partitioning.create_mesh(mesh_shape)
  lengths = {"inputs": input_length, "targets": max_decode_length}
  load = lambda path, role: inference.load(
      path, mesh=mesh, expect=checkpoints.GENERATIVE_KINDS, role=role, batch_size=batch_size,
      feature_lengths=lengths, keep_context=keep_context)
  policy, sft = load(policy_path, "policy"), load(sft_path, "SFT")
  if not checkpoints.same_vocabulary(policy.manifest.get_vocabulary(),
                                     sft.manifest.get_vocabulary()):
    raise checkpoints.CheckpointError(
        f"policy {policy_path!r} and SFT {sft_path!r} use different vocabularies "
        f"({policy.manifest.vocabulary} vs {sft.manifest.vocabulary}): KL needs one")
  if scorer is None and reward_path:
    scorer = inference.load(reward_path, mesh=mesh, expect=checkpoints.REWARD_KINDS,
                            role="reward model", batch_size=256, keep_context=keep_context,
                            response_length=policy.feature_lengths["targets"])
  golden_fn = golden_reward_fn
  if golden_fn == AUTO:
    from rso_jax.tasks import synthetic  # pylint: disable=g-import-not-at-top
    golden_fn = synthetic.golden_reward_of(prompts_task)
  golden = (lambda ps, ys: np.asarray(golden_fn(ps, ys), np.float64)) if golden_fn else None

  data = read_eval_prompts(prompts_task, split, num_prompts)
  prompts, targets = data["texts"], data["targets"]
  notes = list(data["notes"])
  if scorer is None:
    notes.append("no reward model given: proxy win rates skipped")
  num = len(prompts)
  base_key = jax.random.key(seed)

  report: Dict[str, Any] = dict(
      name=name, policy_path=fs.abspath(policy_path), sft_path=fs.abspath(sft_path),
      reward_path=reward_path and fs.abspath(reward_path),
      reward_kind=scorer.kind if isinstance(scorer, inference.RewardModel) else None,
      prompts_task=prompts_task, split=split, num_prompts=num,
      num_prompts_requested=num_prompts, prompts_in_split=data["available"],
      input_length=policy.feature_lengths["inputs"],
      max_decode_length=policy.feature_lengths["targets"],
      decoding=list(decodings), temperature=temperature, top_k=top_k,
      kl_samples_per_prompt=kl_samples_per_prompt, seed=seed, batch_size=policy.batch_size,
      has_golden=golden is not None, has_proxy=scorer is not None, results={}, notes=notes)
  golden_targets = None
  if golden is not None and targets is not None:
    golden_targets = golden(prompts, targets)
    report["golden/sft_targets"] = _mean(golden_targets)
  examples = [dict(prompt=p) for p in prompts[:num_examples]]
  if targets is not None:
    for e, t in zip(examples, targets):
      e["sft_target"] = t

  for mode in decodings:
    key = jax.random.fold_in(base_key, DECODINGS.index(mode))
    ys, lens, unfinished, truncated = _decode_both(policy, sft, prompts, mode, key,
                                        temperature=temperature, top_k=top_k)
    res: Dict[str, Any] = {}
    g_pol = g_sft = None
    if golden is not None:
      g_pol, g_sft = golden(prompts, ys["policy"]), golden(prompts, ys["sft"])
      res["golden/policy"], res["golden/sft"] = _mean(g_pol), _mean(g_sft)
      res["golden/policy_stderr"] = _stderr(g_pol)
    res.update(_comparisons("vs_sft", prompts, ys["policy"], ys["sft"], scorer, g_pol, g_sft))
    if targets is not None:
      res.update(_comparisons("vs_sft_targets", prompts, ys["policy"], targets, scorer, g_pol,
                              golden_targets))
      if scorer is not None or golden is not None:
        sft_vs_t = _comparisons("sft_vs_sft_targets", prompts, ys["sft"], targets, scorer,
                                g_sft, golden_targets)
        res.update({k: v for k, v in sft_vs_t.items() if not k.endswith("identical_fraction")})
    res["length/policy"], res["length/sft"] = _mean(lens["policy"]), _mean(lens["sft"])
    res["unfinished/policy"] = unfinished["policy"] / num
    res["unfinished/sft"] = unfinished["sft"] / num
    report["results"][mode] = res
    report["prompts_truncated"] = truncated
    for e, yp, ysft in zip(examples, ys["policy"], ys["sft"]):
      e[f"policy_{mode}"], e[f"sft_{mode}"] = yp, ysft

  if kl_samples_per_prompt:
    report.update(_kl_report(policy, sft, prompts,
                             jax.random.fold_in(base_key, len(DECODINGS)),
                             kl_samples_per_prompt))
  if report.get("prompts_truncated"):
    notes.append(f"{report['prompts_truncated']} prompts longer than "
                 f"{policy.feature_lengths['inputs']} tokens: context cut (keep_context="
                 f"{keep_context!r})")
  if scorer is not None and getattr(scorer, "stats", None):
    report["reward_model/contexts_truncated"] = scorer.stats["contexts_truncated"]
    report["reward_model/responses_too_long"] = scorer.stats["responses_too_long"]
  report["examples"] = examples
  report["wall_seconds"] = time.time() - t0
  if output_dir:
    if jax.process_index() == 0:  # every process computed the same report
      reports.write_outputs(report, output_dir)
    partitioning.sync("evaluate: report written")
  return report


# ------------------------------------------------------------------------------------------------
# Reward-model quality on the embedded task.


def _correlations(rewards: np.ndarray, golden: np.ndarray, prefix: str = "") -> Dict[str, float]:
  """Correlations of rewards `[P, n]` with r* `[P, n]`; column 0 is each prompt's baseline."""
  from scipy import stats  # pylint: disable=g-import-not-at-top

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
                          num_policy_samples: int = 8, temperature: float = 0.7,
                          top_k: Optional[int] = 40, num_prompts: Optional[int] = None,
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
  from rso_jax.tasks import synthetic  # pylint: disable=g-import-not-at-top
  if scorer is None:
    scorer = inference.load(path, expect=checkpoints.REWARD_KINDS, role="reward model",
                            batch_size=batch_size)
  from rso_jax.tasks import embedded  # pylint: disable=g-import-not-at-top
  data = synthetic.build_environment(env_config or embedded.registered_config())
  pairs = data.dhf[split]
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
  out = {
      "pairs": float(len(pairs)),
      "pairs_untied": float(untied.sum()),
      "accuracy_golden": float(np.mean(np.concatenate([acc_1[untied], acc_2[untied]]))),
      "accuracy_golden_symmetrized": float(np.mean(((sym > 0) == c_better)[untied])),
      "accuracy_labels": float(np.mean(np.concatenate([p_cr > 0.5, p_rc < 0.5]))),
      "label_agreement_ceiling": float(np.mean(c_better[untied])),
      "position_bias": float(np.mean(np.concatenate([p_cr, p_rc])) - 0.5),
  }

  prompts = list(data.prompts[split])[:num_prompts]  # the first num_prompts (None: all)
  by_prompt: Dict[str, List[str]] = {p: [] for p in prompts}
  for p in pairs:
    if p.prompt in by_prompt:
      by_prompt[p.prompt].extend([p.chosen, p.rejected])
  cands = [[demo] + by_prompt[p] for p, demo in zip(prompts, data.sft[split])]
  n = min(len(c) for c in cands)
  cands = [c[:n] for c in cands]
  base = [c[0] for c in cands]  # y_b = the SFT demo (column 0)
  rewards = scorer.reward(prompts, cands, base)  # [P, n]
  out.update(_correlations(rewards, synthetic.golden_rewards(prompts, cands)))
  if policy_checkpoint:
    policy = inference.load(policy_checkpoint, expect=checkpoints.GENERATIVE_KINDS,
                            role="policy", batch_size=32)
    gen = policy.generate(prompts, key=jax.random.key(seed), num_decodes=num_policy_samples,
                          temperature=temperature, top_k=top_k)
    samples = gen.texts
    rewards = np.asarray(scorer.reward(prompts, samples, [s[0] for s in samples]), np.float64)
    golden = synthetic.golden_rewards(prompts, samples)
    # What the sampling stage drops: decodes without EOS, responses the reward model cannot
    # read whole (NaN). They take no part in the statistics.
    valid = np.asarray(gen.finished) & np.isfinite(rewards)
    out.update(_correlations(np.where(valid, rewards, np.nan), golden, prefix="sft_samples/"))
    out.update(_sample_pair_accuracy(scorer, prompts, samples, golden, valid=valid,
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


def _sample_pair_accuracy(scorer: inference.RewardModel, prompts: Sequence[str],
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


# ------------------------------------------------------------------------------------------------
# CLI.


def main(argv: Optional[Sequence[str]] = None) -> int:
  from rso_jax import cli  # pylint: disable=g-import-not-at-top
  parser = cli.ArgumentParser(
      prog="python -m rso_jax.evaluate", error_prefix="rso_jax.evaluate",
      description="Win rates and KL of a policy against π_sft (rso_jax.evaluate). Exit status: "
      "0 done, 2 a user error (one line; RSO_JAX_TRACEBACK=1 for the traceback).")
  parser.add_argument("--policy", default=None,
                      help="policy checkpoint (run/step/params dir); without it, --reward is "
                      "evaluated as a reward model on the embedded task (--sft: also on its "
                      "samples)")
  parser.add_argument("--sft", default=None, help="π_sft checkpoint")
  parser.add_argument("--reward", default=None, help="proxy reward model checkpoint")
  parser.add_argument("--prompts_task", default="synthetic_prompts")
  parser.add_argument("--split", default="validation")
  parser.add_argument("--num_prompts", type=int, default=256)
  parser.add_argument("--input_length", type=int, default=None,
                      help="default: the policy checkpoint's inputs length")
  parser.add_argument("--max_decode_length", type=int, default=None,
                      help="default: the policy checkpoint's targets length")
  parser.add_argument("--decoding", default="greedy,sample",
                      help="comma-separated subset of greedy,sample")
  parser.add_argument("--temperature", type=float, default=0.7)
  parser.add_argument("--top_k", type=int, default=40, help="0 = off")
  parser.add_argument("--kl_samples_per_prompt", type=int, default=8)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--batch_size", type=int, default=64)
  parser.add_argument("--output_dir", default=None)
  parser.add_argument("--name", default=None)
  args = parser.parse_args(argv)
  if args.policy is None and not args.reward:
    parser.error("give --policy and --sft (policy evaluation) or --reward (reward model)")
  if args.policy is not None and not args.sft:
    parser.error("--policy needs --sft (the reference of the win rates and the KL)")

  def run():
    partitioning.initialize_distributed()  # several hosts: before anything touches a device
    if args.policy is None:
      print(json.dumps(evaluate_reward_model(args.reward, args.split, seed=args.seed,
                                             policy_checkpoint=args.sft), indent=2))
      return
    with cli.removed_on_failure(args.output_dir or os.curdir):
      report = evaluate_policy(
          args.policy, args.sft, reward_path=args.reward,
          prompts_task=args.prompts_task, split=args.split, num_prompts=args.num_prompts,
          input_length=args.input_length, max_decode_length=args.max_decode_length,
          decoding=tuple(d.strip() for d in args.decoding.split(",") if d.strip()),
          temperature=args.temperature, top_k=args.top_k or None,
          kl_samples_per_prompt=args.kl_samples_per_prompt, seed=args.seed,
          batch_size=args.batch_size, output_dir=args.output_dir, name=args.name)
    for note in report["notes"]:
      print(f"note: {note}")
    print(reports.format_table(report))
    if args.output_dir:
      print(f"report: {fs.join(args.output_dir, 'eval_' + report['name'] + '.json')}; "
            f"plot: {fs.join(args.output_dir, reports.PLOT_FILE)}")

  # ValueError: the evaluation's own refusals (bad decoding, no prompts, unknown task, ...).
  return cli.cli_main("rso_jax.evaluate", run,
                            user_errors=(*cli.USER_ERRORS, ValueError))


if __name__ == "__main__":
  sys.exit(main())
