"""Feature converters (task features -> model features) for the three batch shapes, unpacked.

seq2seq (SFT, and the pairwise reward-ranking text-to-text task):
  `seq2seq_feature_converter()` is `seqio.EncDecFeatureConverter(pack=False)`:
  {"inputs" [Li], "targets" [Lt]} ->
    encoder_input_tokens  [Li]  inputs, 0-padded
    decoder_target_tokens [Lt]  targets (ending in EOS), 0-padded
    decoder_input_tokens  [Lt]  targets shifted right by one, BOS = 0 first
    decoder_loss_weights  [Lt]  1 on non-padding target positions, else 0
  task_feature_lengths {"inputs": Li, "targets": Lt}.

pairwise (policy training on preference pairs, pointwise BT reward model):
  `PairwiseFeatureConverter()`:
  {"inputs" [Li], "chosen" [Lt], "rejected" [Lt], optional scalars "ref_chosen_logps",
   "ref_rejected_logps"} ->
    encoder_input_tokens                                                         [Li]
    chosen_decoder_input_tokens, chosen_decoder_target_tokens, chosen_loss_weights     [Lt]
    rejected_decoder_input_tokens, rejected_decoder_target_tokens, rejected_loss_weights [Lt]
    ref_chosen_logps, ref_rejected_logps (float32 scalars = log pi_sft(y|x), passed through
      when the dataset has them; both or neither)
  task_feature_lengths {"inputs": Li, "targets": Lt} (Lt serves both responses).

both orders (the pairwise reward-ranking model's training aid):
  `BothOrdersRankingConverter(vocabulary)`: each (prompt, chosen, rejected) example becomes the
  two ranking examples "... [RESPONSE A] y_w [RESPONSE B] y_l" -> "A" and the swapped one -> "B",
  adjacent, then the seq2seq features above. Over-long inputs follow the reward-ranking rule
  (context cut, responses never; a pair whose responses do not fit is dropped, both rows).
"""
from __future__ import annotations

import copy
from typing import Any, Mapping

import seqio
import tensorflow as tf
from rso_jax.tasks import preprocessors
from rso_jax.tasks import preprocessors as prep
from rso_jax.tasks import text_formats

FeatureSpec = seqio.FeatureConverter.FeatureSpec
REF_LOGP_FEATURES = ("ref_chosen_logps", "ref_rejected_logps")
RESPONSES = ("chosen", "rejected")


def seq2seq_feature_converter(**kwargs) -> seqio.EncDecFeatureConverter:
  """`seqio.EncDecFeatureConverter(pack=False)` (SFT and reward-ranking tasks)."""
  if kwargs.get("pack"):
    raise ValueError("seq2seq_feature_converter is unpacked; got pack=True")
  kwargs["pack"] = False
  return seqio.EncDecFeatureConverter(**kwargs)


# The reward-ranking task is text-to-text ("A"/"B" targets): the seq2seq converter.
reward_ranking_feature_converter = seq2seq_feature_converter


class PairwiseFeatureConverter(seqio.FeatureConverter):
  """(inputs, chosen, rejected[, ref_chosen_logps, ref_rejected_logps]) -> encoder + 2 decoders.

  See the module docstring for the features and shapes. The prompt is encoded once; each
  response gets decoder inputs shifted right with BOS = `bos_id` (0) and loss weights on its
  non-padding positions. Sequences must already fit (tasks count or reject over-long ones);
  seqio's input validation fails on any that do not.
  """

  TASK_FEATURES = {
      "inputs": FeatureSpec(dtype=tf.int32),
      "chosen": FeatureSpec(dtype=tf.int32),
      "rejected": FeatureSpec(dtype=tf.int32),
  }
  MODEL_FEATURES = {
      "encoder_input_tokens": FeatureSpec(dtype=tf.int32),
      **{f"{r}_{suffix}": FeatureSpec(dtype=tf.int32) for r in RESPONSES
         for suffix in ("decoder_input_tokens", "decoder_target_tokens", "loss_weights")},
  }
  PACKING_FEATURE_DTYPES = {}

  def __init__(self, pack: bool = False, **kwargs):
    if pack:
      raise ValueError("PairwiseFeatureConverter does not pack; got pack=True")
    if kwargs.get("passthrough_features"):
      raise ValueError("PairwiseFeatureConverter sets its own pass-through features "
                       f"({REF_LOGP_FEATURES}); got passthrough_features="
                       f"{kwargs['passthrough_features']!r}")
    super().__init__(pack=False, **kwargs)

  def __call__(self, ds: tf.data.Dataset,
               task_feature_lengths: Mapping[str, int]) -> tf.data.Dataset:
    if set(task_feature_lengths) != {"inputs", "targets"}:
      raise ValueError("PairwiseFeatureConverter expects task_feature_lengths with keys "
                       f"{{'inputs', 'targets'}}, got {dict(task_feature_lengths)}")
    present = [f for f in REF_LOGP_FEATURES if f in ds.element_spec]
    if len(present) == 1:
      raise ValueError(f"Dataset has {present[0]!r} but not its partner; reference log-probs "
                       f"come in pairs {REF_LOGP_FEATURES}")
    conv = copy.copy(self)
    conv._passthrough_features = (  # pylint: disable=protected-access
        {f: FeatureSpec(dtype=tf.float32, rank=0) for f in REF_LOGP_FEATURES} if present else {})
    lengths = {"inputs": task_feature_lengths["inputs"],
               "chosen": task_feature_lengths["targets"],
               "rejected": task_feature_lengths["targets"]}
    lengths.update({f: 1 for f in conv._passthrough_features})  # pylint: disable=protected-access
    return seqio.FeatureConverter.__call__(conv, ds, lengths)

  def _convert_example(self, features: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    out = {"encoder_input_tokens": features["inputs"]}
    for r in RESPONSES:
      targets = features[r]
      out[f"{r}_decoder_target_tokens"] = targets
      out[f"{r}_decoder_input_tokens"] = seqio.utils.make_autoregressive_inputs(
          targets, bos_id=self.bos_id)
      out[f"{r}_loss_weights"] = seqio.feature_converters.non_padding_position(targets)
    for f in self._passthrough_features:
      out[f] = features[f]
    return out

  def _convert_features(self, ds: tf.data.Dataset,
                        task_feature_lengths: Mapping[str, int]) -> tf.data.Dataset:
    seq_lengths = {k: task_feature_lengths[k] for k in self.TASK_FEATURES}
    ds = seqio.utils.trim_and_pad_dataset(ds, seq_lengths)
    return ds.map(self._convert_example, num_parallel_calls=tf.data.AUTOTUNE)

  def get_model_feature_lengths(self, task_feature_lengths: Mapping[str, int]) -> dict[str, int]:
    """{"inputs": Li, "targets": Lt} (or per-response lengths) -> model feature lengths."""
    li = task_feature_lengths["inputs"]
    out = {"encoder_input_tokens": li}
    for r in RESPONSES:
      lt = task_feature_lengths.get(r, task_feature_lengths.get("targets"))
      if lt is None:
        raise ValueError(f"No length for {r!r}: give 'targets' in {dict(task_feature_lengths)}")
      for suffix in ("decoder_input_tokens", "decoder_target_tokens", "loss_weights"):
        out[f"{r}_{suffix}"] = lt
    for f in self._passthrough_features:
      out[f] = task_feature_lengths.get(f, 1)
    return out


def _ranking_text_tf(prompt, response_a, response_b, response_label: str):
  """TF twin of `text_formats.ranking_input_text` (string tensors in and out)."""
  return tf.strings.join([text_formats.CONTEXT_TAG, prompt, f"[{response_label} A]", response_a,
                          f"[{response_label} B]", response_b], separator=" ")


RAW_PAIR_FEATURES = ("prompt_pretokenized", "chosen_pretokenized", "rejected_pretokenized")


class BothOrdersRankingConverter(seqio.EncDecFeatureConverter):
  """Reward-ranking examples in BOTH presentation orders, adjacent, then seq2seq features.

  Each task example (its raw `prompt/chosen/rejected_pretokenized`, which the ranking tasks
  keep) becomes two: `[CONTEXT] x [RESPONSE A] y_w [RESPONSE B] y_l` -> "A" and
  `... [RESPONSE A] y_l [RESPONSE B] y_w` -> "B", re-tokenized with the task's vocabulary under
  the reward-ranking over-length rule (`preprocessors.ranking_input_ids`, the TF twin of
  `inference.RewardModel.ranking_tokens`): an input that fits is the whole string; one that
  does not has its context cut (start kept by default), tags and responses whole; a pair where
  either order's responses alone do not fit is dropped (both rows). Pairs seen, cut and
  dropped are counted in `preprocessors.truncation_stats(stats_name)`. A batch of 2n rows
  therefore holds n pairs in both orders: the gradients of order-blind features cancel within
  the batch, which is what lets a small model find the A/B segments quickly (see
  gin/stages/reward.gin).
  """

  STATS_NAME = "BothOrdersRankingConverter"

  def __init__(self, vocabulary: Any, response_label: str = "RESPONSE", *,
               keep_context: str = "start", stats_name: str | None = None, **kwargs):
    super().__init__(pack=False, **kwargs)
    if keep_context not in preprocessors.KEEP_CONTEXT:
      raise ValueError(f"keep_context={keep_context!r}: use one of {preprocessors.KEEP_CONTEXT}")
    self._vocabulary = vocabulary
    self._response_label = response_label
    self._keep_context = keep_context
    self._stats_name = stats_name or self.STATS_NAME

  def __call__(self, ds: tf.data.Dataset, task_feature_lengths: Mapping[str, int]):
    missing = [f for f in RAW_PAIR_FEATURES if f not in ds.element_spec]
    if missing:
      raise ValueError(f"both_orders=True needs the raw pair texts {missing} in the task "
                       f"(reward-ranking tasks keep them); dataset has {list(ds.element_spec)}."
                       " Use PairwiseRankingModel(both_orders=False) for other tasks.")
    li, lt = int(task_feature_lengths["inputs"]), int(task_feature_lengths["targets"])
    if lt < 2:
      raise ValueError(f"targets length {lt} cannot hold 'A'/'B' and EOS")
    vocab, label, keep = self._vocabulary, self._response_label, self._keep_context
    eos = tf.constant([vocab.eos_id], tf.int32)
    counters = prep._counters(self._stats_name, ("inputs",))  # pylint: disable=protected-access
    counters.feature_lengths = {"inputs": li}

    def ranking(x, a, b):
      whole = tf.cast(vocab.encode_tf(_ranking_text_tf(x, a, b, label)), tf.int32)
      ids, status = prep.ranking_input_ids(vocab, whole, x, prep.ranking_tail(a, b, label), li,
                                           keep)
      return tf.concat([ids[:li - 1], eos], 0), status, tf.size(whole) + 1

    def both(ex):
      x, yw, yl = (ex[f] for f in RAW_PAIR_FEATURES)
      first, s1, n1 = ranking(x, yw, yl)
      second, s2, n2 = ranking(x, yl, yw)
      dropped = tf.logical_or(tf.equal(s1, prep.RANKING_DROPPED),
                              tf.equal(s2, prep.RANKING_DROPPED))
      token = counters.update(tf.cast(tf.reshape(tf.maximum(n1, n2), [1]), tf.int64),
                              tf.constant([li], tf.int64), dropped)
      with tf.control_dependencies([token]):
        keep_pair = tf.logical_not(dropped)
      return {"first": first, "second": second}, keep_pair

    def rows(pair, keep_pair):
      del keep_pair
      targets = [tf.concat([tf.cast(vocab.encode_tf(t), tf.int32)[:lt - 1], eos], 0)
                 for t in ("A", "B")]
      return tf.data.Dataset.from_tensors(
          {"inputs": pair["first"], "targets": targets[0]}).concatenate(
              tf.data.Dataset.from_tensors({"inputs": pair["second"], "targets": targets[1]}))

    pairs = ds.map(both).filter(lambda pair, keep_pair: keep_pair).flat_map(rows)
    options = tf.data.Options()  # The counters are diagnostic state (see preprocessors).
    options.experimental_external_state_policy = tf.data.experimental.ExternalStatePolicy.IGNORE
    return super().__call__(pairs.with_options(options), task_feature_lengths)


def get_feature_converter(kind: str) -> seqio.FeatureConverter:
  """By name: "seq2seq" / "sft", "reward_ranking" / "rm_pairwise", or "pairwise"."""
  if kind in ("seq2seq", "sft", "reward_ranking", "rm_pairwise"):
    return seq2seq_feature_converter()
  if kind == "pairwise":
    return PairwiseFeatureConverter()
  raise ValueError(f"Unknown feature converter kind {kind!r}; expected 'seq2seq', "
                   "'reward_ranking' or 'pairwise'")
