"""Shared plumbing: an in-memory seqio data source and the four task shapes.

Task kinds and their output features (each tokenized, EOS appended, raw text kept as
"<feature>_pretokenized"):
  "sft"         inputs -> targets               (seq2seq converter)
  "prompts"     inputs                          (sampling / evaluation prompts)
  "pairs"       inputs, chosen, rejected        (PairwiseFeatureConverter)
  "rm_pairwise" inputs "[CONTEXT] x [RESPONSE A] y1 [RESPONSE B] y2" -> targets "A"/"B"
                                                (seq2seq converter)
"""
from __future__ import annotations

import functools
from typing import Callable, Mapping, Sequence

import numpy as np
import seqio
import tensorflow as tf

from rso_jax.tasks import preprocessors as prep

TASK_KINDS: Mapping[str, tuple[str, ...]] = {
    "sft": ("inputs", "targets"),
    "prompts": ("inputs",),
    "pairs": ("inputs", "chosen", "rejected"),
    "rm_pairwise": ("inputs", "targets"),
}
# Columns the data source must provide for each kind.
SOURCE_COLUMNS: Mapping[str, tuple[str, ...]] = {
    "sft": ("inputs", "targets"),
    "prompts": ("inputs",),
    "pairs": ("inputs", "chosen", "rejected"),
    "rm_pairwise": ("inputs", "chosen", "rejected"),
}

ColumnsFn = Callable[[str], Mapping[str, Sequence]]


class InMemoryDataSource(seqio.FunctionDataSource):
  """A `seqio.FunctionDataSource` over columns built in Python (`columns_fn(split)`).

  With `shuffle=True` the whole split is shuffled in memory (seeded by `seed`, reshuffled each
  epoch), so the usual warning about weakly shuffled function sources does not apply.
  """

  def __init__(self, columns_fn: ColumnsFn, splits: Sequence[str],
               num_input_examples: Mapping[str, int] | None = None):
    self._columns_fn = columns_fn

    def dataset_fn(split: str, shuffle_files: bool, seed: int | None = None) -> tf.data.Dataset:
      if split not in splits:
        raise ValueError(f"Unknown split {split!r}; this source has splits {list(splits)}")
      cols = columns_fn(split)
      arrays = {k: _column_array(k, v) for k, v in cols.items()}
      n = len(next(iter(arrays.values())))
      ds = tf.data.Dataset.from_tensor_slices(arrays)
      if shuffle_files and n > 1:
        ds = ds.shuffle(n, seed=seed, reshuffle_each_iteration=True)
      return ds

    super().__init__(dataset_fn=dataset_fn, splits=splits, num_input_examples=num_input_examples)

  def get_dataset(self, split: str = "train", shuffle: bool = True, seed: int | None = None,
                  shard_info: seqio.ShardInfo | None = None, *, sequence_length=None,
                  use_cached: bool = False, num_epochs: int | None = 1) -> tf.data.Dataset:
    del sequence_length, use_cached, num_epochs  # Unused, as in FunctionDataSource.
    if shard_info and shard_info.num_shards > 1:
      raise ValueError("InMemoryDataSource shards at the example level (seqio does it for us).")
    return self._dataset_fn(split=split, shuffle_files=shuffle, seed=seed)


def _column_array(name: str, values: Sequence) -> np.ndarray:
  values = list(values)
  if not values:
    raise ValueError(f"Column {name!r} is empty: a split needs at least one example")
  if isinstance(values[0], (str, bytes)):
    return np.array([v.encode("utf-8") if isinstance(v, str) else v for v in values], dtype=object)
  arr = np.asarray(values)
  return arr.astype(np.float32) if arr.dtype.kind == "f" else arr


def _accuracy(targets: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
  """Reward-ranking accuracy in percent (seqio metric_fn)."""
  targets, predictions = list(targets), list(predictions)
  if not targets:
    return {"accuracy": 0.0}
  return {"accuracy": 100.0 * float(np.mean([t == p for t, p in zip(targets, predictions)]))}


def _decode_text(output, example=None, is_target=False) -> str:
  del example, is_target
  return output.decode("utf-8") if isinstance(output, bytes) else str(output)


def add_task(name: str, source: seqio.DataSource, kind: str, vocabulary: seqio.Vocabulary, *,
             truncate: str = "count", flip_seed: int = 0, rm_response_label: str = "RESPONSE",
             keep_context: str = "start",
             pre_tokenize: Sequence[Callable[..., tf.data.Dataset]] = (),
             shuffle_buffer_size: int = 10_000) -> seqio.Task:
  """(Re-)registers task `name` of `kind` over `source` (idempotent: replaces a same-name task).

  `keep_context`: which end of an over-long reward-ranking context survives the cut ("start";
  "end" for dialogues), the rule of `inference.RewardModel.ranking_tokens`.
  """
  if kind not in TASK_KINDS:
    raise ValueError(f"Unknown task kind {kind!r}; expected one of {list(TASK_KINDS)}")
  if truncate not in prep.TRUNCATE_POLICIES:
    raise ValueError(f"truncate must be one of {prep.TRUNCATE_POLICIES}, got {truncate!r}")
  preprocessors = list(pre_tokenize)
  if kind == "rm_pairwise":
    preprocessors.append(functools.partial(prep.format_pairwise_ranking, seed=flip_seed,
                                           response_label=rm_response_label))
  preprocessors += [
      seqio.preprocessors.tokenize,
      functools.partial(prep.append_eos_and_check_length, truncate=truncate, stats_name=name,
                        keep_context=keep_context),
  ]
  output_features = {f: seqio.Feature(vocabulary, add_eos=True) for f in TASK_KINDS[kind]}
  extra = {}
  if kind == "rm_pairwise":
    extra = {"postprocess_fn": _decode_text, "metric_fns": [_accuracy]}
  seqio.TaskRegistry.remove(name)
  return seqio.TaskRegistry.add(name, source=source, output_features=output_features,
                                preprocessors=preprocessors,
                                shuffle_buffer_size=shuffle_buffer_size, **extra)
