r"""The RSO sampling stage: sample → score → select → pair → label → write a pair task.

  python -m rso_jax.sample --gin_file=gin/stages/sample.gin \
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
response, `rejected` empty), for SFT of π_sft on them (`gin/variants/raft.gin`,
`gin/variants/rest.gin`):
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
import sys
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import jax
import numpy as np
import tensorflow as tf
import tqdm

from rso_jax import checkpoints
from rso_jax import cli
from rso_jax import datasets
from rso_jax import errors
from rso_jax import fs
from rso_jax import inference
from rso_jax import partitioning
from rso_jax import recipe
from rso_jax import rejection
from rso_jax import run_lock
from rso_jax import runs
from rso_jax import sample_batch
from rso_jax import tasks  # pylint: disable=unused-import  (registers the embedded tasks)
from rso_jax.errors import ConfigError
from rso_jax.tasks import generated
from rso_jax.tasks import golden

DATA_SETTINGS = {"rso_sample_rank": "rso", "sft_sample_rank": "random",
                 "best_of_n": "best_of_n", "top_k_over_n": "top_k_over_n",
                 "raft": "best_of_n", "rest": "rest"}
RESPONSE_SETTINGS = ("raft", "rest")  # write the selected responses (SFT data), not pairs


def _check_args(*, output_dir, policy_checkpoint, prompts_task, data_setting, num_candidates,
                num_samples, temperature, top_k, top_p, beta, rejection_mode, pair_method,
                label_with, keep_context, rest_threshold, max_prompts, prompts_per_shard,
                batch_prompts, input_length, max_decode_length) -> None:
  """Refuses the stage's arguments before anything is loaded or written (ConfigError)."""
  if data_setting not in DATA_SETTINGS:
    close = difflib.get_close_matches(str(data_setting), list(DATA_SETTINGS), n=1)
    raise ConfigError(f"DATA_SETTING={data_setting!r}: sampling supports "
                      f"{', '.join(sorted(DATA_SETTINGS))}"
                      + (f" (did you mean {close[0]!r}?)" if close else "")
                      + " ('direct' trains on D_hf and needs no sampling)")
  if not output_dir:
    raise ConfigError("SAMPLES_DIR is empty: pass --gin.SAMPLES_DIR=\\\"path\\\"")
  if not policy_checkpoint:
    raise ConfigError("SFT_CHECKPOINT (policy_checkpoint) is empty")
  if data_setting == "raft" and num_samples != 1:
    raise ConfigError(f"DATA_SETTING='raft' keeps the best of N: num_samples={num_samples!r} "
                      "must be 1 (gin/variants/raft.gin sets it)")
  if not (isinstance(rest_threshold, (int, float)) and 0.0 <= rest_threshold <= 1.0):
    raise ConfigError(f"rest_threshold={rest_threshold!r} must be a number in [0, 1]")
  if pair_method not in ("first_round", "tournament"):
    raise ConfigError(f"pair_method={pair_method!r}: use first_round or tournament")
  if label_with not in ("preference", "reward", "draw", "auto"):
    raise ConfigError(f"label_with={label_with!r}: use preference, reward, draw or auto")
  if rejection_mode not in rejection.MODES:
    raise ConfigError(f"rejection_mode={rejection_mode!r}: use one of {rejection.MODES}")
  if keep_context not in inference.KEEP_CONTEXT:
    raise ConfigError(f"keep_context={keep_context!r}: use one of {inference.KEEP_CONTEXT}")
  errors.check_int("num_candidates", num_candidates)
  errors.check_int("num_samples", num_samples)
  errors.check_int("prompts_per_shard", prompts_per_shard)
  errors.check_int("batch_prompts", batch_prompts)
  errors.check_int("NUM_PROMPTS (max_prompts)", max_prompts, optional=True)
  errors.check_int("top_k", top_k, optional=True)
  errors.check_int("input_length", input_length, optional=True)
  errors.check_int("max_decode_length", max_decode_length, optional=True)
  recipe.SamplingRecipe(num_candidates, num_samples, temperature, top_k, top_p, beta)
  datasets.check_task(prompts_task, "PROMPTS_TASK")


def _open_models(policy_checkpoint: str, reward_checkpoint: Optional[str],
                 scorer: Optional[inference.RewardModel], *, mesh, batch_prompts: int,
                 keep_context: str, input_length: Optional[int],
                 max_decode_length: Optional[int], rules=None):
  """(policy, reward model) on `mesh`, opened from their manifests (kinds checked); the reward
  model reads every response the policy can write whole."""
  policy = inference.load(policy_checkpoint, mesh=mesh, expect=checkpoints.GENERATIVE_KINDS,
                          role="policy", batch_size=batch_prompts, keep_context=keep_context,
                          feature_lengths={"inputs": input_length,
                                           "targets": max_decode_length}, rules=rules)
  if scorer is None:
    if not reward_checkpoint:
      raise ValueError("no reward model: set REWARD_CHECKPOINT (or pass a scorer)")
    scorer = inference.load(reward_checkpoint, mesh=mesh, expect=checkpoints.REWARD_KINDS,
                            role="reward model", batch_size=256, keep_context=keep_context,
                            response_length=policy.feature_lengths["targets"], rules=rules)
  return policy, scorer


def _write_manifest(output_dir: str, manifest: Dict[str, Any]) -> None:
  """`output_dir/manifest.json`; a directory holding another configuration is refused."""
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


def _shard_paths(output_dir: str, num_shards: int) -> Tuple[List[str], List[str]]:
  return ([fs.join(output_dir, f"pairs-{s:05d}-of-{num_shards:05d}.tfrecord")
           for s in range(num_shards)],
          [fs.join(output_dir, f"stats-{s:05d}.json") for s in range(num_shards)])


def _sample_shard(texts: Sequence[str], lo: int, hi: int, base_key, batch_prompts: int,
                  bar, batch_kwargs: Mapping[str, Any]) -> Tuple[List[dict], sample_batch.Accum]:
  """The records and statistics of prompts [lo, hi), in batches of `batch_prompts`."""
  shard_acc = sample_batch.Accum()
  records = []
  for start in range(lo, hi, batch_prompts):
    end = min(start + batch_prompts, hi)
    idx = list(range(start, end)) + [end - 1] * (batch_prompts - (end - start))  # pad
    key = jax.random.fold_in(base_key, start)  # depends on the prompt index only
    recs, acc = sample_batch.process_batch(
        prompts=[texts[i] for i in idx], key=key, n_real=end - start, **batch_kwargs)
    records.extend(recs)
    shard_acc.add(acc)
    bar.update(end - start)
  return records, shard_acc


def _write_shard(path: str, stats_path: str, records: Sequence[dict],
                 acc: sample_batch.Accum) -> None:
  """A shard's records and statistics; the shard's rename is the last write (atomic)."""
  tmp = fs.tmp_name(path)
  with tf.io.TFRecordWriter(tmp) as w:
    for r in records:
      w.write(generated.to_example(r))
  fs.atomic_write_text(stats_path, json.dumps(dataclasses.asdict(acc)))
  fs.rename(tmp, path, overwrite=True)


def _sample_shards(output_dir: str, texts: Sequence[str], *, num_shards: int,
                   prompts_per_shard: int, batch_prompts: int, seed: int,
                   stop_after_shards: Optional[int], desc: str, progress: bool,
                   batch_kwargs: Mapping[str, Any]) -> sample_batch.Accum:
  """Samples every shard not yet finished; returns the statistics of all finished shards.

  Every process holds every record; shard s is written by process s mod P. Several processes
  stop together at a shard boundary: JAX's preemption service catches SIGTERM on one host and
  the synchronized check turns true on all of them at the same shard (one process stops at
  once: sample_configured's handler).
  """
  shard_paths, stats_paths = _shard_paths(output_dir, num_shards)
  # Which shards are finished: process 0's view, on every process (they compute together).
  finished = partitioning.broadcast_from_first(np.array(
      [fs.exists(a) and fs.exists(b) for a, b in zip(shard_paths, stats_paths)], bool))
  nproc, me = jax.process_count(), jax.process_index()
  base_key = jax.random.key(seed)
  total = sample_batch.Accum()
  bar = tqdm.tqdm(total=len(texts), unit="prompt", disable=not progress or me > 0, desc=desc,
                  file=sys.stdout, dynamic_ncols=True)
  computed = 0
  preempt = runs.PreemptionFlag()  # not entered: only its synchronized check is used
  for s in range(num_shards):
    lo, hi = s * prompts_per_shard, min((s + 1) * prompts_per_shard, len(texts))
    if finished[s]:
      total.add(sample_batch.Accum(**json.loads(fs.read_text(stats_paths[s]))))
      bar.update(hi - lo)
      continue
    if stop_after_shards is not None and computed >= stop_after_shards:
      break
    if preempt.reached(computed):
      break
    records, shard_acc = _sample_shard(texts, lo, hi, base_key, batch_prompts, bar,
                                       batch_kwargs)
    if s % nproc == me:
      _write_shard(shard_paths[s], stats_paths[s], records, shard_acc)
    total.add(shard_acc)
    computed += 1
  bar.close()
  partitioning.sync("sample: shards written")
  if preempt.requested:
    raise errors.Preempted(f"signal {preempt.signal}: every process stopped at shard {s}")
  return total


def _summary(total: sample_batch.Accum, *, golden: bool, responses_only: bool,
             contexts_truncated: int, seconds: float) -> Dict[str, Any]:
  summary = total.summary()
  if not golden:  # no golden reward (real data): no golden statistics
    summary = {k: v for k, v in summary.items() if not k.startswith("golden/")}
  pair_keys = ("pairs_per_prompt", "reward/chosen_mean", "reward/rejected_mean",
               "golden/chosen_mean", "golden/rejected_mean", "golden/label_agreement")
  drop = pair_keys if responses_only else ("responses_per_prompt",)
  summary = {k: v for k, v in summary.items() if k not in drop}
  summary["reward_model/contexts_truncated"] = contexts_truncated
  summary["wall_seconds_this_run"] = seconds
  return summary


def run(*, policy_checkpoint: str, reward_checkpoint: Optional[str], output_dir: str,
        scorer: Optional[inference.RewardModel] = None,
        prompts_task: str, split: str = "train",
        input_length: Optional[int] = None, max_decode_length: Optional[int] = None,
        keep_context: str = "start", data_setting: str = "rso_sample_rank",
        num_candidates: int = recipe.PAPER.num_candidates,
        num_samples: int = recipe.PAPER.num_samples,
        temperature: float = recipe.PAPER.temperature, top_k: Optional[int] = recipe.PAPER.top_k,
        top_p: Optional[float] = recipe.PAPER.top_p, beta: float = recipe.PAPER.beta,
        rejection_mode: str = "paper", proposal_correction: bool = False,
        pair_method: str = "first_round", label_with: str = "auto",
        rest_threshold: float = rejection.REST_THRESHOLD,
        max_prompts: Optional[int] = None, prompts_per_shard: int = 256,
        batch_prompts: int = 16, seed: int = 0, mesh_shape: Sequence[int] = (-1, 1, 1),
        logical_rules: Optional[Sequence[Tuple[str, Any]]] = None,
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
  paper's choice for the pairwise model), "reward" by comparing pointwise rewards, "draw" by a
  draw from ρ (a simulated annotator; with the oracle reward, the Bradley–Terry rater on r*);
  "auto" = preference for a pairwise model, reward otherwise. `stop_after_shards` stops early
  (tests of resumption).
  """
  _check_args(output_dir=output_dir, policy_checkpoint=policy_checkpoint,
              prompts_task=prompts_task, data_setting=data_setting,
              num_candidates=num_candidates, num_samples=num_samples, temperature=temperature,
              top_k=top_k, top_p=top_p, beta=beta, rejection_mode=rejection_mode,
              pair_method=pair_method, label_with=label_with, keep_context=keep_context,
              rest_threshold=rest_threshold, max_prompts=max_prompts,
              prompts_per_shard=prompts_per_shard, batch_prompts=batch_prompts,
              input_length=input_length, max_decode_length=max_decode_length)
  strategy = DATA_SETTINGS[data_setting]
  responses_only = data_setting in RESPONSE_SETTINGS
  mesh = partitioning.create_mesh(mesh_shape)
  dp = partitioning.data_parallel_size(mesh)
  batch_prompts = max(dp, int(math.ceil(batch_prompts / dp)) * dp)
  policy, scorer = _open_models(policy_checkpoint, reward_checkpoint, scorer, mesh=mesh,
                                batch_prompts=batch_prompts, keep_context=keep_context,
                                input_length=input_length, max_decode_length=max_decode_length,
                                rules=logical_rules)
  if label_with == "auto":
    label_with = "preference" if scorer.kind == "pairwise_rm" else "reward"
  golden_fn = golden.golden_reward_of(prompts_task)

  texts = datasets.read_prompts(prompts_task, split, max_prompts)
  fs.makedirs(output_dir)
  num_shards = int(math.ceil(len(texts) / prompts_per_shard))
  draw = dict(strategy=strategy, num_candidates=num_candidates, num_samples=num_samples,
              temperature=temperature, top_k=top_k, top_p=top_p, beta=beta,
              rejection_mode=rejection_mode, proposal_correction=proposal_correction,
              pair_method=pair_method, label_with=label_with, rest_threshold=rest_threshold,
              keep_unfinished=keep_unfinished)
  _write_manifest(output_dir, dict(
      policy_checkpoint=fs.abspath(policy_checkpoint),
      reward_checkpoint=reward_checkpoint and fs.abspath(reward_checkpoint),
      reward_kind=scorer.kind, prompts_task=prompts_task, split=split,
      num_prompts=len(texts), input_length=policy.feature_lengths["inputs"],
      max_decode_length=policy.feature_lengths["targets"], keep_context=keep_context,
      vocabulary=dict(policy.manifest.vocabulary), data_setting=data_setting, seed=seed,
      num_shards=num_shards, output="responses" if responses_only else "pairs",
      prompts_per_shard=prompts_per_shard, **draw))
  t0 = time.time()
  total = _sample_shards(
      output_dir, texts, num_shards=num_shards, prompts_per_shard=prompts_per_shard,
      batch_prompts=batch_prompts, seed=seed, stop_after_shards=stop_after_shards,
      desc=f"sampling {data_setting}", progress=progress, batch_kwargs=dict(
          policy=policy, scorer=scorer, max_decode_length=None, golden_fn=golden_fn,
          responses_only=responses_only, **draw))
  summary = _summary(total, golden=golden_fn is not None, responses_only=responses_only,
                     contexts_truncated=scorer.stats["contexts_truncated"],
                     seconds=time.time() - t0)
  _finish(output_dir, num_shards, summary, task_name, policy.vocab)
  return summary


def _finish(output_dir: str, num_shards: int, summary: Mapping[str, Any],
            task_name: Optional[str], vocab) -> None:
  """When every shard is written: stats.json, then COMPLETED; registers the pair task."""
  if all(fs.exists(p) for p in _shard_paths(output_dir, num_shards)[0]):
    if jax.process_index() == 0:
      fs.atomic_write_text(fs.join(output_dir, runs.STATS), json.dumps(summary, indent=2))
      runs.mark_complete(output_dir, time.strftime("%Y-%m-%dT%H:%M:%S"))
    partitioning.sync("sample: completed")
    if task_name:
      generated.register_pair_task(task_name, output_dir, vocab)

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
  return cli.main(argv, sample_configured)


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
  raise errors.Preempted(f"signal {signum}")


_OWN_FILES = {os.path.abspath(__file__), os.path.abspath(sample_batch.__file__)}


def _raised_here(e: BaseException) -> bool:
  """True when `e` was raised by the stage's own checks (not deep in JAX or TF)."""
  tb = e.__traceback__
  while tb is not None and tb.tb_next is not None:
    tb = tb.tb_next
  return tb is not None and os.path.abspath(tb.tb_frame.f_code.co_filename) in _OWN_FILES


def sample_configured(**kwargs):
  """Entry point for gin (`sample.sample_configured.*` bindings are `run`'s arguments).

  A binding `run` does not take, and every refusal of the stage's own checks (arguments,
  checkpoints, a SAMPLES_DIR holding another configuration, a non-finite reward), is a
  one-line ConfigError. SIGTERM / SIGINT stop it at once with `errors.Preempted` (several
  processes: SIGTERM to any of them stops all at the next shard boundary): finished
  shards are kept (a rerun starts at the first missing one), the shard being written is
  dropped. A SAMPLES_DIR this call created is removed again when it fails before finishing a
  shard; one that existed before is never removed.
  """
  output_dir = kwargs.get("output_dir")
  if not output_dir:  # before the directory guard: there is no directory
    return cli.checked_call(run, kwargs, "sample.sample_configured")
  partitioning.initialize_distributed()
  # Several processes: JAX's preemption service owns SIGTERM (run() stops all of them at the
  # same shard); `on_stop_signals` installs no handler there.
  with runs.on_stop_signals(_stop_on_signal), runs.removed_on_failure(
      output_dir, keep=_keep_output), run_lock.hold(output_dir, "SAMPLES_DIR",
                                                    all_processes=True):
    try:
      summary = cli.checked_call(run, kwargs, "sample.sample_configured")
    except errors.Preempted:
      _remove_own_temp_files(fs.abspath(output_dir))
      n = len(fs.glob_in(fs.abspath(output_dir), "pairs-*-of-*.tfrecord"))
      raise errors.Preempted(f"preempted: {n} finished shard(s) kept in "
                             f"{fs.abspath(output_dir)}; rerun the same command to "
                             "continue at the first missing shard") from None
    except ValueError as e:
      _remove_own_temp_files(fs.abspath(output_dir))
      if isinstance(e, errors.ConfigError) or _raised_here(e):
        raise errors.ConfigError(" ".join(str(e).split())) from None
      raise
  print("sampling summary:\n" + format_summary(summary))
  return summary


if __name__ == "__main__":
  from rso_jax import sample as _sample  # pylint: disable=g-import-not-at-top
  sys.exit(_sample.main())
