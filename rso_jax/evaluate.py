r"""Evaluation of a trained policy against π_sft: win rates, golden reward, KL; report and plot.

  python -m rso_jax.evaluate --policy=runs/rso --sft=runs/sft --reward=runs/rm \
      [--judge=runs/judge] --output_dir=runs/eval --name=rso_hinge
  # an experiment's tasks: its gin file and macros, as for python -m rso_jax.train
  python -m rso_jax.evaluate --gin_file=gin/experiments/tldr.gin --gin.TLDR_SFT_TRAIN=... \
      --prompts_task=tldr_sft --policy=... --sft=... --reward=...

On the same held-out prompts, the policy π and π_sft are decoded greedily and/or by sampling
with the paper's law (temperature 0.7, top-k 40; Sec. 5); the same random key is used for both
policies (common random numbers), so equal params give equal decodes. Reported per decoding:

  * win rate of π against π_sft and against the reference responses (`sft_target_pretokenized`
    of a prompts task, or an SFT task's targets: TL;DR's human summaries), under the proxy
    reward model and under a held-out judge (π wins when `P(y_π ≻ y_other) > 0.5`), and under
    the golden reward r* where the task has one (π wins when `r*(x, y_π) > r*(x, y_other)`);
    identical texts and equal scores count 1/2 (`win_rates`). Each rate comes with its 95%
    bootstrap interval over prompts and, under a reward model, its coverage: the comparisons
    it could read whole / those requested (a rate over fewer is marked in the table);
  * the judge's length-controlled win rate (its preference regressed on the length difference,
    read at equal length; `win_rates.length_controlled`), each judge's agreement with r* where
    r* exists, and the judge's accuracy on its held-out comparisons;
  * mean r* of π's, π_sft's decodes and of the references; mean lengths.

KL estimate (the constraint of the RSO objective, π* ∝ π_sft·exp(r/β), Sec. 3.1):

  KL(π ‖ π_sft) = E_x E_{y~π(·|x)}[log π(y|x) − log π_sft(y|x)]

with `kl_samples_per_prompt` responses per prompt drawn from π at temperature 1, no top-k /
top-p; `log π` is the sampler's untempered `model_logps`, `log π_sft` is `decoding.score` with
the SFT params. The standard error treats prompts as the independent units (std of the
per-prompt means / sqrt(#prompts)). The sampler never emits the pad token 0, so the draw is
from π renormalized without token 0, which differs from π only by π's mass on 0; responses
that hit `max_decode_length` without EOS are kept (both log-probs cover the same tokens) and
counted in `kl/unfinished_fraction`.

Outputs in `output_dir`: `eval_<name>.json` (this report), `eval_<name>_examples.jsonl` (one
line per evaluation prompt: prompt, reference, each decoding's responses of π and π_sft with
their lengths, r*, and the proxy's and the judge's preferences), `eval_summary.json` (every
report by name) and `eval_plot.png` (mean r* against KL for every policy in the summary), each
written atomically (temp file + rename).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import jax
import numpy as np

from rso_jax import checkpoints
from rso_jax import cli
from rso_jax import errors
from rso_jax import fs
from rso_jax import inference
from rso_jax import partitioning
from rso_jax import progress
from rso_jax import recipe
from rso_jax import reports
from rso_jax import reward_quality
from rso_jax import runs
from rso_jax import win_rates
from rso_jax import tasks  # pylint: disable=unused-import  (registers the embedded tasks)
from rso_jax.tasks import golden

DECODINGS = ("greedy", "sample")
AUTO = "auto"

GoldenFn = Callable[[Sequence[str], Sequence[str]], np.ndarray]


# ------------------------------------------------------------------------------------------------
# Prompts.


def read_eval_prompts(task_name: str, split: str, num_prompts: Optional[int]) -> Dict[str, Any]:
  """The first `num_prompts` prompts of a seqio task, in order (no shuffling).

  Returns a dict with `texts` [P], `targets` [P] the reference responses (raw
  `sft_target_pretokenized` of a prompts task, `targets_pretokenized` of an SFT task such as
  TL;DR's filtered summaries; None if the task has neither), `available` (prompts in the split) and `notes` (human-readable). Tokenization is
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
    ref = ex.get("sft_target_pretokenized", ex.get("targets_pretokenized"))
    if ref is not None:
      targets.append(_text(ref))
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
                 judges: Mapping[str, inference.RewardModel], golden: Optional[np.ndarray],
                 golden_other: Optional[np.ndarray], lengths: Tuple[np.ndarray, np.ndarray],
                 rows: List[dict], seed: int) -> Dict[str, Any]:
  """Win rates of `ys` against `others` under each judge ("proxy", "judge") and under r*.

  Per judge: the rate over the comparisons it can read whole (NaN preference, see
  inference.py: left out and counted in `<prefix>/<judge>_unscorable`), its `_coverage`
  (scored / requested), `_stderr` and 95% bootstrap interval `_ci` over prompts; for the
  judge also the length-controlled rate `judge_lc` (`win_rates.length_controlled`, lengths in
  the policy's tokens); with r*, each judge's `_agreement_with_golden`. Each prompt's
  preferences go to `rows[i][prefix]`.
  """
  out: Dict[str, Any] = {}
  identical = np.array([a == b for a, b in zip(ys, others)])
  out[f"{prefix}/identical_fraction"] = float(identical.mean())
  for row in rows:
    row[prefix] = {}
  for who, model in judges.items():
    pref = np.asarray(model.prefer(prompts, ys, others), np.float64).reshape(-1)
    if pref.shape != (len(ys),):
      raise ValueError(f"prefer returned {pref.shape[0]} values for {len(ys)} pairs")
    pref = np.where(identical, 0.5, pref)
    summary = win_rates.rate_summary(win_rates.preference_outcomes(pref, identical), seed=seed)
    out[f"{prefix}/{who}_unscorable"] = summary["requested"] - summary["scored"]
    out[f"{prefix}/{who}_coverage"] = summary["coverage"]
    if "rate" in summary:
      out[f"{prefix}/{who}"] = summary["rate"]
      out[f"{prefix}/{who}_stderr"], out[f"{prefix}/{who}_ci"] = summary["stderr"], summary["ci"]
    if who == "judge":
      lc = win_rates.length_controlled_summary(pref, *lengths, seed=seed)
      out[f"{prefix}/judge_lc"], out[f"{prefix}/judge_lc_ci"] = lc["rate"], lc["ci"]
    if golden is not None and golden_other is not None:
      out[f"{prefix}/{who}_agreement_with_golden"] = win_rates.agreement(pref, golden,
                                                                          golden_other)
    for row, v in zip(rows, pref):
      row[prefix][who] = float(v) if np.isfinite(v) else None
  if golden is not None and golden_other is not None:
    summary = win_rates.rate_summary(win_rates.win_outcomes(golden, golden_other), seed=seed)
    out[f"{prefix}/golden"], out[f"{prefix}/golden_stderr"] = summary["rate"], summary["stderr"]
    out[f"{prefix}/golden_ci"] = summary["ci"]
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
  mean, se = win_rates.kl_estimate(lp, ls)
  return {"kl/mean": mean, "kl/stderr": se, "kl/num_samples": int(lp.size),
          "kl/unfinished_fraction": float(np.mean(~np.asarray(out.finished))),
          "kl/policy_logp_mean": float(lp.mean()), "kl/sft_logp_mean": float(ls.mean())}


def evaluate_policy(
    policy_path: str, sft_path: str, *, reward_path: Optional[str] = None,
    scorer: Optional[inference.RewardModel] = None, judge_path: Optional[str] = None,
    judge: Optional[inference.RewardModel] = None,
    judge_heldout: Optional[Tuple[str, str]] = None, prompts_task: str = "synthetic_prompts",
    split: str = "validation", num_prompts: Optional[int] = 256,
    input_length: Optional[int] = None, max_decode_length: Optional[int] = None,
    keep_context: str = "start", decoding: Sequence[str] = DECODINGS,
    temperature: float = recipe.PAPER.temperature, top_k: Optional[int] = recipe.PAPER.top_k,
    kl_samples_per_prompt: int = 8, seed: int = 0, batch_size: int = 64,
    golden_reward_fn: Union[GoldenFn, str, None] = AUTO, output_dir: Optional[str] = None,
    name: Optional[str] = None, mesh_shape: Sequence[int] = (-1, 1, 1), num_examples: int = 8,
    logical_rules: Optional[Sequence[Tuple[str, Any]]] = None,
    extra: Optional[Mapping[str, Any]] = None,
) -> Dict[str, Any]:
  """Evaluates `policy_path` against `sft_path` on `num_prompts` prompts (see module doc).

  Args:
    policy_path, sft_path: the trained policy and π_sft (the reference of the KL and the
      opponent of the win rates): run, step or params directories.
    reward_path: proxy reward model checkpoint (pairwise ρ or BT; its kind comes from its
      manifest; ignored with `scorer`); neither given: no proxy win rates.
    scorer: anything with `prefer(prompts [M], y1 [M], y2 [M]) -> [M]` = P(y1 ≻ y2).
    judge_path, judge: the held-out judge, a reward-model checkpoint the policy never optimized
      (or an object like `scorer`); neither given: no judge win rates.
    judge_heldout: (pairs task, split) of the judge's held-out comparisons: its accuracy on
      them (`judge/heldout_accuracy`).
    prompts_task, split: a seqio task with `inputs` (+ reference responses for the win rates
      against them: `sft_target_pretokenized`, or an SFT task's `targets`).
    num_prompts: the first prompts of the split (None or more than it holds = all, noted).
    input_length, max_decode_length: default the policy checkpoint's lengths; longer prompts
      have their context cut (`keep_context`, counted in `prompts_truncated`).
    decoding: any of "greedy" and "sample" (temperature `temperature`, `top_k`).
    kl_samples_per_prompt: samples per prompt of the KL estimate (T = 1, no top-k); 0 = skip.
    seed: randomness of the decodes and of the bootstrap. batch_size: prompts per compiled
      call (rounded up to the data-parallel size).
    golden_reward_fn: `f(prompts [M], responses [M]) -> [M]`; "auto" = the synthetic task's
      r* for `synthetic*` tasks, none otherwise.
    output_dir, name: where to write the report, its examples (one JSONL line per prompt),
      the summary and the plot (None = write nothing); the policy's name in them (default:
      the policy directory's name).
    mesh_shape, logical_rules: the (data, fsdp, tensor) mesh and the logical-axis rules
      (default `partitioning.LOGICAL_RULES`). num_examples: examples kept in the report.
    extra: entries added to the report as they are (e.g. the judge's split check).

  Returns the report: settings, `results[<decoding>]` (win rates `vs_sft/{proxy,judge,golden}`,
  `vs_sft_targets/...` with `_coverage`, `_stderr`, `_ci`; `judge_lc`; mean r*, lengths),
  `kl/...`, `judge/...`, examples and notes.
  """
  t0 = time.time()
  decodings = _check_settings(decoding, batch_size, kl_samples_per_prompt)
  name = reports.safe_name(name or fs.basename(fs.abspath(policy_path)))
  policy, sft, judges = _open_models(
      policy_path, sft_path, {"proxy": (reward_path, scorer), "judge": (judge_path, judge)},
      mesh_shape=mesh_shape, rules=logical_rules, batch_size=batch_size,
      lengths={"inputs": input_length, "targets": max_decode_length}, keep_context=keep_context)
  golden = _golden(golden_reward_fn, prompts_task)

  data = read_eval_prompts(prompts_task, split, num_prompts)
  prompts, targets = data["texts"], data["targets"]
  notes = list(data["notes"])
  if "proxy" not in judges:
    notes.append("no reward model given: proxy win rates skipped")
  base_key = jax.random.key(seed)
  report: Dict[str, Any] = dict(
      name=name, policy_path=fs.abspath(policy_path), sft_path=fs.abspath(sft_path),
      reward_path=reward_path and fs.abspath(reward_path),
      reward_kind=getattr(judges.get("proxy"), "kind", None),
      judge_path=judge_path and fs.abspath(judge_path),
      judge_kind=getattr(judges.get("judge"), "kind", None),
      prompts_task=prompts_task, split=split, num_prompts=len(prompts),
      num_prompts_requested=num_prompts, prompts_in_split=data["available"],
      **_settings(policy, decodings, temperature, top_k, kl_samples_per_prompt, seed),
      has_golden=golden is not None, has_proxy="proxy" in judges, has_judge="judge" in judges,
      has_references=targets is not None, results={}, notes=notes)
  golden_targets = None
  if golden is not None and targets is not None:
    golden_targets = golden(prompts, targets)
    report["golden/sft_targets"] = _mean(golden_targets)
  rows = [dict(prompt=p) for p in prompts]
  for row, t in zip(rows, targets or ()):
    row["reference"] = t
  def say(line: str) -> None:
    if jax.process_index() == 0:
      print(f"[evaluate] {name}: {line}", flush=True)

  say(f"{len(prompts)} prompts of {prompts_task} ({split}); graders: "
      + ", ".join([*judges, *(["r*"] if golden else [])]))
  for mode in decodings:
    t = time.time()
    key = jax.random.fold_in(base_key, DECODINGS.index(mode))
    report["results"][mode], report["prompts_truncated"] = _evaluate_decoding(
        policy, sft, judges, golden, prompts, targets, golden_targets, mode, key, rows,
        temperature=temperature, top_k=top_k, seed=seed)
    say(f"{mode} decodes of π and π_sft graded in {progress.format_seconds(time.time() - t)}")
  if kl_samples_per_prompt:
    t = time.time()
    report.update(_kl_report(policy, sft, prompts,
                             jax.random.fold_in(base_key, len(DECODINGS)),
                             kl_samples_per_prompt))
    say(f"KL from {kl_samples_per_prompt} samples per prompt in "
        f"{progress.format_seconds(time.time() - t)}")
  if "judge" in judges and judge_heldout:
    report.update(reward_quality.heldout_accuracy(judges["judge"], *judge_heldout,
                                                  prefix="judge/heldout_"))
  _finish_report(report, policy, judges.get("proxy"), keep_context=keep_context)
  report["examples"] = rows[:num_examples]
  report.update(extra or {})
  report["wall_seconds"] = time.time() - t0
  if output_dir:
    if jax.process_index() == 0:  # every process computed the same report
      reports.write_outputs(report, output_dir, rows=rows)
    partitioning.sync("evaluate: report written")
  return report


def _golden(golden_reward_fn: Union[GoldenFn, str, None], prompts_task: str
            ) -> Optional[GoldenFn]:
  """r* as float64 (`AUTO`: the synthetic task's, none for other tasks), or None."""
  fn = golden.golden_reward_of(prompts_task) if golden_reward_fn == AUTO else golden_reward_fn
  return (lambda ps, ys: np.asarray(fn(ps, ys), np.float64)) if fn else None


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


def _open_models(policy_path: str, sft_path: str,
                 judges: Mapping[str, Tuple[Optional[str], Any]], *, mesh_shape: Sequence[int],
                 rules, batch_size: int, lengths: Dict[str, Optional[int]], keep_context: str):
  """(policy, π_sft, {"proxy" / "judge": reward model}) on one mesh; π and π_sft must share a
  vocabulary. `judges`: {role: (checkpoint path, or an object to use as is)}."""
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
  opened = {}
  for role, (path, given) in judges.items():
    if given is None and path:
      given = inference.load(path, mesh=mesh, expect=checkpoints.REWARD_KINDS,
                             role="reward model" if role == "proxy" else role, batch_size=256,
                             keep_context=keep_context,
                             response_length=policy.feature_lengths["targets"], rules=rules)
    if given is not None:
      opened[role] = given
  return policy, sft, opened


def _evaluate_decoding(policy: inference.Generator, sft: inference.Generator,
                       judges: Mapping[str, inference.RewardModel],
                       golden: Optional[GoldenFn], prompts: List[str],
                       targets: Optional[List[str]], golden_targets: Optional[np.ndarray],
                       mode: str, key, rows: List[dict], *, temperature: float,
                       top_k: Optional[int], seed: int) -> Tuple[Dict[str, Any], int]:
  """One decoding's results (win rates, r*, lengths) and the prompts cut; adds each prompt's
  decodes, lengths and preferences to `rows[i][mode]`."""
  num = len(prompts)
  ys, lens, unfinished, truncated = _decode_both(policy, sft, prompts, mode, key,
                                                 temperature=temperature, top_k=top_k)
  tokens = lambda texts: np.array([len(policy.encode(t)) for t in texts], np.float64)
  n_pol, n_sft = tokens(ys["policy"]), tokens(ys["sft"])
  n_ref = tokens(targets) if targets is not None else None
  out_rows = [dict(policy=a, sft=b, policy_length=int(la), sft_length=int(lb))
              for a, b, la, lb in zip(ys["policy"], ys["sft"], n_pol, n_sft)]
  res: Dict[str, Any] = {}
  g_pol = g_sft = None
  if golden is not None:
    g_pol, g_sft = golden(prompts, ys["policy"]), golden(prompts, ys["sft"])
    res["golden/policy"], res["golden/sft"] = _mean(g_pol), _mean(g_sft)
    res["golden/policy_stderr"] = win_rates.stderr(g_pol)
    for r, a, b in zip(out_rows, g_pol, g_sft):
      r["golden_policy"], r["golden_sft"] = float(a), float(b)
  res.update(_comparisons("vs_sft", prompts, ys["policy"], ys["sft"], judges, g_pol, g_sft,
                          (n_pol, n_sft), out_rows, seed))
  if targets is not None:
    res.update(_comparisons("vs_sft_targets", prompts, ys["policy"], targets, judges, g_pol,
                            golden_targets, (n_pol, n_ref), out_rows, seed))
    if judges or golden is not None:
      sft_vs_t = _comparisons("sft_vs_sft_targets", prompts, ys["sft"], targets, judges,
                              g_sft, golden_targets, (n_sft, n_ref), out_rows, seed)
      res.update({k: v for k, v in sft_vs_t.items() if not k.endswith("identical_fraction")})
  res["length/policy"], res["length/sft"] = _mean(lens["policy"]), _mean(lens["sft"])
  res["unfinished/policy"] = unfinished["policy"] / num
  res["unfinished/sft"] = unfinished["sft"] / num
  for row, r in zip(rows, out_rows):
    row[mode] = r
  return res, truncated


def _finish_report(report: Dict[str, Any], policy: inference.Generator, scorer, *,
                   keep_context: str) -> None:
  """Notes on cut prompts and the reward model's counts."""
  if report.get("prompts_truncated"):
    report["notes"].append(
        f"{report['prompts_truncated']} prompts longer than {policy.feature_lengths['inputs']} "
        f"tokens: context cut (keep_context={keep_context!r})")
  if scorer is not None and getattr(scorer, "stats", None):
    report["reward_model/contexts_truncated"] = scorer.stats["contexts_truncated"]
    report["reward_model/responses_too_long"] = scorer.stats["responses_too_long"]


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
  parser.add_argument("--judge", default=None,
                      help="held-out judge: a reward-model checkpoint the policy never optimized")
  parser.add_argument("--judge_pairs_task", default=None,
                      help="pairs task whose validation split is the judge's held-out comparisons "
                      "(its accuracy on them is reported)")
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
  parser.add_argument("--gin_file", action="append", default=[],
                      help="an experiment's gin file (repeatable): its tasks are registered, "
                      "so --prompts_task can name them (e.g. gin/experiments/tldr.gin)")
  parser.add_argument("--gin_search_paths", action="append", default=[])
  parser.add_argument("--gin_bindings", action="append", default=[])
  argv = list(sys.argv[1:] if argv is None else argv)
  gin_macros = [a for a in argv if a.startswith("--gin.")]
  args = parser.parse_args([a for a in argv if not a.startswith("--gin.")])
  if args.policy is None and not args.reward:
    parser.error("give --policy and --sft (policy evaluation) or --reward (reward model)")
  if args.policy is not None and not args.sft:
    parser.error("--policy needs --sft (the reference of the win rates and the KL)")

  def run():
    partitioning.initialize_distributed()  # several hosts: before anything touches a device
    if args.gin_file or gin_macros or args.gin_bindings:
      flags = cli.parse_flags([*(f"--gin_file={f}" for f in args.gin_file),
                               *(f"--gin_search_paths={p}" for p in args.gin_search_paths),
                               *(f"--gin_bindings={b}" for b in args.gin_bindings), *gin_macros])
      cli.configure_gin(flags.files, flags.bindings, flags.search)
    if args.policy is None:
      print(json.dumps(reward_quality.evaluate_reward_model(args.reward, args.split, seed=args.seed,
                                             policy_checkpoint=args.sft), indent=2))
      return
    with runs.removed_on_failure(args.output_dir or os.curdir):
      report = evaluate_policy(
          args.policy, args.sft, reward_path=args.reward, judge_path=args.judge,
          judge_heldout=(args.judge_pairs_task, "validation") if args.judge_pairs_task else None,
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
