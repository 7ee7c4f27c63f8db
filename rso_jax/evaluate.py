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

import argparse
import io
import json
import logging
import math
import os
import re
import sys
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np

from rso_jax import checkpoints
from rso_jax import decoding as decoding_lib
from rso_jax import network
from rso_jax import partitioning

DECODINGS = ("greedy", "sample")
SUMMARY_FILE = "eval_summary.json"
PLOT_FILE = "eval_plot.png"
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
# Prompts and models.


def read_eval_prompts(task_name: str, split: str, input_length: int,
                      num_prompts: Optional[int]) -> Dict[str, Any]:
  """The first `num_prompts` prompts of a seqio task, in order (no shuffling).

  Returns a dict with `texts` [P], `tokens` int32 `[P, input_length]` (0-padded),
  `targets` [P] raw `sft_target_pretokenized` (None if the task has none), `vocabulary`,
  `available` (prompts in the split), `skipped_too_long` and `notes` (human-readable).
  """
  import seqio  # pylint: disable=g-import-not-at-top
  import rso_jax.tasks  # pylint: disable=g-import-not-at-top,unused-import
  if num_prompts is not None and (int(num_prompts) != num_prompts or num_prompts < 1):
    raise ValueError(f"num_prompts must be a positive int, got {num_prompts!r}")
  task = seqio.get_mixture_or_task(task_name)
  ds = task.get_dataset(sequence_length=None, split=split, shuffle=False, num_epochs=1)
  texts, toks, targets, too_long, available = [], [], [], 0, 0
  has_targets = True
  for ex in ds.as_numpy_iterator():
    available += 1
    if num_prompts is not None and len(texts) >= num_prompts:
      continue  # keep counting what the split holds
    t = ex["inputs"]
    if len(t) > input_length:
      too_long += 1
      continue
    texts.append(_text(ex["inputs_pretokenized"]))
    toks.append(np.pad(t, (0, input_length - len(t))))
    if "sft_target_pretokenized" in ex:
      targets.append(_text(ex["sft_target_pretokenized"]))
    else:
      has_targets = False
  notes = []
  if too_long:
    notes.append(f"{too_long} prompts longer than input_length={input_length} tokens skipped")
  if num_prompts is not None and num_prompts > len(texts):
    notes.append(f"num_prompts={num_prompts} but {task_name}/{split} has only {len(texts)} "
                 f"usable prompts: evaluating all {len(texts)}")
  for n in notes:
    logging.warning("%s", n)
  if not texts:
    raise ValueError(f"task {task_name!r} split {split!r} has no prompt of at most "
                     f"{input_length} tokens")
  return dict(texts=texts, tokens=np.stack(toks).astype(np.int32),
              targets=targets if has_targets else None,
              vocabulary=task.output_features["inputs"].vocabulary, available=available,
              skipped_too_long=too_long, notes=notes)


def _text(x: Any) -> str:
  return x.decode("utf-8") if isinstance(x, (bytes, np.bytes_)) else str(x)


def decode_texts(vocab, tokens: np.ndarray) -> List[str]:
  """`[R, L]` response tokens -> R strings (cut at the first EOS, padding dropped)."""
  out = []
  for row in np.asarray(tokens):
    ids = [int(t) for t in row]
    if decoding_lib.EOS_ID in ids:
      ids = ids[:ids.index(decoding_lib.EOS_ID)]
    out.append(vocab.decode([t for t in ids if t > 0]))
  return out


def _check_checkpoint(path: Optional[str], what: str) -> str:
  if not path:
    raise ValueError(f"{what} checkpoint path is empty: {path!r}")
  if not os.path.exists(os.path.expanduser(path)):
    raise FileNotFoundError(f"{what} checkpoint not found: {path!r}")
  return path


class EvalModel:
  """A loaded T5 policy, sharded over a mesh, with jitted greedy / sampled decoding and scoring.

  Every call takes a full batch of `batch_size` prompts (`[batch_size, Le]`), so each
  decoding shape compiles once; callers pad the last chunk (see `_chunks`).
  """

  def __init__(self, path: str, mesh, *, input_length: int, max_decode_length: int):
    config, params = checkpoints.load_model(path)
    self.config = config
    self.module = network.Transformer(config)
    self.mesh = mesh
    self.max_decode_length = int(max_decode_length)
    self.params = partitioning.place_params(self.module, params, mesh, input_length,
                                            max_decode_length)

  def _enc(self, tokens: np.ndarray):
    return partitioning.shard_batch({"t": np.asarray(tokens, np.int32)}, self.mesh)["t"]

  def greedy(self, tokens: np.ndarray, top_k: Optional[int] = None) -> decoding_lib.SampleOutput:
    """`[B, Le]` prompts -> greedy decodes (`tokens [B, 1, L]`).

    Runs the sampler at temperature 0 (greedy argmax; the traced temperature selects it, and
    top-k does not change an argmax), so with the same `top_k` it shares one compiled program
    with `sample(num_decodes=1)`.
    """
    return self.sample(tokens, jax.random.key(0), num_decodes=1, temperature=0.0, top_k=top_k)

  def sample(self, tokens: np.ndarray, key, *, num_decodes: int, temperature: float,
             top_k: Optional[int]) -> decoding_lib.SampleOutput:
    """`[B, Le]` prompts -> `num_decodes` samples each (`tokens [B, N, L]`)."""
    with jax.set_mesh(self.mesh):
      return jax.device_get(decoding_lib.sample(
          self.module, self.params, self._enc(tokens), key, num_decodes=num_decodes,
          max_decode_length=self.max_decode_length, temperature=temperature, top_k=top_k,
          top_p=None))

  def score(self, tokens: np.ndarray, responses: np.ndarray) -> np.ndarray:
    """Untempered `log π(y|x)` of `[B, N, L]` responses to `[B, Le]` prompts -> `[B, N]`."""
    b, n, length = responses.shape
    with jax.set_mesh(self.mesh):
      targets = partitioning.shard_batch(
          {"y": np.asarray(responses, np.int32).reshape(b * n, length)}, self.mesh)["y"]
      out = decoding_lib.score(self.module, self.params, self._enc(tokens), targets)
    return np.asarray(jax.device_get(out)).reshape(b, n)


def _chunks(num: int, batch_size: int) -> Iterator[Tuple[int, List[int], int]]:
  """(start, row indices padded to `batch_size` by repeating the last row, real rows)."""
  for start in range(0, num, batch_size):
    end = min(start + batch_size, num)
    yield start, list(range(start, end)) + [end - 1] * (batch_size - (end - start)), end - start


def _mean(x: Sequence[float]) -> float:
  return float(np.mean(np.asarray(x, np.float64)))


# ------------------------------------------------------------------------------------------------
# The evaluation.


def _comparisons(prefix: str, prompts: List[str], ys: List[str], others: List[str],
                 scorer, golden: Optional[np.ndarray], golden_other: Optional[np.ndarray],
                 batch_size: int) -> Dict[str, Any]:
  """Proxy and golden win rates (with standard errors) of `ys` against `others`."""
  out: Dict[str, Any] = {}
  identical = np.array([a == b for a, b in zip(ys, others)])
  out[f"{prefix}/identical_fraction"] = float(identical.mean())
  if scorer is not None:
    pref = []
    for s in range(0, len(ys), batch_size):
      sl = slice(s, s + batch_size)
      pref.append(np.asarray(scorer.prefer(prompts[sl], ys[sl], others[sl]),
                             np.float64).reshape(-1))
    pref = np.concatenate(pref)
    if pref.shape != (len(ys),):
      raise ValueError(f"scorer.prefer returned {pref.shape[0]} values for {len(ys)} pairs")
    o = proxy_outcomes(pref, identical)
    out[f"{prefix}/proxy"], out[f"{prefix}/proxy_stderr"] = float(o.mean()), _stderr(o)
  if golden is not None and golden_other is not None:
    o = win_outcomes(golden, golden_other)
    out[f"{prefix}/golden"], out[f"{prefix}/golden_stderr"] = float(o.mean()), _stderr(o)
  return out


def _decode_both(policy: EvalModel, sft: EvalModel, tokens: np.ndarray, mode: str, key,
                 batch_size: int, vocab, *, temperature: float, top_k: Optional[int]):
  """One decode per prompt from π and π_sft, chunk by chunk, with the same key for both.

  Returns `({"policy", "sft"} -> texts [P], -> lengths [P] in tokens, -> #unfinished)`.
  """
  ys = {"policy": [], "sft": []}
  lens = {"policy": [], "sft": []}
  unfinished = {"policy": 0, "sft": 0}
  for start, idx, n_real in _chunks(len(tokens), batch_size):
    chunk_key = jax.random.fold_in(key, start)  # depends on the chunk, not on the model
    for who, model in (("policy", policy), ("sft", sft)):
      if mode == "greedy":
        out = model.greedy(tokens[idx], top_k=top_k)
      else:
        out = model.sample(tokens[idx], chunk_key, num_decodes=1, temperature=temperature,
                           top_k=top_k)
      ys[who] += decode_texts(vocab, out.tokens[:n_real, 0])
      lens[who] += [int(x) for x in out.lengths[:n_real, 0]]
      unfinished[who] += int(np.sum(~np.asarray(out.finished[:n_real, 0])))
  return ys, lens, unfinished


def _kl_report(policy: EvalModel, sft: EvalModel, tokens: np.ndarray, key, batch_size: int,
               samples_per_prompt: int) -> Dict[str, Any]:
  """KL(π ‖ π_sft) from `samples_per_prompt` untempered samples of π per prompt."""
  lp_all, ls_all, unfinished = [], [], 0
  for start, idx, n_real in _chunks(len(tokens), batch_size):
    out = policy.sample(tokens[idx], jax.random.fold_in(key, start),
                        num_decodes=samples_per_prompt, temperature=1.0, top_k=None)
    ls = sft.score(tokens[idx], np.asarray(out.tokens))  # [B, N] log π_sft(y|x)
    lp_all.append(np.asarray(out.model_logps)[:n_real])  # [B, N] log π(y|x)
    ls_all.append(ls[:n_real])
    unfinished += int(np.sum(~np.asarray(out.finished)[:n_real]))
  lp, ls = np.concatenate(lp_all), np.concatenate(ls_all)
  mean, se = kl_estimate(lp, ls)
  return {"kl/mean": mean, "kl/stderr": se, "kl/num_samples": int(lp.size),
          "kl/unfinished_fraction": unfinished / lp.size,
          "kl/policy_logp_mean": float(lp.mean()), "kl/sft_logp_mean": float(ls.mean())}


def evaluate_policy(
    policy_path: str,
    sft_path: str,
    *,
    reward_path: Optional[str] = None,
    reward_kind: str = "pairwise",
    scorer: Any = None,
    prompts_task: str = "synthetic_prompts",
    split: str = "validation",
    num_prompts: Optional[int] = 256,
    input_length: int = 32,
    max_decode_length: int = 32,
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
    reward_path: proxy reward model for `reward_models.load_scorer` (ignored with `scorer`);
      neither given: no proxy win rates.
    reward_kind: "pairwise" or "bt".
    scorer: an object with `prefer(prompts [M], y1 [M], y2 [M]) -> [M]` = P(y1 ≻ y2).
    prompts_task, split: a seqio task with `inputs` (+ `sft_target_pretokenized` for the win
      rate against the SFT targets).
    num_prompts: prompts evaluated (the first ones of the split; None or more than the split
      holds = all, noted in the report).
    input_length, max_decode_length: prompt / response lengths in tokens.
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
  _check_checkpoint(policy_path, "policy")
  _check_checkpoint(sft_path, "SFT")
  decodings = (decoding,) if isinstance(decoding, str) else tuple(decoding)
  for d in decodings:
    if d not in DECODINGS:
      raise ValueError(f"decoding={d!r}: choose from {DECODINGS}")
  if int(batch_size) != batch_size or batch_size < 1:
    raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
  if int(kl_samples_per_prompt) != kl_samples_per_prompt or kl_samples_per_prompt < 0:
    raise ValueError(f"kl_samples_per_prompt must be an int >= 0, got {kl_samples_per_prompt!r}")
  if reward_kind not in ("pairwise", "bt"):
    raise ValueError(f"reward_kind={reward_kind!r}: use pairwise or bt")
  name = _safe_name(name or os.path.basename(os.path.abspath(policy_path).rstrip("/")))
  if scorer is None and reward_path:
    _check_checkpoint(reward_path, "reward model")
    from rso_jax import reward_models  # pylint: disable=g-import-not-at-top
    scorer = reward_models.load_scorer(reward_path, kind=reward_kind)
  golden_fn = golden_reward_fn
  if golden_fn == AUTO:
    golden_fn = None
    if prompts_task.startswith("synthetic"):
      from rso_jax.tasks import synthetic  # pylint: disable=g-import-not-at-top
      golden_fn = synthetic.golden_rewards
  golden = (lambda ps, ys: np.asarray(golden_fn(ps, ys), np.float64)) if golden_fn else None

  data = read_eval_prompts(prompts_task, split, input_length, num_prompts)
  prompts, tokens, targets = data["texts"], data["tokens"], data["targets"]
  notes = list(data["notes"])
  if scorer is None:
    notes.append("no reward model given: proxy win rates skipped")
  num = len(prompts)
  mesh = partitioning.create_mesh(mesh_shape)
  dp = partitioning.data_parallel_size(mesh)
  batch_size = max(dp, int(math.ceil(batch_size / dp)) * dp)
  policy = EvalModel(policy_path, mesh, input_length=input_length,
                     max_decode_length=max_decode_length)
  sft = EvalModel(sft_path, mesh, input_length=input_length,
                  max_decode_length=max_decode_length)
  base_key = jax.random.key(seed)

  report: Dict[str, Any] = dict(
      name=name, policy_path=os.path.abspath(policy_path), sft_path=os.path.abspath(sft_path),
      reward_path=reward_path and os.path.abspath(reward_path), reward_kind=reward_kind,
      prompts_task=prompts_task, split=split, num_prompts=num,
      num_prompts_requested=num_prompts, prompts_in_split=data["available"],
      input_length=input_length, max_decode_length=max_decode_length,
      decoding=list(decodings), temperature=temperature, top_k=top_k,
      kl_samples_per_prompt=kl_samples_per_prompt, seed=seed, batch_size=batch_size,
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
    ys, lens, unfinished = _decode_both(policy, sft, tokens, mode, key, batch_size,
                                        data["vocabulary"], temperature=temperature,
                                        top_k=top_k)
    res: Dict[str, Any] = {}
    g_pol = g_sft = None
    if golden is not None:
      g_pol, g_sft = golden(prompts, ys["policy"]), golden(prompts, ys["sft"])
      res["golden/policy"], res["golden/sft"] = _mean(g_pol), _mean(g_sft)
      res["golden/policy_stderr"] = _stderr(g_pol)
    res.update(_comparisons("vs_sft", prompts, ys["policy"], ys["sft"], scorer, g_pol, g_sft,
                            batch_size))
    if targets is not None:
      res.update(_comparisons("vs_sft_targets", prompts, ys["policy"], targets, scorer, g_pol,
                              golden_targets, batch_size))
      if scorer is not None or golden is not None:
        sft_vs_t = _comparisons("sft_vs_sft_targets", prompts, ys["sft"], targets, scorer,
                                g_sft, golden_targets, batch_size)
        res.update({k: v for k, v in sft_vs_t.items() if not k.endswith("identical_fraction")})
    res["length/policy"], res["length/sft"] = _mean(lens["policy"]), _mean(lens["sft"])
    res["unfinished/policy"] = unfinished["policy"] / num
    res["unfinished/sft"] = unfinished["sft"] / num
    report["results"][mode] = res
    for e, yp, ysft in zip(examples, ys["policy"], ys["sft"]):
      e[f"policy_{mode}"], e[f"sft_{mode}"] = yp, ysft

  if kl_samples_per_prompt:
    report.update(_kl_report(policy, sft, tokens, jax.random.fold_in(base_key, len(DECODINGS)),
                             batch_size, kl_samples_per_prompt))
  report["examples"] = examples
  report["wall_seconds"] = time.time() - t0
  if output_dir:
    write_outputs(report, output_dir)
  return report


# ------------------------------------------------------------------------------------------------
# Files: report, summary, plot.


def _safe_name(name: str) -> str:
  safe = re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).strip("._")
  if not safe:
    raise ValueError(f"name={name!r} has no usable characters for a file name")
  return safe


def _jsonable(x: Any) -> Any:
  if isinstance(x, dict):
    return {str(k): _jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_jsonable(v) for v in x]
  if isinstance(x, (np.floating, float)):
    return float(x) if math.isfinite(x) else None
  if isinstance(x, np.integer):
    return int(x)
  if isinstance(x, np.bool_):
    return bool(x)
  return x


def _atomic_write(path: str, data: Union[str, bytes]) -> None:
  tmp = f"{path}.tmp.{os.getpid()}"
  with open(tmp, "wb" if isinstance(data, bytes) else "w") as f:
    f.write(data)
  os.replace(tmp, path)


def write_outputs(report: Dict[str, Any], output_dir: str) -> Dict[str, str]:
  """Writes `eval_<name>.json`, updates `eval_summary.json` and redraws `eval_plot.png`."""
  os.makedirs(output_dir, exist_ok=True)
  name = _safe_name(report["name"])
  clean = _jsonable(report)
  paths = {"report": os.path.join(output_dir, f"eval_{name}.json"),
           "summary": os.path.join(output_dir, SUMMARY_FILE),
           "plot": os.path.join(output_dir, PLOT_FILE)}
  _atomic_write(paths["report"], json.dumps(clean, indent=2))
  summary = load_summary(output_dir)
  summary[name] = {k: v for k, v in clean.items() if k != "examples"}
  _atomic_write(paths["summary"], json.dumps(summary, indent=2))
  _atomic_write(paths["plot"], plot_summary(summary))
  return paths


def load_summary(output_dir: str) -> Dict[str, Any]:
  """`{name: report}` from `output_dir/eval_summary.json` ({} if absent)."""
  path = os.path.join(output_dir, SUMMARY_FILE)
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    summary = json.load(f)
  if not isinstance(summary, dict):
    raise ValueError(f"{path} does not hold a {{name: report}} object")
  return summary


def _plot_mode(report: Dict[str, Any]) -> Optional[str]:
  modes = list(report.get("results", {}))
  return "sample" if "sample" in modes else (modes[0] if modes else None)


def plot_summary(summary: Dict[str, Any]) -> bytes:
  """PNG bytes: mean golden reward (y) vs KL(π ‖ π_sft) (x), one labeled point per policy.

  Uses the sampled decodes when present (else greedy); π_sft is drawn at KL = 0. Without a
  golden reward the y axis is the proxy win rate against π_sft.
  """
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  fig = Figure(figsize=(6.0, 4.5), dpi=100)
  FigureCanvasAgg(fig)
  ax = fig.add_subplot(1, 1, 1)
  use_golden = any(r.get("has_golden") for r in summary.values())
  ylabel = "mean golden reward r*" if use_golden else "proxy win rate vs π_sft"
  sft_points = {}
  modes = set()
  for name, r in summary.items():
    mode = _plot_mode(r)
    res = r.get("results", {}).get(mode, {}) if mode else {}
    x = r.get("kl/mean")
    y = res.get("golden/policy") if use_golden else res.get("vs_sft/proxy")
    if x is None or y is None:
      continue
    modes.add(mode)
    yerr = (res.get("golden/policy_stderr") if use_golden else res.get("vs_sft/proxy_stderr"))
    ax.errorbar([x], [y], xerr=[r.get("kl/stderr") or 0.0], yerr=[yerr or 0.0], fmt="o",
                capsize=3)
    ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    if use_golden and res.get("golden/sft") is not None:
      # One π_sft point per reference and prompt set.
      sft_points[(r.get("sft_path"), r.get("prompts_task"), r.get("split"),
                  r.get("num_prompts"), mode)] = res["golden/sft"]
  for y in sft_points.values():
    ax.plot([0.0], [y], marker="x", color="gray")
    ax.annotate("π_sft", (0.0, y), textcoords="offset points", xytext=(4, -10), fontsize=8,
                color="gray")
  ax.set_xlabel("KL(π ‖ π_sft) estimate (nats)")
  ax.set_ylabel(ylabel)
  ax.set_title(f"policies ({'/'.join(sorted(modes)) or 'no data'} decoding)")
  ax.grid(True, alpha=0.3)
  fig.tight_layout()
  buf = io.BytesIO()
  fig.savefig(buf, format="png")
  return buf.getvalue()


# ------------------------------------------------------------------------------------------------
# Table.


def _fmt(x: Any, pct: bool = False) -> str:
  if x is None or (isinstance(x, float) and not math.isfinite(x)):
    return "-"
  return f"{100 * x:.1f}" if pct else f"{x:.3f}"


def format_table(results: Union[Dict[str, Any], List[Dict[str, Any]]]) -> str:
  """A compact text table, one row per policy and decoding.

  Columns: win rate (%) vs π_sft (proxy / golden), vs the SFT targets (proxy / golden), mean r*
  of the policy and of π_sft, and the KL estimate ± its standard error. Accepts one report,
  a list of reports, or a summary `{name: report}`.
  """
  if isinstance(results, dict):
    reports = [results] if "results" in results else list(results.values())
  else:
    reports = list(results)
  header = ["policy", "decode", "win% vs π_sft proxy/gold", "win% vs SFT target proxy/gold",
            "r* policy/π_sft", "KL(π‖π_sft) ± se"]
  pair = lambda a, b, pct: f"{_fmt(a, pct)} / {_fmt(b, pct)}"
  rows = []
  for r in reports:
    kl = r.get("kl/mean")
    kl_s = "-" if kl is None else f"{kl:.3f} ± {_fmt(r.get('kl/stderr'))}"
    for mode, res in r.get("results", {}).items():
      rows.append([str(r.get("name", "?")), mode,
                   pair(res.get("vs_sft/proxy"), res.get("vs_sft/golden"), True),
                   pair(res.get("vs_sft_targets/proxy"), res.get("vs_sft_targets/golden"), True),
                   pair(res.get("golden/policy"), res.get("golden/sft"), False), kl_s])
  widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h)
            for i, h in enumerate(header)]
  line = lambda cells: "  ".join(c.ljust(w) if i < 2 else c.rjust(w)
                                 for i, (c, w) in enumerate(zip(cells, widths)))
  out = [line(header), line(["-" * w for w in widths])] + [line(row) for row in rows]
  targets = {r.get("golden/sft_targets") for r in reports} - {None}
  if len(targets) == 1:
    out.append(f"(win rates in %; mean r* of the SFT targets: {_fmt(targets.pop())})")
  else:
    out.append("(win rates in %)")
  return "\n".join(out)


# ------------------------------------------------------------------------------------------------
# CLI.


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(
      description="Win rates and KL of a policy against π_sft (rso_jax.evaluate).")
  parser.add_argument("--policy", required=True, help="policy checkpoint (run/step/params dir)")
  parser.add_argument("--sft", required=True, help="π_sft checkpoint")
  parser.add_argument("--reward", default=None, help="proxy reward model checkpoint")
  parser.add_argument("--reward_kind", default="pairwise", choices=("pairwise", "bt"))
  parser.add_argument("--prompts_task", default="synthetic_prompts")
  parser.add_argument("--split", default="validation")
  parser.add_argument("--num_prompts", type=int, default=256)
  parser.add_argument("--input_length", type=int, default=32)
  parser.add_argument("--max_decode_length", type=int, default=32)
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
  report = evaluate_policy(
      args.policy, args.sft, reward_path=args.reward, reward_kind=args.reward_kind,
      prompts_task=args.prompts_task, split=args.split, num_prompts=args.num_prompts,
      input_length=args.input_length, max_decode_length=args.max_decode_length,
      decoding=tuple(d.strip() for d in args.decoding.split(",") if d.strip()),
      temperature=args.temperature, top_k=args.top_k or None,
      kl_samples_per_prompt=args.kl_samples_per_prompt, seed=args.seed,
      batch_size=args.batch_size, output_dir=args.output_dir, name=args.name)
  for note in report["notes"]:
    print(f"note: {note}")
  print(format_table(report))
  if args.output_dir:
    print(f"report: {os.path.join(args.output_dir, 'eval_' + report['name'] + '.json')}; "
          f"plot: {os.path.join(args.output_dir, PLOT_FILE)}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
