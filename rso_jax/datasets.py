"""The seqio data a training run reads, and what its checkpoint records about it.

  DatasetConfig    which task or mixture, split, batch size, shuffle seed (T5X's, trimmed)
  check_task       a registered task or mixture name, else a ConfigError listing them
  get_dataset      global NumPy batches, the same stream on every process
  task_vocabulary  the vocabulary of a task's inputs
  read_prompts     the prompt texts of a task's split, in order
  model_manifest   the `checkpoints.Manifest` of a model trained on a task

Importing this module registers the embedded tasks (`rso_jax.tasks`).
"""
from __future__ import annotations

import dataclasses
import difflib
from typing import List, Mapping, Optional

import seqio

from rso_jax import checkpoints
from rso_jax import tasks  # pylint: disable=unused-import  (registers the embedded tasks)
from rso_jax.errors import ConfigError
from rso_jax.tasks import prompt_split


@dataclasses.dataclass(frozen=True)
class DatasetConfig:
  """Which seqio task/mixture to read and how (T5X's `utils.DatasetConfig`, trimmed)."""
  mixture_or_task_name: str
  task_feature_lengths: Mapping[str, int]
  split: str = "train"
  batch_size: int = 32
  shuffle: bool = True
  seed: Optional[int] = 0
  use_cached: bool = False


def check_task(name: str, setting: str = "MIXTURE_OR_TASK_NAME") -> None:
  """ConfigError naming `setting` unless `name` is a registered seqio task or mixture."""
  known = sorted(set(seqio.TaskRegistry.names()) | set(seqio.MixtureRegistry.names()))
  if name not in known:
    close = difflib.get_close_matches(str(name), known, n=1)
    raise ConfigError(f"{setting}={name!r} is not a registered seqio task or mixture"
                      + (f" (did you mean {close[0]!r}?)" if close else "")
                      + f" (registered: {', '.join(known) or 'none'})")


def get_dataset(cfg: DatasetConfig, feature_converter, *, num_epochs: Optional[int] = None,
                skip_batches: int = 0):
  """An iterator of global NumPy batches `{feature: [batch, ...]}`, the same on every process.

  Every process reads the task's one stream (one shuffle seed) and `Trainer.shard` places the
  rows its devices hold: the batches, and so the run, are the same on any number of hosts,
  and a run resumed on another number of hosts continues the same stream. `skip_batches`
  fast-forwards the deterministic pipeline to where a resumed run left off.
  """
  check_task(cfg.mixture_or_task_name)
  ds = seqio.get_dataset(
      cfg.mixture_or_task_name, task_feature_lengths=dict(cfg.task_feature_lengths),
      feature_converter=feature_converter, dataset_split=cfg.split, use_cached=cfg.use_cached,
      shuffle=cfg.shuffle, num_epochs=num_epochs, seed=cfg.seed, verbose=False)
  ds = ds.batch(cfg.batch_size, drop_remainder=True)
  if skip_batches:
    ds = ds.skip(skip_batches)
  return ds.prefetch(2).as_numpy_iterator()


def task_vocabulary(mixture_or_task_name: str):
  """The vocabulary of a task's model inputs (the "inputs" feature, else the first one)."""
  check_task(mixture_or_task_name)
  feats = seqio.get_mixture_or_task(mixture_or_task_name).output_features
  return (feats.get("inputs") or next(iter(feats.values()))).vocabulary


def model_manifest(model, mixture_or_task_name: str, task_feature_lengths: Mapping[str, int]
                   ) -> checkpoints.Manifest:
  """What a checkpoint of `model` trained on the task is (`checkpoints.Manifest`).

  A model that tokenizes on its own (reward models: separator, "A"/"B") must use the task's
  vocabulary; a mismatch is a ConfigError rather than a reward model that reads other tokens.
  """
  vocab = task_vocabulary(mixture_or_task_name)
  spec = checkpoints.vocabulary_spec(vocab)
  own = getattr(model, "vocabulary", None)
  if own is not None and not checkpoints.same_vocabulary(own, vocab):
    raise ConfigError(f"{type(model).__name__} tokenizes with {checkpoints.vocabulary_spec(own)}"
                      f" but task {mixture_or_task_name!r} uses {spec}: pass the task's "
                      "vocabulary to the model")
  return checkpoints.Manifest(
      kind=model.manifest_kind, network=model.config, vocabulary=spec,
      feature_lengths={k: int(v) for k, v in task_feature_lengths.items()},
      model_settings=model.manifest_settings(), task=mixture_or_task_name,
      data_split=prompt_split.split_spec(mixture_or_task_name))


def read_prompts(task_name: str, split: str, max_prompts: Optional[int] = None) -> List[str]:
  """The `inputs_pretokenized` texts of a seqio task, in order (no shuffling).

  Tokenization (with the policy checkpoint's vocabulary and lengths, and the over-length rule)
  is the inference layer's job; nothing is skipped here.
  """
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
