r"""The RSO sampling stage: sample → score → select → pair → label → write a pair task.

  python -m rso_jax.sample --gin_file=gin/sample_rso.gin \
      --gin.SFT_CHECKPOINT=\"runs/sft\" --gin.REWARD_CHECKPOINT=\"runs/rm\" \
      --gin.SAMPLES_DIR=\"runs/samples_rso\"

For every prompt of a seqio task: N candidates from π_sft (KV-cached, encoder run once per
prompt), rewards `[B, N]` from the reward model, k selected (rso / random / best-of-N /
top-k-over-N), pairs built (first-round or tournament) and labeled by the reward model, and
written with the untempered log π_sft of both responses as TFRecord shards
`pairs-SSSSS-of-TTTTT.tfrecord`. Shards are written atomically (temp file + rename); a rerun
skips every finished shard. `stats.json` holds acceptance rate, rounds and rewards of the
selected vs all candidates (and golden rewards on the synthetic task); `COMPLETED` marks the end.

The paper's three data settings are names: `rso_sample_rank` (rejection sampling),
`sft_sample_rank` (uniform random k of N), `direct` (no sampling: train on D_hf itself). Its
baselines write the selected responses themselves (one record per response: `chosen` is the
response, `rejected` empty), for SFT of π_sft on them (`gin/raft.gin`, `gin/rest.gin`):
`raft` (RAFT: the best of N by the reward model, `num_samples` = 1) and `rest` (ReST's
improve step: of the top `num_samples`, those whose reward min-max rescaled over the prompt's
candidates is >= `rest_threshold`, 0.7).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import signal
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rso_jax import checkpoints
from rso_jax import fs
from rso_jax import inference
from rso_jax import pairs as pairs_lib
from rso_jax import partitioning
from rso_jax import rejection
from rso_jax import run_lock

DATA_SETTINGS = {"rso_sample_rank": "rso", "sft_sample_rank": "random",
                 "best_of_n": "best_of_n", "top_k_over_n": "top_k_over_n",
                 "raft": "best_of_n", "rest": "rest"}
RESPONSE_SETTINGS = ("raft", "rest")  # write the selected responses (SFT data), not pairs
COMPLETED = "COMPLETED"
STATS = "stats.json"


def is_complete(output_dir: str) -> bool:
  return fs.exists(fs.join(output_dir, COMPLETED))


def read_prompts(task_name: str, split: str, max_prompts: Optional[int] = None) -> List[str]:
  """The `inputs_pretokenized` texts of a seqio task, in order (no shuffling).

  Tokenization (with the policy checkpoint's vocabulary and lengths, and the over-length rule)
  is the inference layer's job; nothing is skipped here.
  """
  import seqio  # pylint: disable=g-import-not-at-top
  import rso_jax.tasks  # pylint: disable=g-import-not-at-top,unused-import
  task = seqio.get_mixture_or_task(task_name)
  ds = task.get_dataset(sequence_length=None, split=split, shuffle=False, num_epochs=1)
  texts = []
  for ex in ds.as_numpy_iterator():
    if max_prompts is not None and len(texts) >= max_prompts:
      break
    if "inputs_pretokenized" not in ex:
      raise ValueError(f"task {task_name!r} has no 'inputs_pretokenized' feature (the prompt "
                       "text the sampling stage reads)")
    texts.append(ex["inputs_pretokenized"].decode("utf-8"))
  if not texts:
    raise ValueError(f"task {task_name!r} split {split!r} has no prompts")
  return texts


def _strip(tokens: np.ndarray, eos_id: int) -> List[int]:
  """Token row up to and including EOS (padding removed)."""
  ids = [int(t) for t in tokens]
  if eos_id in ids:
    return ids[:ids.index(eos_id) + 1]
  return [t for t in ids if t > 0]


@dataclasses.dataclass
class _Accum:
  """Running sums for stats.json."""
  prompts: int = 0
  prompts_truncated: int = 0
  candidates: int = 0
  valid_candidates: int = 0
  unfinished: int = 0
  empty: int = 0
  retokenized: int = 0
  not_retokenizable: int = 0
  reward_unscorable: int = 0
  labels_unscorable: int = 0
  accepted: int = 0
  visited: int = 0
  rounds: int = 0
  pairs: int = 0
  responses: int = 0  # records of a RESPONSE_SETTINGS run (selected responses, no pairs)
  skipped_identical: int = 0
  skipped_invalid: int = 0
  reward_all: float = 0.0
  reward_selected: float = 0.0
  reward_chosen: float = 0.0
  reward_rejected: float = 0.0
  golden_all: float = 0.0
  golden_selected: float = 0.0
  golden_chosen: float = 0.0
  golden_rejected: float = 0.0
  label_golden_agree: float = 0.0
  label_golden_decided: int = 0

  def add(self, other: "_Accum") -> None:
    for f in dataclasses.fields(self):
      setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

  def summary(self) -> Dict[str, Any]:
    d = dataclasses.asdict(self)
    div = lambda a, b: (a / b) if b else float("nan")
    d.update({
        "rejection/acceptance_rate": div(self.accepted, self.visited),
        "rejection/rounds": div(self.rounds, self.prompts),
        "rejection/accepted_per_prompt": div(self.accepted, self.prompts),
        "reward/all_mean": div(self.reward_all, self.valid_candidates),
        "reward/selected_mean": div(self.reward_selected, self.accepted),
        "reward/chosen_mean": div(self.reward_chosen, self.pairs),
        "reward/rejected_mean": div(self.reward_rejected, self.pairs),
        "golden/all_mean": div(self.golden_all, self.valid_candidates),
        "golden/selected_mean": div(self.golden_selected, self.accepted),
        "golden/chosen_mean": div(self.golden_chosen, self.pairs),
        "golden/rejected_mean": div(self.golden_rejected, self.pairs),
        "golden/label_agreement": div(self.label_golden_agree, self.label_golden_decided),
        "pairs_per_prompt": div(self.pairs, self.prompts),
        "responses_per_prompt": div(self.responses, self.prompts),
    })
    return d


def _label_fn(scorer: inference.RewardModel, label_with: str, prompts, texts, unscorable: set):
  """preference_fn over candidate indices for `pairs.make_pairs` (host-side), or None.

  A preference the reward model cannot compute (responses too long together) counts as a tie
  for the bracket; the pair is recorded in `unscorable` and not written.
  """
  if label_with == "reward":
    return None

  def pref(idx_a, idx_b):
    a, b = np.asarray(idx_a), np.asarray(idx_b)
    bsz, p = a.shape
    flat_p = [prompts[i] for i in range(bsz) for _ in range(p)]
    ya = [texts[i][a[i, j]] for i in range(bsz) for j in range(p)]
    yb = [texts[i][b[i, j]] for i in range(bsz) for j in range(p)]
    prob = np.asarray(scorer.prefer(flat_p, ya, yb), np.float32).reshape(bsz, p)
    for i, j in np.argwhere(~np.isfinite(prob)):
      unscorable.add((int(i), frozenset((int(a[i, j]), int(b[i, j])))))
    return jnp.asarray(np.where(np.isfinite(prob), prob, 0.5))
  return pref


def process_batch(policy: inference.Generator, scorer: inference.RewardModel,
                  prompts: Sequence[str], key, *, num_candidates: int,
                  max_decode_length: Optional[int], temperature: float, top_k: Optional[int],
                  top_p: Optional[float], strategy: str, num_samples: int, beta: float,
                  rejection_mode: str, proposal_correction: bool, pair_method: str,
                  label_with: str, golden_fn: Optional[Callable] = None,
                  n_real: Optional[int] = None, keep_unfinished: bool = False,
                  responses_only: bool = False,
                  rest_threshold: float = rejection.REST_THRESHOLD):
  """One batch of prompts -> (records, _Accum) over its first `n_real` rows (rest: padding).

  `responses_only`: one record per selected response (a RESPONSE_SETTINGS run), no pairs.

  Every random choice comes from `key`, split three ways: decoding, selection, and the
  per-prompt random order of the selected candidates before pairing (`pairs.shuffle_slots`),
  so the pairs are a uniformly random matching / bracket of the selected set whatever the
  selector's own order (rso: acceptance order), alike for every data setting.
  """
  # split(key, 3)[:2] == split(key) (partitionable threefry): decoding and selection draws
  # are those of a two-way split.
  k_sample, k_select, k_pair = jax.random.split(key, 3)
  out = policy.generate(list(prompts), key=k_sample, num_decodes=num_candidates,
                        temperature=temperature, top_k=top_k, top_p=top_p,
                        max_decode_length=max_decode_length, batch_size=len(prompts),
                        canonical=True)  # text, tokens and log π of one response agree
  b, n, _ = out.tokens.shape
  texts = out.texts
  lengths, finished = np.asarray(out.lengths), np.asarray(out.finished)
  nonempty = lengths > 1  # more than the EOS token
  # A candidate without EOS within max_decode_length is truncated: invalid unless configured
  # (counted as `unfinished` either way).
  valid = (finished | keep_unfinished) & nonempty
  # A text whose own tokenization is longer than the decode length is not the tokens it came
  # from: the reward model would read one response and the policy train on another.
  inconsistent = (np.zeros_like(valid) if out.consistent is None
                  else ~np.asarray(out.consistent))
  valid = valid & ~inconsistent
  # Pairwise: Eq. 7's baseline y_b is the prompt's first valid (finished, non-empty) candidate.
  rewards = np.asarray(scorer.reward(list(prompts), texts, valid=valid), np.float32)  # [B, N]
  if rewards.shape != (b, n):
    raise ValueError(f"reward model returned shape {rewards.shape}, expected {(b, n)}")
  # NaN: the reward model could not read the whole response (inference.py's rule): invalid.
  unscorable = valid & np.isnan(rewards)
  valid = valid & ~unscorable
  bad = valid & ~np.isfinite(rewards)
  if bad.any():
    i, j = np.argwhere(bad)[0]
    raise ValueError(f"reward model gave a non-finite reward {rewards[i, j]} for prompt "
                     f"{prompts[i]!r}, response {texts[i][j]!r}")
  correction = None
  if proposal_correction:
    correction = rejection.ProposalCorrection(jnp.asarray(out.model_logps),
                                              jnp.asarray(out.proposal_logps))
  masked = jnp.asarray(np.where(valid, rewards, 0.0))
  if strategy == "rso":
    sel = rejection.select("rso", k_select, masked, num_samples, beta, mask=jnp.asarray(valid),
                           log_prob_correction=correction, mode=rejection_mode)
  else:
    sel = rejection.select(strategy, k_select, masked, num_samples, mask=jnp.asarray(valid),
                           threshold=rest_threshold)
  sel = jax.device_get(sel)
  no_label: set = set()
  pairs = None
  if not responses_only:
    pref_fn = _label_fn(scorer, label_with, prompts, texts, no_label)
    pairs = jax.device_get(pairs_lib.make_pairs(
        pair_method, jnp.asarray(sel.indices), jnp.asarray(sel.valid),
        rewards=None if pref_fn else jnp.asarray(masked), preference_fn=pref_fn, key=k_pair))

  m = b if n_real is None else n_real
  v, sv = valid[:m], sel.valid[:m]
  acc = _Accum(prompts=m, prompts_truncated=int(out.prompt_truncated[:m].sum()),
               candidates=m * n, valid_candidates=int(v.sum()),
               unfinished=int((~finished[:m]).sum()),
               empty=int((finished[:m] & ~nonempty[:m]).sum()),
               retokenized=0 if out.retokenized is None else int(out.retokenized[:m].sum()),
               not_retokenizable=int(inconsistent[:m].sum()),
               reward_unscorable=int(unscorable[:m].sum()),
               accepted=int(np.sum(sv)), visited=int(np.sum(sel.num_visited[:m])),
               rounds=int(np.sum(sel.rounds[:m])))
  picked = lambda x: float(np.sum(np.take_along_axis(x[:m], sel.indices[:m], 1)[sv]))
  acc.reward_all = float(rewards[:m][v].sum())
  acc.reward_selected = picked(np.where(valid, rewards, 0.0))
  golden = None
  if golden_fn is not None:
    golden = np.asarray(golden_fn(list(prompts), texts), np.float32).reshape(b, n)
    acc.golden_all = float(golden[:m][v].sum())
    acc.golden_selected = picked(golden)
  eos = policy.eos_id

  def record(i: int, side: str, c: int) -> dict:
    """Prompt i's fields of one side (`chosen` / `rejected`) from candidate c."""
    rec = {side: _strip(out.tokens[i, c], eos), f"{side}_pretokenized": texts[i][c],
           f"ref_{side}_logps": float(out.model_logps[i, c]),
           f"{side}_reward": float(rewards[i, c])}
    if golden is not None:
      rec[f"{side}_golden_reward"] = float(golden[i, c])
    return rec

  records = []
  if responses_only:  # one record per selected response: `rejected` empty
    for i in range(m):
      for j in np.flatnonzero(sel.valid[i]):
        records.append({"inputs": _strip(out.prompt_tokens[i], eos),
                        "inputs_pretokenized": prompts[i], "rejected": [],
                        "rejected_pretokenized": "", **record(i, "chosen", int(sel.indices[i, j]))})
        acc.responses += 1
    return records, acc
  for i in range(m):
    for j in range(pairs.chosen.shape[1]):
      if not pairs.valid[i, j]:
        acc.skipped_invalid += 1
        continue
      c, r = int(pairs.chosen[i, j]), int(pairs.rejected[i, j])
      if (i, frozenset((c, r))) in no_label:
        acc.labels_unscorable += 1
        continue
      if texts[i][c] == texts[i][r]:
        acc.skipped_identical += 1
        continue
      rec = {"inputs": _strip(out.prompt_tokens[i], eos), "inputs_pretokenized": prompts[i],
             **record(i, "chosen", c), **record(i, "rejected", r)}
      acc.pairs += 1
      acc.reward_chosen += rec["chosen_reward"]
      acc.reward_rejected += rec["rejected_reward"]
      if golden is not None:
        acc.golden_chosen += rec["chosen_golden_reward"]
        acc.golden_rejected += rec["rejected_golden_reward"]
        if golden[i, c] != golden[i, r]:
          acc.label_golden_decided += 1
          acc.label_golden_agree += float(golden[i, c] > golden[i, r])
      records.append(rec)
  return records, acc


def run(*, policy_checkpoint: str, reward_checkpoint: Optional[str], output_dir: str,
        scorer: Optional[inference.RewardModel] = None,
        prompts_task: str, split: str = "train",
        input_length: Optional[int] = None, max_decode_length: Optional[int] = None,
        keep_context: str = "start",
        data_setting: str = "rso_sample_rank", num_candidates: int = 64, num_samples: int = 8,
        temperature: float = 0.7, top_k: Optional[int] = 40, top_p: Optional[float] = None,
        beta: float = 0.5, rejection_mode: str = "paper", proposal_correction: bool = False,
        pair_method: str = "first_round", label_with: str = "auto",
        rest_threshold: float = rejection.REST_THRESHOLD,
        max_prompts: Optional[int] = None, prompts_per_shard: int = 256,
        batch_prompts: int = 16, seed: int = 0, mesh_shape: Sequence[int] = (-1, 1, 1),
        task_name: Optional[str] = None, stop_after_shards: Optional[int] = None,
        keep_unfinished: bool = False, progress: bool = True) -> Dict[str, Any]:
  """Runs (or resumes) the sampling stage; returns the summary statistics.

  The policy and the reward model are opened by `inference.load` from their manifests (their
  kinds are checked, their vocabularies and lengths used); `input_length` /
  `max_decode_length` default to the policy checkpoint's `inputs` / `targets` lengths. Prompts
  longer than `input_length` have their context cut (`keep_context`) and are counted
  (`prompts_truncated`); candidates the reward model cannot read whole are invalid and counted
  (`reward_unscorable`).

  `rest_threshold`: ReST's filter (data setting `rest`), in [0, 1].
  `label_with`: "preference" labels each pair with the reward model's ρ(x, y1, y2) (the
  paper's choice for the pairwise model), "reward" by comparing pointwise rewards; "auto" =
  preference for a pairwise model, reward otherwise. `stop_after_shards` stops early (tests
  of resumption).
  """
  import seqio  # pylint: disable=g-import-not-at-top
  import rso_jax.tasks  # pylint: disable=g-import-not-at-top,unused-import
  from rso_jax.tasks import generated  # pylint: disable=g-import-not-at-top
  from rso_jax.train import ConfigError  # pylint: disable=g-import-not-at-top
  from rso_jax import trainer  # pylint: disable=g-import-not-at-top
  # --- the arguments, before anything is loaded or written (ConfigError is a ValueError) ---
  if data_setting not in DATA_SETTINGS:
    close = difflib.get_close_matches(str(data_setting), list(DATA_SETTINGS), n=1)
    raise ConfigError(f"DATA_SETTING={data_setting!r}: sampling supports "
                      f"{', '.join(sorted(DATA_SETTINGS))}"
                      + (f" (did you mean {close[0]!r}?)" if close else "")
                      + " ('direct' trains on D_hf and needs no sampling)")
  strategy = DATA_SETTINGS[data_setting]
  if not output_dir:
    raise ConfigError("SAMPLES_DIR is empty: pass --gin.SAMPLES_DIR=\\\"path\\\"")
  if not policy_checkpoint:
    raise ConfigError("SFT_CHECKPOINT (policy_checkpoint) is empty")
  responses_only = data_setting in RESPONSE_SETTINGS
  if data_setting == "raft" and num_samples != 1:
    raise ConfigError(f"DATA_SETTING='raft' keeps the best of N: num_samples={num_samples!r} "
                      "must be 1 (gin/raft.gin sets it)")
  if not (isinstance(rest_threshold, (int, float)) and 0.0 <= rest_threshold <= 1.0):
    raise ConfigError(f"rest_threshold={rest_threshold!r} must be a number in [0, 1]")
  if pair_method not in ("first_round", "tournament"):
    raise ConfigError(f"pair_method={pair_method!r}: use first_round or tournament")
  if label_with not in ("preference", "reward", "auto"):
    raise ConfigError(f"label_with={label_with!r}: use preference, reward or auto")
  if rejection_mode not in rejection.MODES:
    raise ConfigError(f"rejection_mode={rejection_mode!r}: use one of {rejection.MODES}")
  if keep_context not in inference.KEEP_CONTEXT:
    raise ConfigError(f"keep_context={keep_context!r}: use one of {inference.KEEP_CONTEXT}")
  is_int = lambda v: isinstance(v, (int, np.integer)) and not isinstance(v, bool)
  for name, v, optional in (("num_candidates", num_candidates, False),
                            ("num_samples", num_samples, False),
                            ("prompts_per_shard", prompts_per_shard, False),
                            ("batch_prompts", batch_prompts, False),
                            ("NUM_PROMPTS (max_prompts)", max_prompts, True),
                            ("top_k", top_k, True), ("input_length", input_length, True),
                            ("max_decode_length", max_decode_length, True)):
    if not (optional and v is None) and not (is_int(v) and v >= 1):
      raise ConfigError(f"{name}={v!r} must be an int >= 1" + (" or None" if optional else ""))
  if num_samples > num_candidates:
    raise ConfigError(f"num_samples={num_samples} > num_candidates={num_candidates}")
  finite = lambda v: isinstance(v, (int, float, np.number)) and math.isfinite(float(v))
  if not (finite(beta) and beta >= 0):
    raise ConfigError(f"beta={beta!r} must be finite and >= 0 (paper: 0.5; 0 = top-k-over-N)")
  if not (finite(temperature) and temperature >= 0):
    raise ConfigError(f"temperature={temperature!r} must be finite and >= 0")
  if top_p is not None and not (finite(top_p) and 0.0 < top_p <= 1.0):
    raise ConfigError(f"top_p={top_p!r} must be in (0, 1] or None")
  known = set(seqio.TaskRegistry.names()) | set(seqio.MixtureRegistry.names())
  if prompts_task not in known:
    close = difflib.get_close_matches(prompts_task, sorted(known), n=1)
    raise ConfigError(f"PROMPTS_TASK={prompts_task!r} is not a registered seqio task or mixture"
                      + (f" (did you mean {close[0]!r}?)" if close else ""))
  mesh = partitioning.create_mesh(mesh_shape)
  dp = partitioning.data_parallel_size(mesh)
  batch_prompts = max(dp, int(math.ceil(batch_prompts / dp)) * dp)
  policy = inference.load(policy_checkpoint, mesh=mesh, expect=checkpoints.GENERATIVE_KINDS,
                          role="policy", batch_size=batch_prompts, keep_context=keep_context,
                          feature_lengths={"inputs": input_length,
                                           "targets": max_decode_length})
  if scorer is None:
    if not reward_checkpoint:
      raise ValueError("no reward model: set REWARD_CHECKPOINT (or pass a scorer)")
    scorer = inference.load(reward_checkpoint, mesh=mesh, expect=checkpoints.REWARD_KINDS,
                            role="reward model", batch_size=256, keep_context=keep_context,
                            response_length=policy.feature_lengths["targets"])
  if label_with == "auto":
    label_with = "preference" if scorer.kind == "pairwise_rm" else "reward"
  from rso_jax.tasks import synthetic  # pylint: disable=g-import-not-at-top
  golden_fn = synthetic.golden_reward_of(prompts_task)

  texts = read_prompts(prompts_task, split, max_prompts)
  fs.makedirs(output_dir)
  num_shards = int(math.ceil(len(texts) / prompts_per_shard))
  manifest = dict(policy_checkpoint=fs.abspath(policy_checkpoint),
                  reward_checkpoint=reward_checkpoint and fs.abspath(reward_checkpoint),
                  reward_kind=scorer.kind, prompts_task=prompts_task, split=split,
                  num_prompts=len(texts), input_length=policy.feature_lengths["inputs"],
                  max_decode_length=policy.feature_lengths["targets"],
                  keep_context=keep_context, vocabulary=dict(policy.manifest.vocabulary),
                  data_setting=data_setting, strategy=strategy, num_candidates=num_candidates,
                  num_samples=num_samples, temperature=temperature, top_k=top_k, top_p=top_p,
                  beta=beta, rejection_mode=rejection_mode,
                  proposal_correction=proposal_correction, pair_method=pair_method,
                  label_with=label_with, seed=seed, num_shards=num_shards,
                  output="responses" if responses_only else "pairs",
                  rest_threshold=rest_threshold,
                  keep_unfinished=keep_unfinished,
                  prompts_per_shard=prompts_per_shard)
  manifest_path = fs.join(output_dir, "manifest.json")
  if fs.exists(manifest_path):
    old = json.loads(fs.read_text(manifest_path))
    # A setting the old manifest lacks came later, with the old behaviour as its default.
    changed = {k: (old[k], v) for k, v in manifest.items() if k in old and old[k] != v}
    if changed:
      raise ValueError(f"{output_dir} holds shards of a different configuration {changed}: "
                       "use another output directory")
  elif jax.process_index() == 0:
    fs.atomic_write_text(manifest_path, json.dumps(manifest, indent=2))

  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  shard_paths = [fs.join(output_dir, f"pairs-{s:05d}-of-{num_shards:05d}.tfrecord")
                 for s in range(num_shards)]
  stats_paths = [fs.join(output_dir, f"stats-{s:05d}.json") for s in range(num_shards)]
  # Which shards are finished: process 0's view, on every process (they compute together).
  finished = partitioning.broadcast_from_first(np.array(
      [fs.exists(a) and fs.exists(b) for a, b in zip(shard_paths, stats_paths)], bool))
  nproc, me = jax.process_count(), jax.process_index()
  base_key = jax.random.key(seed)
  total = _Accum()
  bar = tqdm(total=len(texts), unit="prompt", disable=not progress or me > 0,
             desc=f"sampling {data_setting}", file=sys.stdout, dynamic_ncols=True)
  computed = 0
  t0 = time.time()
  # Several processes stop together at a shard boundary: JAX's preemption service catches
  # SIGTERM on one host and the synchronized check turns true on all of them at the same
  # shard. (One process stops at once: sample_configured's handler.)
  preempt = trainer.PreemptionFlag()  # not entered: only its synchronized check is used
  for s in range(num_shards):
    lo, hi = s * prompts_per_shard, min((s + 1) * prompts_per_shard, len(texts))
    if finished[s]:
      total.add(_Accum(**json.loads(fs.read_text(stats_paths[s]))))
      bar.update(hi - lo)
      continue
    if stop_after_shards is not None and computed >= stop_after_shards:
      break
    if preempt.reached(computed):
      break
    shard_acc = _Accum()
    records = []
    for start in range(lo, hi, batch_prompts):
      end = min(start + batch_prompts, hi)
      idx = list(range(start, end)) + [end - 1] * (batch_prompts - (end - start))  # pad
      key = jax.random.fold_in(base_key, start)  # depends on the prompt index only
      recs, acc = process_batch(
          policy, scorer, [texts[i] for i in idx], key, num_candidates=num_candidates,
          max_decode_length=None, temperature=temperature, top_k=top_k, top_p=top_p,
          strategy=strategy, num_samples=num_samples, beta=beta,
          rejection_mode=rejection_mode, proposal_correction=proposal_correction,
          pair_method=pair_method, label_with=label_with, golden_fn=golden_fn,
          n_real=end - start, keep_unfinished=keep_unfinished,
          responses_only=responses_only, rest_threshold=rest_threshold)
      records.extend(recs)
      shard_acc.add(acc)
      bar.update(end - start)
    # Every process holds every record; shard s is written by process s mod P.
    if s % nproc == me:
      tmp = fs.tmp_name(shard_paths[s])
      with tf.io.TFRecordWriter(tmp) as w:
        for r in records:
          w.write(generated.to_example(r))
      fs.atomic_write_text(stats_paths[s], json.dumps(dataclasses.asdict(shard_acc)))
      fs.rename(tmp, shard_paths[s], overwrite=True)
    total.add(shard_acc)
    computed += 1
  bar.close()
  partitioning.sync("sample: shards written")
  if preempt.requested:
    raise trainer.Preempted(f"signal {preempt.signal}: every process stopped at shard {s}")
  summary = total.summary()
  if golden_fn is None:  # no golden reward (real data): no golden statistics
    summary = {k: v for k, v in summary.items() if not k.startswith("golden/")}
  pair_keys = ("pairs_per_prompt", "reward/chosen_mean", "reward/rejected_mean",
               "golden/chosen_mean", "golden/rejected_mean", "golden/label_agreement")
  drop = pair_keys if responses_only else ("responses_per_prompt",)
  summary = {k: v for k, v in summary.items() if k not in drop}
  summary["reward_model/contexts_truncated"] = scorer.stats["contexts_truncated"]
  summary["wall_seconds_this_run"] = time.time() - t0
  done = all(fs.exists(p) for p in shard_paths)
  if done:
    if me == 0:
      fs.atomic_write_text(fs.join(output_dir, STATS), json.dumps(summary, indent=2))
      fs.atomic_write_text(fs.join(output_dir, COMPLETED), time.strftime("%Y-%m-%dT%H:%M:%S"))
    partitioning.sync("sample: completed")
    if task_name:
      generated.register_pair_task(task_name, output_dir, policy.vocab)
  return summary


def format_summary(summary: Dict[str, Any]) -> str:
  keys = ["prompts", "pairs", "responses", "rejection/acceptance_rate", "rejection/rounds",
          "reward/all_mean", "reward/selected_mean", "reward/chosen_mean", "reward/rejected_mean",
          "golden/all_mean", "golden/selected_mean", "golden/chosen_mean",
          "golden/rejected_mean", "golden/label_agreement", "unfinished", "retokenized",
          "not_retokenizable",          "skipped_identical",
          "prompts_truncated", "reward_unscorable", "labels_unscorable",
          "reward_model/contexts_truncated"]
  rows = [f"  {k:<28s} {summary[k]:.4f}" if isinstance(summary.get(k), float)
          else f"  {k:<28s} {summary.get(k)}" for k in keys if k in summary]
  return "\n".join(rows)


def main(argv: Optional[Sequence[str]] = None) -> int:
  """`python -m rso_jax.sample`: exit status 0 done, 2 a user error (one line), 143 stopped
  by SIGTERM with its finished shards kept (rerun to continue at the first missing shard)."""
  from rso_jax import train as train_lib  # pylint: disable=g-import-not-at-top
  return train_lib.main(argv, entry=sample_configured)


def _has_shards(output_dir: str) -> bool:
  return bool(fs.glob_in(output_dir, "pairs-*-of-*.tfrecord"))


def _keep_output(output_dir: str) -> bool:
  """A SAMPLES_DIR worth keeping after a failure: finished shards, or another run's lock."""
  return _has_shards(output_dir) or run_lock.is_locked(output_dir)


def _remove_own_temp_files(output_dir: str) -> None:
  """The temp files of the shard this process was writing when it stopped."""
  for f in fs.glob_in(output_dir, f"*.tmp.{os.getpid()}"):
    try:
      fs.remove(f)
    except Exception:  # pylint: disable=broad-except  (best-effort cleanup)
      pass


def _stop_on_signal(signum, frame):  # pylint: disable=unused-argument
  from rso_jax import trainer  # pylint: disable=g-import-not-at-top
  raise trainer.Preempted(f"signal {signum}")


def _raised_here(e: BaseException) -> bool:
  """True when `e` was raised by this module's own checks (not deep in JAX or TF)."""
  tb = e.__traceback__
  while tb is not None and tb.tb_next is not None:
    tb = tb.tb_next
  return tb is not None and os.path.abspath(tb.tb_frame.f_code.co_filename) == \
      os.path.abspath(__file__)


def sample_configured(**kwargs):
  """Entry point for gin (`sample.sample_configured.*` bindings are `run`'s arguments).

  A binding `run` does not take, and every refusal of the stage's own checks (arguments,
  checkpoints, a SAMPLES_DIR holding another configuration, a non-finite reward), is a
  one-line ConfigError. SIGTERM / SIGINT stop it at once with `trainer.Preempted` (several
  processes: SIGTERM to any of them stops all at the next shard boundary): finished
  shards are kept (a rerun starts at the first missing one), the shard being written is
  dropped. A SAMPLES_DIR this call created is removed again when it fails before finishing a
  shard; one that existed before is never removed.
  """
  from rso_jax import cli  # pylint: disable=g-import-not-at-top
  from rso_jax import trainer  # pylint: disable=g-import-not-at-top
  output_dir = kwargs.get("output_dir")
  if not output_dir:  # before the directory guard: there is no directory
    return cli.checked_call(run, kwargs, "sample.sample_configured")
  old = {}
  partitioning.initialize_distributed()
  # Several processes: JAX's preemption service owns SIGTERM (run() stops all of them at the
  # same shard); a Python handler would replace it.
  for sig in () if partitioning.is_multiprocess() else (signal.SIGTERM, signal.SIGINT):
    try:
      old[sig] = signal.signal(sig, _stop_on_signal)
    except ValueError:  # not the main thread
      pass
  try:
    with cli.removed_on_failure(output_dir, keep=_keep_output), run_lock.hold(
        output_dir, "SAMPLES_DIR", all_processes=True):
      try:
        summary = cli.checked_call(run, kwargs, "sample.sample_configured")
      except trainer.Preempted:
        _remove_own_temp_files(fs.abspath(output_dir))
        n = len(fs.glob_in(fs.abspath(output_dir), "pairs-*-of-*.tfrecord"))
        raise trainer.Preempted(f"preempted: {n} finished shard(s) kept in "
                                f"{fs.abspath(output_dir)}; rerun the same command to "
                                "continue at the first missing shard") from None
      except ValueError as e:
        _remove_own_temp_files(fs.abspath(output_dir))
        if isinstance(e, cli.ConfigError) or _raised_here(e):
          raise cli.ConfigError(" ".join(str(e).split())) from None
        raise
  finally:
    for sig, handler in old.items():
      signal.signal(sig, handler)
  print("sampling summary:\n" + format_summary(summary))
  return summary


if __name__ == "__main__":
  from rso_jax import sample as _sample  # pylint: disable=g-import-not-at-top
  sys.exit(_sample.main())
