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
`sft_sample_rank` (uniform random k of N), `direct` (no sampling: train on D_hf itself).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rso_jax import checkpoints
from rso_jax import decoding
from rso_jax import network
from rso_jax import pairs as pairs_lib
from rso_jax import partitioning
from rso_jax import rejection

DATA_SETTINGS = {"rso_sample_rank": "rso", "sft_sample_rank": "random",
                 "best_of_n": "best_of_n", "top_k_over_n": "top_k_over_n"}
COMPLETED = "COMPLETED"
STATS = "stats.json"


def _atomic_write_text(path: str, text: str) -> None:
  tmp = f"{path}.tmp.{os.getpid()}"
  with open(tmp, "w") as f:
    f.write(text)
  os.replace(tmp, path)


def is_complete(output_dir: str) -> bool:
  return os.path.exists(os.path.join(output_dir, COMPLETED))


def read_prompts(task_name: str, split: str, input_length: int,
                 max_prompts: Optional[int] = None):
  """(texts, tokens [P, input_length]) of a seqio task's `inputs`, in order (no shuffling)."""
  import seqio  # pylint: disable=g-import-not-at-top
  import rso_jax.tasks  # pylint: disable=g-import-not-at-top,unused-import
  task = seqio.get_mixture_or_task(task_name)
  ds = task.get_dataset(sequence_length=None, split=split, shuffle=False, num_epochs=1)
  texts, toks, too_long = [], [], 0
  for ex in ds.as_numpy_iterator():
    if max_prompts is not None and len(texts) >= max_prompts:
      break
    t = ex["inputs"]
    if len(t) > input_length:
      too_long += 1
      continue
    texts.append(ex["inputs_pretokenized"].decode("utf-8"))
    toks.append(np.pad(t, (0, input_length - len(t))))
  if too_long:
    logging.warning("%d prompts of %s/%s are longer than %d tokens: skipped (counted in "
                    "stats.json)", too_long, task_name, split, input_length)
  if not texts:
    raise ValueError(f"task {task_name!r} split {split!r} has no prompt of at most "
                     f"{input_length} tokens")
  return texts, np.stack(toks).astype(np.int32), too_long


def _decode_texts(vocab, tokens: np.ndarray) -> List[str]:
  out = []
  for row in tokens:
    ids = [int(t) for t in row]
    if decoding.EOS_ID in ids:
      ids = ids[:ids.index(decoding.EOS_ID)]
    out.append(vocab.decode([t for t in ids if t > 0]))
  return out


def _strip(tokens: np.ndarray) -> List[int]:
  """Token row up to and including EOS (padding removed)."""
  ids = [int(t) for t in tokens]
  if decoding.EOS_ID in ids:
    return ids[:ids.index(decoding.EOS_ID) + 1]
  return [t for t in ids if t > 0]


@dataclasses.dataclass
class _Accum:
  """Running sums for stats.json."""
  prompts: int = 0
  candidates: int = 0
  valid_candidates: int = 0
  unfinished: int = 0
  empty: int = 0
  accepted: int = 0
  visited: int = 0
  rounds: int = 0
  pairs: int = 0
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
    })
    return d


class Sampler:
  """Jitted candidate generation for one policy on one mesh."""

  def __init__(self, config: network.T5Config, params: Any, mesh, *, num_candidates: int,
               max_decode_length: int, temperature: float, top_k: Optional[int],
               top_p: Optional[float], input_length: int):
    self.module = network.Transformer(config)
    self.mesh = mesh
    self.kw = dict(num_decodes=num_candidates, max_decode_length=max_decode_length,
                   temperature=temperature, top_k=top_k, top_p=top_p)
    self.params = partitioning.place_params(self.module, params, mesh, input_length,
                                            max_decode_length)

  def __call__(self, tokens: np.ndarray, key) -> decoding.SampleOutput:
    with jax.set_mesh(self.mesh):
      enc = partitioning.shard_batch({"t": tokens}, self.mesh)["t"]
      return jax.device_get(decoding.sample(self.module, self.params, enc, key, **self.kw))


def _label_fn(scorer, label_with: str, prompts, texts, rewards):
  """preference_fn over candidate indices for `pairs.make_pairs` (host-side), or None."""
  if label_with == "reward":
    return None

  def pref(idx_a, idx_b):
    a, b = np.asarray(idx_a), np.asarray(idx_b)
    bsz, p = a.shape
    flat_p = [prompts[i] for i in range(bsz) for _ in range(p)]
    ya = [texts[i][a[i, j]] for i in range(bsz) for j in range(p)]
    yb = [texts[i][b[i, j]] for i in range(bsz) for j in range(p)]
    return jnp.asarray(np.asarray(scorer.prefer(flat_p, ya, yb), np.float32).reshape(bsz, p))
  return pref


def process_batch(sampler: Sampler, scorer, vocab, prompts: Sequence[str],
                  prompt_tokens: np.ndarray, key, *, strategy: str, num_samples: int,
                  beta: float, rejection_mode: str, proposal_correction: bool,
                  pair_method: str, label_with: str,
                  golden_fn: Optional[Callable] = None, n_real: Optional[int] = None,
                  keep_unfinished: bool = False):
  """One batch of prompts -> (records, _Accum) over its first `n_real` rows (rest: padding)."""
  k_sample, k_select = jax.random.split(key)
  out = sampler(prompt_tokens, k_sample)
  b, n, _ = out.tokens.shape
  texts = [_decode_texts(vocab, out.tokens[i]) for i in range(b)]
  lengths = np.asarray(out.lengths)
  finished = np.asarray(out.finished)
  nonempty = lengths > 1  # more than the EOS token
  # A candidate without EOS within max_decode_length is truncated: invalid unless configured
  # (counted as `unfinished` either way).
  valid = (finished | keep_unfinished) & nonempty
  rewards = np.asarray(scorer.score(list(prompts), texts), np.float32)  # [B, N]
  if rewards.shape != (b, n):
    raise ValueError(f"reward model returned shape {rewards.shape}, expected {(b, n)}")
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
    sel = rejection.select(strategy, k_select, masked, num_samples, mask=jnp.asarray(valid))
  sel = jax.device_get(sel)
  pref_fn = _label_fn(scorer, label_with, prompts, texts, rewards)
  pairs = jax.device_get(pairs_lib.make_pairs(
      pair_method, jnp.asarray(sel.indices), jnp.asarray(sel.valid),
      rewards=None if pref_fn else jnp.asarray(rewards), preference_fn=pref_fn))

  m = b if n_real is None else n_real
  v, sv = valid[:m], sel.valid[:m]
  acc = _Accum(prompts=m, candidates=m * n, valid_candidates=int(v.sum()),
               unfinished=int((~finished[:m]).sum()),
               empty=int((finished[:m] & ~nonempty[:m]).sum()),
               accepted=int(np.sum(sv)), visited=int(np.sum(sel.num_visited[:m])),
               rounds=int(np.sum(sel.rounds[:m])))
  picked = lambda x: float(np.sum(np.take_along_axis(x[:m], sel.indices[:m], 1)[sv]))
  acc.reward_all = float(rewards[:m][v].sum())
  acc.reward_selected = picked(rewards)
  golden = None
  if golden_fn is not None:
    golden = np.asarray(golden_fn(list(prompts), texts), np.float32).reshape(b, n)
    acc.golden_all = float(golden[:m][v].sum())
    acc.golden_selected = picked(golden)
  records = []
  for i in range(m):
    for j in range(pairs.chosen.shape[1]):
      if not pairs.valid[i, j]:
        acc.skipped_invalid += 1
        continue
      c, r = int(pairs.chosen[i, j]), int(pairs.rejected[i, j])
      if texts[i][c] == texts[i][r]:
        acc.skipped_identical += 1
        continue
      rec = {
          "inputs": _strip(prompt_tokens[i]), "chosen": _strip(out.tokens[i, c]),
          "rejected": _strip(out.tokens[i, r]), "inputs_pretokenized": prompts[i],
          "chosen_pretokenized": texts[i][c], "rejected_pretokenized": texts[i][r],
          "ref_chosen_logps": float(out.model_logps[i, c]),
          "ref_rejected_logps": float(out.model_logps[i, r]),
          "chosen_reward": float(rewards[i, c]), "rejected_reward": float(rewards[i, r]),
      }
      acc.pairs += 1
      acc.reward_chosen += rec["chosen_reward"]
      acc.reward_rejected += rec["rejected_reward"]
      if golden is not None:
        rec["chosen_golden_reward"] = float(golden[i, c])
        rec["rejected_golden_reward"] = float(golden[i, r])
        acc.golden_chosen += rec["chosen_golden_reward"]
        acc.golden_rejected += rec["rejected_golden_reward"]
        if golden[i, c] != golden[i, r]:
          acc.label_golden_decided += 1
          acc.label_golden_agree += float(golden[i, c] > golden[i, r])
      records.append(rec)
  return records, acc


def run(*, policy_checkpoint: str, reward_checkpoint: Optional[str], output_dir: str,
        reward_kind: str = "pairwise", scorer: Any = None,
        prompts_task: str = "synthetic_prompts", split: str = "train",
        input_length: int = 32, max_decode_length: int = 32,
        data_setting: str = "rso_sample_rank", num_candidates: int = 64, num_samples: int = 8,
        temperature: float = 0.7, top_k: Optional[int] = 40, top_p: Optional[float] = None,
        beta: float = 0.5, rejection_mode: str = "paper", proposal_correction: bool = False,
        pair_method: str = "first_round", label_with: str = "auto",
        max_prompts: Optional[int] = None, prompts_per_shard: int = 256,
        batch_prompts: int = 16, seed: int = 0, mesh_shape: Sequence[int] = (-1, 1, 1),
        task_name: Optional[str] = None, stop_after_shards: Optional[int] = None,
        keep_unfinished: bool = False, progress: bool = True) -> Dict[str, Any]:
  """Runs (or resumes) the sampling stage; returns the summary statistics.

  `label_with`: "preference" labels each pair with the reward model's ρ(x, y1, y2) (the
  paper's choice for the pairwise model), "reward" by comparing pointwise rewards; "auto" =
  preference for a pairwise model, reward otherwise. `stop_after_shards` stops early (tests
  of resumption).
  """
  import rso_jax.tasks  # pylint: disable=g-import-not-at-top,unused-import
  from rso_jax.tasks import generated  # pylint: disable=g-import-not-at-top
  from rso_jax.tasks import vocab as vocab_lib  # pylint: disable=g-import-not-at-top
  if data_setting not in DATA_SETTINGS:
    raise ValueError(f"data_setting={data_setting!r}: sampling supports "
                     f"{sorted(DATA_SETTINGS)} ('direct' trains on D_hf and needs no sampling)")
  strategy = DATA_SETTINGS[data_setting]
  if pair_method not in ("first_round", "tournament"):
    raise ValueError(f"pair_method={pair_method!r}: use first_round or tournament")
  if num_samples > num_candidates:
    raise ValueError(f"num_samples={num_samples} > num_candidates={num_candidates}")
  if label_with == "auto":
    label_with = "preference" if reward_kind == "pairwise" else "reward"
  if label_with not in ("preference", "reward"):
    raise ValueError(f"label_with={label_with!r}: use preference, reward or auto")
  os.makedirs(output_dir, exist_ok=True)

  config, params = checkpoints.load_model(policy_checkpoint)
  if scorer is None:
    if not reward_checkpoint:
      raise ValueError("no reward model: set REWARD_CHECKPOINT (or pass a scorer)")
    from rso_jax import reward_models  # pylint: disable=g-import-not-at-top
    scorer = reward_models.load_scorer(reward_checkpoint, kind=reward_kind)
  vocab = vocab_lib.get_vocabulary()
  golden_fn = None
  if prompts_task.startswith("synthetic"):
    from rso_jax.tasks import synthetic  # pylint: disable=g-import-not-at-top
    golden_fn = lambda ps, ys: synthetic.golden_rewards(ps, ys)

  texts, tokens, too_long = read_prompts(prompts_task, split, input_length, max_prompts)
  mesh = partitioning.create_mesh(mesh_shape)
  dp = partitioning.data_parallel_size(mesh)
  batch_prompts = max(dp, int(math.ceil(batch_prompts / dp)) * dp)
  sampler = Sampler(config, params, mesh, num_candidates=num_candidates,
                    max_decode_length=max_decode_length, temperature=temperature, top_k=top_k,
                    top_p=top_p, input_length=input_length)
  num_shards = int(math.ceil(len(texts) / prompts_per_shard))
  manifest = dict(policy_checkpoint=os.path.abspath(policy_checkpoint),
                  reward_checkpoint=reward_checkpoint and os.path.abspath(reward_checkpoint),
                  reward_kind=reward_kind, prompts_task=prompts_task, split=split,
                  num_prompts=len(texts), prompts_skipped_too_long=too_long,
                  data_setting=data_setting, strategy=strategy, num_candidates=num_candidates,
                  num_samples=num_samples, temperature=temperature, top_k=top_k, top_p=top_p,
                  beta=beta, rejection_mode=rejection_mode,
                  proposal_correction=proposal_correction, pair_method=pair_method,
                  label_with=label_with, seed=seed, num_shards=num_shards,
                  keep_unfinished=keep_unfinished,
                  prompts_per_shard=prompts_per_shard)
  manifest_path = os.path.join(output_dir, "manifest.json")
  if os.path.exists(manifest_path):
    with open(manifest_path) as f:
      old = json.load(f)
    changed = {k: (old.get(k), v) for k, v in manifest.items() if old.get(k) != v}
    if changed:
      raise ValueError(f"{output_dir} holds shards of a different configuration {changed}: "
                       "use another output directory")
  else:
    _atomic_write_text(manifest_path, json.dumps(manifest, indent=2))

  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  base_key = jax.random.key(seed)
  total = _Accum()
  bar = tqdm(total=len(texts), unit="prompt", disable=not progress, desc=f"sampling {data_setting}",
             file=sys.stdout, dynamic_ncols=True)
  written = 0
  t0 = time.time()
  for s in range(num_shards):
    shard_path = os.path.join(output_dir, f"pairs-{s:05d}-of-{num_shards:05d}.tfrecord")
    stats_path = os.path.join(output_dir, f"stats-{s:05d}.json")
    lo, hi = s * prompts_per_shard, min((s + 1) * prompts_per_shard, len(texts))
    if os.path.exists(shard_path) and os.path.exists(stats_path):
      with open(stats_path) as f:
        total.add(_Accum(**json.load(f)))
      bar.update(hi - lo)
      continue
    if stop_after_shards is not None and written >= stop_after_shards:
      break
    shard_acc = _Accum()
    records = []
    for start in range(lo, hi, batch_prompts):
      end = min(start + batch_prompts, hi)
      idx = list(range(start, end)) + [end - 1] * (batch_prompts - (end - start))  # pad
      key = jax.random.fold_in(base_key, start)  # depends on the prompt index only
      recs, acc = process_batch(
          sampler, scorer, vocab, [texts[i] for i in idx], tokens[idx], key,
          strategy=strategy, num_samples=num_samples, beta=beta,
          rejection_mode=rejection_mode, proposal_correction=proposal_correction,
          pair_method=pair_method, label_with=label_with, golden_fn=golden_fn,
          n_real=end - start, keep_unfinished=keep_unfinished)
      records.extend(recs)
      shard_acc.add(acc)
      bar.update(end - start)
    tmp = f"{shard_path}.tmp.{os.getpid()}"
    with tf.io.TFRecordWriter(tmp) as w:
      for r in records:
        w.write(generated.to_example(r))
    _atomic_write_text(stats_path, json.dumps(dataclasses.asdict(shard_acc)))
    os.replace(tmp, shard_path)
    total.add(shard_acc)
    written += 1
  bar.close()
  summary = total.summary()
  summary["wall_seconds_this_run"] = time.time() - t0
  done = all(os.path.exists(os.path.join(output_dir, f"pairs-{s:05d}-of-{num_shards:05d}.tfrecord"))
             for s in range(num_shards))
  if done:
    _atomic_write_text(os.path.join(output_dir, STATS), json.dumps(summary, indent=2))
    _atomic_write_text(os.path.join(output_dir, COMPLETED), time.strftime("%Y-%m-%dT%H:%M:%S"))
    if task_name:
      generated.register_pair_task(task_name, output_dir)
  return summary


def format_summary(summary: Dict[str, Any]) -> str:
  keys = ["prompts", "pairs", "rejection/acceptance_rate", "rejection/rounds",
          "reward/all_mean", "reward/selected_mean", "reward/chosen_mean", "reward/rejected_mean",
          "golden/all_mean", "golden/selected_mean", "golden/chosen_mean",
          "golden/rejected_mean", "golden/label_agreement", "unfinished", "skipped_identical"]
  rows = [f"  {k:<28s} {summary[k]:.4f}" if isinstance(summary.get(k), float)
          else f"  {k:<28s} {summary.get(k)}" for k in keys if k in summary]
  return "\n".join(rows)


def main(argv: Optional[Sequence[str]] = None) -> int:
  from rso_jax import train as train_lib  # pylint: disable=g-import-not-at-top
  return train_lib.main(argv, entry=sample_configured)


def sample_configured(**kwargs):
  """Entry point for gin (`sample.sample_configured.*` bindings are `run`'s arguments)."""
  summary = run(**kwargs)
  print("sampling summary:\n" + format_summary(summary))
  return summary


if __name__ == "__main__":
  from rso_jax import sample as _sample  # pylint: disable=g-import-not-at-top
  sys.exit(_sample.main())
