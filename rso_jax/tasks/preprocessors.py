"""seqio preprocessors: reward-ranking text format, EOS + truncation policy, truncation counts.

seqio trims sequences longer than the feature length silently (`append_eos_after_trim`,
`Task._trim_output_features`, `trim_and_pad_dataset`). Our tasks use
`append_eos_and_check_length` instead, with a policy:
  truncate="count" (default): trim (keeping the EOS), count every example seen and every
      over-long one per task, and log a warning with the numbers on the 1st, 2nd, 4th, 8th, ...
      truncated (or dropped) example; `truncation_stats()` returns the counts.
  truncate="error": fail on the first over-long example, naming the task, feature and lengths.
`count_truncated` counts over a finite dataset eagerly (reports, tests).

Reward-ranking inputs ("[CONTEXT] x [RESPONSE A] y_a [RESPONSE B] y_b", built by
`format_pairwise_ranking`) follow the over-length rule of the inference layer
(`inference.RewardModel.ranking_tokens`), token for token: an input that fits is the whole
string tokenized; one that does not has its *context* cut (its start kept by default), the
tags and both responses kept whole (counted as truncated); one whose tags and responses alone
do not fit is DROPPED and counted in `truncation_stats()[...]["dropped"]` -- never trained on
with cut responses and a label that no longer follows from the input. `ranking_input_ids` is
the rule in TF (also used by `feature_converters.BothOrdersRankingConverter`).
"""
from __future__ import annotations

import threading
from typing import Any, Mapping

from absl import logging
import numpy as np
import seqio
import tensorflow as tf

from rso_jax.tasks.text_formats import CONTEXT_TAG

TRUNCATE_POLICIES = ("count", "error")
# Preference tasks have no "chosen"/"rejected" feature lengths: both use the "targets" length.
DEFAULT_LENGTH_KEYS: Mapping[str, str] = {"chosen": "targets", "rejected": "targets"}

KEEP_CONTEXT = ("start", "end")  # Which end of a cut reward-ranking context is kept.
# Helper feature: format_pairwise_ranking -> append_eos_and_check_length (removed there).
RANKING_TAIL = "_ranking_tail"
# ranking_input_ids statuses.
RANKING_FITS, RANKING_CUT, RANKING_DROPPED = 0, 1, 2


def _length_key(feature: str, sequence_length: Mapping[str, Any],
                length_keys: Mapping[str, str]) -> str | None:
  if feature in sequence_length:
    return feature
  alias = length_keys.get(feature)
  if alias is not None and alias in sequence_length:
    return alias
  return None


# ----------------------------------------------------------------------------- statistics


class _Counters:
  """Per-task truncation counters: tf.Variables updated inside the tf.data pipeline.

  Updating variables costs little per example; Python (the warning) runs only for truncated
  examples whose running count is a power of two.
  """

  def __init__(self, name: str, features: tuple[str, ...]):
    self.name = name
    self.features = features
    self.feature_lengths: dict[str, int] = {}
    with tf.init_scope():  # Eager variables even if called while tracing.
      self.examples = tf.Variable(0, dtype=tf.int64, trainable=False)
      self.truncated_examples = tf.Variable(0, dtype=tf.int64, trainable=False)
      self.truncated = tf.Variable(tf.zeros([len(features)], tf.int64), trainable=False)
      self.max_length = tf.Variable(tf.zeros([len(features)], tf.int64), trainable=False)
      self.dropped = tf.Variable(0, dtype=tf.int64, trainable=False)
      self.critical = tf.CriticalSection()

  def as_dict(self) -> dict[str, Any]:
    truncated = self.truncated.numpy().tolist()
    longest = self.max_length.numpy().tolist()
    return {
        "name": self.name,
        "examples": int(self.examples.numpy()),
        "truncated_examples": int(self.truncated_examples.numpy()),
        "truncated": {f: int(c) for f, c in zip(self.features, truncated)},
        "dropped": int(self.dropped.numpy()),
        "max_length": {f: int(m) for f, m in zip(self.features, longest)},
        "feature_lengths": dict(self.feature_lengths),
    }

  def message(self) -> str:
    d = self.as_dict()
    per_feature = ", ".join(
        f"{f}: {d['truncated'][f]} over {d['feature_lengths'].get(f)} tokens "
        f"(longest {d['max_length'][f]})" for f in self.features)
    n = max(d["examples"], 1)
    frac = d["truncated_examples"] / n
    msg = (f"Task {self.name!r}: {d['truncated_examples']} of {d['examples']} examples seen so "
           f"far ({frac:.2%}) exceed the feature length and were truncated [{per_feature}].")
    if d["dropped"]:
      msg += (f" {d['dropped']} ({d['dropped'] / n:.2%}) were DROPPED: their responses alone "
              f"(with the tags) do not fit the inputs length "
              f"{d['feature_lengths'].get('inputs')} (a reward-ranking input's context is cut, "
              "never its responses).")
    return msg + " Raise the feature lengths, or pass truncate='error' to fail instead."

  def update(self, lengths: tf.Tensor, limits: tf.Tensor,
             dropped: tf.Tensor | bool = False) -> tf.Operation:
    """In-graph update with one example's `[F]` lengths (incl. EOS) against `[F]` limits.

    A `dropped` example counts as seen and in `dropped` (and `max_length`), not as truncated.
    """
    dropped = tf.convert_to_tensor(dropped, tf.bool)
    kept = tf.cast(tf.logical_not(dropped), tf.int64)
    over = tf.cast(lengths > limits, tf.int64) * kept
    any_over = tf.reduce_max(over) > 0

    def add():
      ops = [
          self.examples.assign_add(1),
          self.truncated.assign_add(over),
          self.max_length.assign(tf.maximum(self.max_length, lengths)),
      ]
      with tf.control_dependencies(ops):
        return (self.truncated_examples.assign_add(tf.cast(any_over, tf.int64)),
                self.dropped.assign_add(tf.cast(dropped, tf.int64)))

    # The map runs examples in parallel: one at a time in here, or a scatter_max (run under a
    # shared lock) can lose one example's length to another's read-modify-write.
    t, d = self.critical.execute(add)
    pow2 = lambda c: tf.equal(tf.bitwise.bitwise_and(c, c - 1), 0)
    loud = tf.logical_or(tf.logical_and(any_over, pow2(t)), tf.logical_and(dropped, pow2(d)))

    def warn():
      tf.py_function(lambda: logging.warning("%s", self.message()), [], [])
      return tf.constant(0)

    return tf.cond(loud, warn, lambda: tf.constant(0))


_COUNTERS: dict[str, _Counters] = {}
_COUNTERS_LOCK = threading.Lock()


def _counters(name: str, features: tuple[str, ...]) -> _Counters:
  with _COUNTERS_LOCK:
    c = _COUNTERS.get(name)
    if c is None or c.features != features:
      c = _COUNTERS[name] = _Counters(name, features)
    return c


def truncation_stats(name: str | None = None) -> dict[str, Any]:
  """Counts recorded by truncate='count' pipelines: one task's dict, or {task: dict} for all.

  A task's dict: {"name", "examples" (seen, all epochs, dropped ones included),
  "truncated_examples" (trimmed and kept), "truncated": {feature: count}, "dropped"
  (reward-ranking examples whose responses alone do not fit: removed, not trained on),
  "max_length": {feature: longest incl. EOS}, "feature_lengths": {feature: limit}}.
  """
  with _COUNTERS_LOCK:
    if name is not None:
      c = _COUNTERS.get(name)
      return c.as_dict() if c else {"name": name, "examples": 0, "truncated_examples": 0,
                                    "truncated": {}, "dropped": 0, "max_length": {},
                                    "feature_lengths": {}}
    return {k: v.as_dict() for k, v in _COUNTERS.items()}


def reset_truncation_stats(name: str | None = None) -> None:
  """Forgets the counts (of one task, or all); pipelines built afterwards count from zero."""
  with _COUNTERS_LOCK:
    if name is None:
      _COUNTERS.clear()
    else:
      _COUNTERS.pop(name, None)


# ----------------------------------------------------------------------------- preprocessors


def ranking_input_ids(vocabulary: seqio.Vocabulary, whole: tf.Tensor, prompt: tf.Tensor,
                      tail: tf.Tensor, length: int, keep_context: str = "start"
                      ) -> tuple[tf.Tensor, tf.Tensor]:
  """The over-length rule for one reward-ranking input, in TF (EOS not included).

  The TF twin of `inference.RewardModel.ranking_tokens`, token for token:
    * `whole` (the tokens of "[CONTEXT] x [R A] y_a [R B] y_b") + EOS fits `length`: `whole`,
      status RANKING_FITS;
    * else tag + the context cut to the budget (its start kept for keep_context="start", its
      end for "end") + tail, status RANKING_CUT, where the tag is `encode("[CONTEXT]")`, the
      context `encode("[CONTEXT] " + prompt)` after the tag's tokens and the tail
      `encode(" [R A] y_a [R B] y_b")` (both responses with their tags, never cut);
    * else (the tag and the tail alone leave no room for EOS): status RANKING_DROPPED (the
      returned ids are then meaningless; drop the example).

  Args:
    vocabulary: the task's vocabulary.
    whole: int tokens of the whole ranking text.
    prompt: the context x (string scalar).
    tail: " [R A] y_a [R B] y_b" (string scalar; see `format_pairwise_ranking`).
    length: the inputs feature length (EOS included).
    keep_context: "start" or "end".

  Returns:
    (int32 ids [n], int32 status scalar).
  """
  if keep_context not in KEEP_CONTEXT:
    raise ValueError(f"keep_context={keep_context!r}: use one of {KEEP_CONTEXT}")
  tag = [int(t) for t in vocabulary.encode(CONTEXT_TAG)]
  whole = tf.cast(whole, tf.int32)

  def fits():
    return whole, tf.constant(RANKING_FITS, tf.int32)

  def cut():
    tail_ids = tf.cast(vocabulary.encode_tf(tail), tf.int32)
    context = tf.cast(vocabulary.encode_tf(tf.strings.join([CONTEXT_TAG, prompt], " ")),
                      tf.int32)[len(tag):]
    budget = length - 1 - len(tag) - tf.size(tail_ids)
    keep = tf.clip_by_value(budget, 0, tf.size(context))
    kept = context[:keep] if keep_context == "start" else context[tf.size(context) - keep:]
    ids = tf.concat([tf.constant(tag, tf.int32, [len(tag)]), kept, tail_ids], 0)
    status = tf.where(budget < 0, RANKING_DROPPED, RANKING_CUT)
    return ids, tf.cast(status, tf.int32)

  return tf.cond(tf.size(whole) + 1 <= length, fits, cut)


def _checked_lengths(output_features: Mapping[str, seqio.Feature],
                     sequence_length: Mapping[str, int] | None, length_keys: Mapping[str, str],
                     stats_name: str) -> dict[str, int]:
  """{feature: its length limit, EOS included} of the EOS features that have a length."""
  checked: dict[str, int] = {}
  for f, feat in output_features.items():
    if not feat.add_eos:
      continue
    key = _length_key(f, sequence_length or {}, length_keys)
    if key is not None and sequence_length[key] is not None:
      checked[f] = int(sequence_length[key])
  for f, limit in checked.items():
    if limit < 1:
      raise ValueError(f"Task {stats_name!r}: feature length for {f!r} must be >= 1, got {limit}")
  return checked


def _is_ranking(dataset: tf.data.Dataset, stats_name: str) -> bool:
  """Whether `dataset` holds reward-ranking examples (built by `format_pairwise_ranking`)."""
  ranking = RANKING_TAIL in dataset.element_spec
  if ranking and "prompt_pretokenized" not in dataset.element_spec:
    raise ValueError(f"Task {stats_name!r}: reward-ranking examples need 'prompt_pretokenized' "
                     f"(format_pairwise_ranking keeps it); got {list(dataset.element_spec)}")
  return ranking


def _assert_fits(tokens: tf.Tensor, length: tf.Tensor, limit: int, feature: str,
                 stats_name: str) -> tf.Tensor:
  """`tokens`, after an in-graph check that `length` (EOS included) is within `limit`."""
  assert_op = tf.debugging.assert_less_equal(
      length, limit,
      message=(f"Task {stats_name}: feature {feature} is longer than its feature length "
               f"{limit} (x = its tokens incl. EOS, y = the limit) and truncate=error"))
  with tf.control_dependencies([assert_op]):
    return tf.identity(tokens)


def _without_external_state(ds: tf.data.Dataset) -> tf.data.Dataset:
  """The counters are diagnostic state: tf.data iterators are checkpointed without them."""
  options = tf.data.Options()
  options.experimental_external_state_policy = tf.data.experimental.ExternalStatePolicy.IGNORE
  return ds.with_options(options)


def append_eos_and_check_length(
    dataset: tf.data.Dataset,
    output_features: Mapping[str, seqio.Feature],
    sequence_length: Mapping[str, int] | None = None,
    *,
    truncate: str = "count",
    stats_name: str = "unnamed",
    length_keys: Mapping[str, str] = DEFAULT_LENGTH_KEYS,
    keep_context: str = "start",
) -> tf.data.Dataset:
  """Appends EOS (where `Feature.add_eos`) and applies the truncation policy.

  Replaces `seqio.preprocessors.append_eos_after_trim`. A feature is over-long when its token
  count including EOS exceeds `sequence_length[feature]` (or `sequence_length[length_keys[f]]`,
  so "chosen"/"rejected" use the "targets" length). Without `sequence_length` it only appends EOS.

  Reward-ranking examples (those `format_pairwise_ranking` built) have their "inputs" fitted by
  `ranking_input_ids` instead of trimmed from the end: the context is cut, never the responses;
  an example whose responses alone do not fit is dropped and counted (`truncation_stats`).

  Args:
    dataset: tokenized examples (rank-1 int32 token features).
    output_features: the task's output features (seqio injects them).
    sequence_length: feature lengths (seqio injects them; may be None).
    truncate: "count" (trim, count, warn; drop reward-ranking examples whose responses do not
      fit) or "error" (fail on the first over-long example).
    stats_name: key of the counts in `truncation_stats` (the task name).
    length_keys: feature -> sequence_length key used when the feature has no length of its own.
    keep_context: which end of a cut reward-ranking context is kept, "start" or "end".
  """
  if truncate not in TRUNCATE_POLICIES:
    raise ValueError(f"truncate must be one of {TRUNCATE_POLICIES}, got {truncate!r}")
  if keep_context not in KEEP_CONTEXT:
    raise ValueError(f"keep_context={keep_context!r}: use one of {KEEP_CONTEXT}")
  checked = _checked_lengths(output_features, sequence_length, length_keys, stats_name)
  fit_ranking = (_is_ranking(dataset, stats_name) and truncate == "count"
                 and "inputs" in checked)
  names = tuple(sorted(checked))
  counters = None
  if truncate == "count" and names:
    counters = _counters(stats_name, names)
    counters.feature_lengths = {f: checked[f] for f in names}
    limits_t = tf.constant([checked[f] for f in names], tf.int64)

  def fn(ex: dict[str, tf.Tensor]) -> tuple[dict[str, tf.Tensor], tf.Tensor]:
    ex = dict(ex)
    tail = ex.pop(RANKING_TAIL, None)
    lengths = {}
    dropped = tf.constant(False)
    for f, feat in output_features.items():
      if not feat.add_eos or f not in ex:
        continue
      v = ex[f]
      lengths[f] = tf.size(v, out_type=tf.int32) + 1
      if f in checked and truncate == "error":
        v = _assert_fits(v, lengths[f], checked[f], f, stats_name)
      elif f == "inputs" and fit_ranking:
        ids, status = ranking_input_ids(feat.vocabulary, v, ex["prompt_pretokenized"], tail,
                                        checked[f], keep_context)
        dropped = tf.equal(status, RANKING_DROPPED)
        v = tf.cast(ids, v.dtype)[:checked[f] - 1]  # A no-op unless dropped.
      elif f in checked:
        v = v[:checked[f] - 1]
      ex[f] = tf.concat([v, tf.constant([feat.vocabulary.eos_id], v.dtype)], axis=0)
    if counters is not None:
      token = counters.update(tf.cast(tf.stack([lengths[f] for f in names]), tf.int64),
                              limits_t, dropped)
      with tf.control_dependencies([token]):
        ex = {k: tf.identity(v) for k, v in ex.items()}
    return ex, tf.logical_not(dropped)

  ds = dataset.map(fn, num_parallel_calls=tf.data.AUTOTUNE)
  if fit_ranking:
    ds = ds.filter(lambda ex, keep: keep)
  ds = ds.map(lambda ex, keep: ex)
  return _without_external_state(ds) if counters is not None else ds


def count_truncated(dataset: tf.data.Dataset, feature_lengths: Mapping[str, int], *,
                    eos_pending: bool = False,
                    length_keys: Mapping[str, str] = DEFAULT_LENGTH_KEYS) -> dict[str, Any]:
  """Counts examples whose token length exceeds the feature length (one eager pass).

  Args:
    dataset: a finite dataset of tokenized examples (before seqio trims them).
    feature_lengths: e.g. {"inputs": 32, "targets": 32}; "chosen"/"rejected" fall back to
      "targets" through `length_keys`.
    eos_pending: True when EOS is still to be appended (adds 1 to every length).
    length_keys: feature -> feature_lengths key for features without their own length.

  Returns:
    {"examples": n, "truncated_examples": examples with any feature over,
     "truncated": {feature: count}, "max_length": {feature: longest}, "feature_lengths": {...}}.
  """
  checked = {}
  for f in dataset.element_spec:
    key = _length_key(f, feature_lengths, length_keys)
    if key is not None and dataset.element_spec[f].dtype.is_integer:
      checked[f] = int(feature_lengths[key])
  if not checked:
    raise ValueError(f"count_truncated: none of the dataset features {list(dataset.element_spec)} "
                     f"has a length in {dict(feature_lengths)}")
  extra = 1 if eos_pending else 0
  lens_ds = dataset.map(lambda ex: {f: tf.size(ex[f], out_type=tf.int32) + extra for f in checked})
  counts = {f: 0 for f in checked}
  longest = {f: 0 for f in checked}
  n = over_any = 0
  for batch in lens_ds.batch(4096).as_numpy_iterator():
    over = np.zeros(len(next(iter(batch.values()))), bool)
    for f, limit in checked.items():
      counts[f] += int((batch[f] > limit).sum())
      longest[f] = max(longest[f], int(batch[f].max()))
      over |= batch[f] > limit
    n += len(over)
    over_any += int(over.sum())
  return {"examples": n, "truncated_examples": over_any, "truncated": counts,
          "max_length": longest, "feature_lengths": checked}


def ranking_tail(y_a: tf.Tensor, y_b: tf.Tensor, response_label: str = "RESPONSE") -> tf.Tensor:
  """" [R A] y_a [R B] y_b": the part of a ranking input that is never cut (string tensors)."""
  return tf.strings.join(["", f"[{response_label} A]", y_a, f"[{response_label} B]", y_b],
                         separator=" ")


def format_pairwise_ranking(dataset: tf.data.Dataset, *, seed: int = 0,
                            response_label: str = "RESPONSE") -> tf.data.Dataset:
  """(inputs, chosen, rejected) strings -> the paper's reward-ranking text-to-text example.

  inputs  = "[CONTEXT] {x} [RESPONSE A] {y_a} [RESPONSE B] {y_b}", targets = "A" or "B" (the
  position of the chosen response). `response_label="SUMMARY"` gives the paper's TL;DR tags
  "[SUMMARY A]"/"[SUMMARY B]". The chosen response goes to B when a keyed hash of
  (seed, x, chosen, rejected) is odd: an unbiased coin that is deterministic, independent of
  example order, sharding and epochs. Keeps "prompt_pretokenized", "chosen_pretokenized",
  "rejected_pretokenized" and a bool "flipped" (chosen is B), and passes the helper string
  RANKING_TAIL (" [R A] y_a [R B] y_b") on to `append_eos_and_check_length`, which fits
  over-long inputs by cutting the context only (and removes the helper).
  """
  key = [int(seed) & 0x7FFFFFFFFFFFFFFF, 0x52534F]

  def fn(ex):
    x, yc, yr = ex["inputs"], ex["chosen"], ex["rejected"]
    text = tf.strings.join([x, yc, yr], separator="\x00")
    flipped = tf.equal(tf.strings.to_hash_bucket_strong(text, 2**30, key) % 2, 1)
    y_a = tf.where(flipped, yr, yc)
    y_b = tf.where(flipped, yc, yr)
    inputs = tf.strings.join(
        [CONTEXT_TAG, x, f"[{response_label} A]", y_a, f"[{response_label} B]", y_b],
        separator=" ")
    return {
        "inputs": inputs,
        RANKING_TAIL: ranking_tail(y_a, y_b, response_label),
        "targets": tf.where(flipped, "B", "A"),
        "prompt_pretokenized": x,
        "chosen_pretokenized": yc,
        "rejected_pretokenized": yr,
        "flipped": flipped,
    }

  return dataset.map(fn, num_parallel_calls=tf.data.AUTOTUNE)


def rekey_nested(dataset: tf.data.Dataset, key_map: Mapping[str, str]) -> tf.data.Dataset:
  """Renames features: {new: old}; `old` may be a '/'-separated path into nested features."""

  def get(ex, path):
    v = ex
    for part in path.split("/"):
      if part not in v:
        raise ValueError(f"rekey_nested: feature path {path!r} not found (missing {part!r}); "
                         f"available keys: {list(v)}")
      v = v[part]
    return v

  return dataset.map(lambda ex: {new: get(ex, old) for new, old in key_map.items()},
                     num_parallel_calls=tf.data.AUTOTUNE)
