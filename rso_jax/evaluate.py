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
from rso_jax import errors
from rso_jax import fs
from rso_jax import inference
from rso_jax import partitioning
from rso_jax import recipe
from rso_jax import reports
from rso_jax import reward_quality
from rso_jax import runs
from rso_jax import tasks  # pylint: disable=unused-import  (registers the embedded tasks)
from rso_jax.tasks import synthetic

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
    policy_path: str, sft_path: str, *, reward_path: Optional[str] = None,
    scorer: Optional[inference.RewardModel] = None, prompts_task: str = "synthetic_prompts",
    split: str = "validation", num_prompts: Optional[int] = 256,
    input_length: Optional[int] = None, max_decode_length: Optional[int] = None,
    keep_context: str = "start", decoding: Sequence[str] = DECODINGS,
    temperature: float = recipe.PAPER.temperature, top_k: Optional[int] = recipe.PAPER.top_k,
    kl_samples_per_prompt: int = 8, seed: int = 0, batch_size: int = 64,
    golden_reward_fn: Union[GoldenFn, str, None] = AUTO, output_dir: Optional[str] = None,
    name: Optional[str] = None, mesh_shape: Sequence[int] = (-1, 1, 1), num_examples: int = 8,
    logical_rules: Optional[Sequence[Tuple[str, Any]]] = None,
) -> Dict[str, Any]:
  """Evaluates `policy_path` against `sft_path` on `num_prompts` prompts (see module doc).

  Args:
    policy_path, sft_path: the trained policy and π_sft (the reference of the KL and the
      opponent of the win rates): run, step or params directories.
    reward_path: proxy reward model checkpoint (pairwise ρ or BT; its kind comes from its
      manifest; ignored with `scorer`); neither given: no proxy win rates.
    scorer: anything with `prefer(prompts [M], y1 [M], y2 [M]) -> [M]` = P(y1 ≻ y2).
    prompts_task, split: a seqio task with `inputs` (+ `sft_target_pretokenized` for the win
      rate against the SFT targets).
    num_prompts: the first prompts of the split (None or more than it holds = all, noted).
    input_length, max_decode_length: default the policy checkpoint's lengths; longer prompts
      have their context cut (`keep_context`, counted in `prompts_truncated`).
    decoding: any of "greedy" and "sample" (temperature `temperature`, `top_k`).
    kl_samples_per_prompt: samples per prompt of the KL estimate (T = 1, no top-k); 0 = skip.
    seed: randomness of the decodes. batch_size: prompts per compiled call (rounded up to
      the data-parallel size).
    golden_reward_fn: `f(prompts [M], responses [M]) -> [M]`; "auto" = the synthetic task's
      r* for `synthetic*` tasks, none otherwise.
    output_dir, name: where to write the report, summary and plot (None = write nothing);
      the policy's name in them (default: the policy directory's name).
    mesh_shape, logical_rules: the (data, fsdp, tensor) mesh and the logical-axis rules
      (default `partitioning.LOGICAL_RULES`). num_examples: decoded examples kept.

  Returns the report: settings, `results[<decoding>]` (win rates `vs_sft/{proxy,golden}`,
  `vs_sft_targets/...` with `_stderr`, mean r*, lengths), `kl/...`, examples and notes.
  """
  t0 = time.time()
  decodings = _check_settings(decoding, batch_size, kl_samples_per_prompt)
  name = reports.safe_name(name or fs.basename(fs.abspath(policy_path)))
  policy, sft, scorer = _open_models(
      policy_path, sft_path, reward_path, scorer, mesh_shape=mesh_shape, rules=logical_rules,
      batch_size=batch_size,
      lengths={"inputs": input_length, "targets": max_decode_length}, keep_context=keep_context)
  golden = _golden(golden_reward_fn, prompts_task)

  data = read_eval_prompts(prompts_task, split, num_prompts)
  prompts, targets = data["texts"], data["targets"]
  notes = list(data["notes"])
  if scorer is None:
    notes.append("no reward model given: proxy win rates skipped")
  base_key = jax.random.key(seed)
  report: Dict[str, Any] = dict(
      name=name, policy_path=fs.abspath(policy_path), sft_path=fs.abspath(sft_path),
      reward_path=reward_path and fs.abspath(reward_path),
      reward_kind=scorer.kind if isinstance(scorer, inference.RewardModel) else None,
      prompts_task=prompts_task, split=split, num_prompts=len(prompts),
      num_prompts_requested=num_prompts, prompts_in_split=data["available"],
      **_settings(policy, decodings, temperature, top_k, kl_samples_per_prompt, seed),
      has_golden=golden is not None, has_proxy=scorer is not None, results={}, notes=notes)
  golden_targets = None
  if golden is not None and targets is not None:
    golden_targets = golden(prompts, targets)
    report["golden/sft_targets"] = _mean(golden_targets)
  examples = _examples(prompts, targets, num_examples)
  for mode in decodings:
    key = jax.random.fold_in(base_key, DECODINGS.index(mode))
    report["results"][mode], report["prompts_truncated"] = _evaluate_decoding(
        policy, sft, scorer, golden, prompts, targets, golden_targets, mode, key, examples,
        temperature=temperature, top_k=top_k)
  if kl_samples_per_prompt:
    report.update(_kl_report(policy, sft, prompts,
                             jax.random.fold_in(base_key, len(DECODINGS)),
                             kl_samples_per_prompt))
  _finish_report(report, policy, scorer, examples, keep_context=keep_context)
  report["wall_seconds"] = time.time() - t0
  if output_dir:
    if jax.process_index() == 0:  # every process computed the same report
      reports.write_outputs(report, output_dir)
    partitioning.sync("evaluate: report written")
  return report


def _golden(golden_reward_fn: Union[GoldenFn, str, None], prompts_task: str
            ) -> Optional[GoldenFn]:
  """r* as float64 (`AUTO`: the synthetic task's, none for other tasks), or None."""
  fn = synthetic.golden_reward_of(prompts_task) if golden_reward_fn == AUTO else golden_reward_fn
  return (lambda ps, ys: np.asarray(fn(ps, ys), np.float64)) if fn else None


def _examples(prompts: List[str], targets: Optional[List[str]], num: int) -> List[dict]:
  """The first `num` prompts (and SFT targets) of the report's examples."""
  examples = [dict(prompt=p) for p in prompts[:num]]
  if targets is not None:
    for e, t in zip(examples, targets):
      e["sft_target"] = t
  return examples


def _settings(policy: inference.Generator, decodings: Sequence[str], temperature: float,
              top_k: Optional[int], kl_samples_per_prompt: int, seed: int) -> Dict[str, Any]:
  """The report's record of how the policy was decoded."""
  return dict(input_length=policy.feature_lengths["inputs"],
              max_decode_length=policy.feature_lengths["targets"], decoding=list(decodings),
              temperature=temperature, top_k=top_k,
              kl_samples_per_prompt=kl_samples_per_prompt, seed=seed,
              batch_size=policy.batch_size)


def _check_settings(decoding: Union[str, Sequence[str]], batch_size: int,
                    kl_samples_per_prompt: int) -> Tuple[str, ...]:
  """The decodings to evaluate; ValueError for a value that cannot run."""
  decodings = (decoding,) if isinstance(decoding, str) else tuple(decoding)
  for d in decodings:
    if d not in DECODINGS:
      raise ValueError(f"decoding={d!r}: choose from {DECODINGS}")
  if int(batch_size) != batch_size or batch_size < 1:
    raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
  if int(kl_samples_per_prompt) != kl_samples_per_prompt or kl_samples_per_prompt < 0:
    raise ValueError(f"kl_samples_per_prompt must be an int >= 0, got {kl_samples_per_prompt!r}")
  return decodings


def _open_models(policy_path: str, sft_path: str, reward_path: Optional[str],
                 scorer: Optional[inference.RewardModel], *, mesh_shape: Sequence[int], rules,
                 batch_size: int, lengths: Dict[str, Optional[int]], keep_context: str):
  """(policy, π_sft, reward model or None) on one mesh; π and π_sft must share a vocabulary."""
  mesh = partitioning.create_mesh(mesh_shape)
  load = lambda path, role: inference.load(
      path, mesh=mesh, expect=checkpoints.GENERATIVE_KINDS, role=role, batch_size=batch_size,
      feature_lengths=lengths, keep_context=keep_context, rules=rules)
  policy, sft = load(policy_path, "policy"), load(sft_path, "SFT")
  if not checkpoints.same_vocabulary(policy.manifest.get_vocabulary(),
                                     sft.manifest.get_vocabulary()):
    raise errors.CheckpointError(
        f"policy {policy_path!r} and SFT {sft_path!r} use different vocabularies "
        f"({policy.manifest.vocabulary} vs {sft.manifest.vocabulary}): KL needs one")
  if scorer is None and reward_path:
    scorer = inference.load(reward_path, mesh=mesh, expect=checkpoints.REWARD_KINDS,
                            role="reward model", batch_size=256, keep_context=keep_context,
                            response_length=policy.feature_lengths["targets"], rules=rules)
  return policy, sft, scorer


def _evaluate_decoding(policy: inference.Generator, sft: inference.Generator, scorer,
                       golden: Optional[GoldenFn], prompts: List[str],
                       targets: Optional[List[str]], golden_targets: Optional[np.ndarray],
                       mode: str, key, examples: List[dict], *, temperature: float,
                       top_k: Optional[int]) -> Tuple[Dict[str, Any], int]:
  """One decoding's results (win rates, r*, lengths) and the prompts cut; adds its decodes to
  `examples`."""
  num = len(prompts)
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
  for e, yp, ysft in zip(examples, ys["policy"], ys["sft"]):
    e[f"policy_{mode}"], e[f"sft_{mode}"] = yp, ysft
  return res, truncated


def _finish_report(report: Dict[str, Any], policy: inference.Generator, scorer,
                   examples: List[dict], *, keep_context: str) -> None:
  """Notes on cut prompts, the reward model's counts, the examples."""
  if report.get("prompts_truncated"):
    report["notes"].append(
        f"{report['prompts_truncated']} prompts longer than {policy.feature_lengths['inputs']} "
        f"tokens: context cut (keep_context={keep_context!r})")
  if scorer is not None and getattr(scorer, "stats", None):
    report["reward_model/contexts_truncated"] = scorer.stats["contexts_truncated"]
    report["reward_model/responses_too_long"] = scorer.stats["responses_too_long"]
  report["examples"] = examples


# ------------------------------------------------------------------------------------------------
# CLI.


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = errors.ArgumentParser(
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
  parser.add_argument("--temperature", type=float, default=recipe.PAPER.temperature)
  parser.add_argument("--top_k", type=int, default=recipe.PAPER.top_k, help="0 = off")
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
      print(json.dumps(reward_quality.evaluate_reward_model(args.reward, args.split, seed=args.seed,
                                             policy_checkpoint=args.sft), indent=2))
      return
    with runs.removed_on_failure(args.output_dir or os.curdir):
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
  return errors.report("rso_jax.evaluate", run,
                       user_errors=(*errors.USER_ERRORS, ValueError))


if __name__ == "__main__":
  sys.exit(main())
