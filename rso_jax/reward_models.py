"""Reward models: the paper's pairwise reward-ranking model ρ and a pointwise Bradley–Terry model.

Training (through `train.train`, T5X BaseModel interface):
  * `PairwiseRankingModel` (the paper's choice, gin/reward.gin): a T5 reads
    `[CONTEXT] x [RESPONSE A] y1 [RESPONSE B] y2` and emits "A" or "B" (seq2seq cross-entropy on
    `synthetic_rm_pairwise`, A/B flipped at random by the task). ρ(x, y1, y2) = P(y1 ≻ y2) =
    σ(logit_A − logit_B): the softmax over the two first-step logits of the "A" and "B" tokens.
    Two optional aids let the tiny model learn this from scratch in a few hundred steps (pairs in
    both orders, adjacent in the batch; a sharper initial relative-position table); see the
    class docstring and gin/reward.gin.
  * `BradleyTerryRewardModel` (gin/reward_bt.gin): the T5 encoder over
    `x [RESPONSE] y` (see "Input packing"), masked mean-pooled (or first / last token), and a
    scalar head; loss `−log σ(r_w − r_l − margin) + c·(r_w + r_l)²` on pair tasks
    (`PairwiseFeatureConverter`).

Scoring (host-side, text in, NumPy out; `RewardScorer`): `PairwiseScorer` and `BTScorer` give
  * `score(prompts [B], responses [B][N], baselines=None) -> rewards [B, N]` float32, the pointwise
    reward the rejection sampler reads. Pairwise (paper Eq. 7): `r(x, y) = logit ρ(x, y, y_b)`
    with one baseline `y_b` per prompt (default `responses[b][0]`: the first candidate, a random
    SFT decode as in the paper); any candidate equal to the baseline text gets exactly 0 (never
    computed), so r is a function of (x, y). That is B·(N−1) comparisons (fewer after removing
    duplicates), run in fixed-size padded batches.
  * `prefer(prompts [B], y1 [B], y2 [B]) -> P(y1 ≻ y2) [B]`: ρ for the pairwise model,
    σ(r1 − r2) for BT.
  `load_scorer(path, kind)` builds either from a params checkpoint. Every jitted call sees the
  same shapes (`batch_size` rows, lengths from `feature_lengths`; pad rows are all-zero and their
  outputs dropped), so a score does not depend on what else is in the batch.

Input packing of the BT model: the pair task gives the prompt as encoder tokens `[B, Li]` and
each response as decoder targets `[B, Lt]`. The model concatenates, per row and inside jit,
prompt tokens without their EOS, the separator tokens (" [RESPONSE] "), and the response tokens
with EOS, into one `[B, Li + S + Lt]` sequence with all padding at the end, and runs the
bidirectional encoder on it: every response token attends to every prompt token (an encoder-
decoder variant would see the prompt only through cross-attention). Chosen and rejected run as
2B rows of one encoder call.

Evaluation on the embedded task: `evaluate_reward_model(path, kind)` (accuracy against the golden
preference, the label-agreement ceiling, position bias, correlation with r*).
"""

from __future__ import annotations

import logging
import math
import os
import re
from typing import Any, Dict, List, Mapping, Optional, Protocol, Sequence, Tuple, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import seqio
import tensorflow as tf

from rso_jax import losses
from rso_jax import models
from rso_jax import network
from rso_jax import partitioning

Array = jax.Array
Batch = Mapping[str, Array]

RESPONSE_LABEL = "RESPONSE"  # "[RESPONSE A]"/"[RESPONSE B]"; the paper uses SUMMARY for TL;DR.
BT_SEPARATOR = " [RESPONSE] "
POOLINGS = ("mean", "first", "last")
PAIRWISE_FEATURE_LENGTHS = {"inputs": 128, "targets": 8}
BT_FEATURE_LENGTHS = {"inputs": 32, "targets": 32}
TRUNCATE_POLICIES = ("count", "error")


def _default_vocab():
  from rso_jax.tasks import vocab as vocab_lib  # pylint: disable=g-import-not-at-top
  return vocab_lib.get_vocabulary()


def _single_token(vocab, text: str) -> int:
  ids = list(vocab.encode(text))
  if len(ids) != 1:
    raise ValueError(f"target {text!r} is {len(ids)} tokens {ids} in {type(vocab).__name__}; "
                     "the ranking model needs a single-token 'A' and 'B'")
  return int(ids[0])


def ranking_input_text(prompt: str, response_a: str, response_b: str,
                       response_label: str = RESPONSE_LABEL) -> str:
  """`[CONTEXT] x [RESPONSE A] y_a [RESPONSE B] y_b`, the ranking task's input text.

  The same string `tasks.preprocessors.format_pairwise_ranking` builds in TF (its tag constant is
  reused here; tests compare the two), so training and inference read one format.
  """
  from rso_jax.tasks import preprocessors  # pylint: disable=g-import-not-at-top
  return " ".join([preprocessors.CONTEXT_TAG, prompt, f"[{response_label} A]", response_a,
                   f"[{response_label} B]", response_b])


# ------------------------------------------------------------------------------------------
# Pairwise reward-ranking model ρ(x, y1, y2)
# ------------------------------------------------------------------------------------------
class _PrecomputedLogits:
  """Stands in for `self` in `Seq2SeqModel.loss_fn` so logits computed once are reused."""

  def __init__(self, model: models.Seq2SeqModel, logits: Array):
    self.__dict__.update(model.__dict__)
    self._logits = logits

  def logits(self, *args, **kwargs) -> Array:
    del args, kwargs
    return self._logits


def _ranking_text_tf(prompt, response_a, response_b, response_label: str = RESPONSE_LABEL):
  """TF twin of `ranking_input_text` (string tensors in, string tensor out)."""
  from rso_jax.tasks import preprocessors  # pylint: disable=g-import-not-at-top
  return tf.strings.join([preprocessors.CONTEXT_TAG, prompt, f"[{response_label} A]", response_a,
                          f"[{response_label} B]", response_b], separator=" ")


RAW_PAIR_FEATURES = ("prompt_pretokenized", "chosen_pretokenized", "rejected_pretokenized")


class BothOrdersRankingConverter(seqio.EncDecFeatureConverter):
  """Reward-ranking examples in BOTH presentation orders, adjacent, then seq2seq features.

  Each task example (its raw `prompt/chosen/rejected_pretokenized`, which the ranking tasks
  keep) becomes two: `[CONTEXT] x [RESPONSE A] y_w [RESPONSE B] y_l` -> "A" and
  `... [RESPONSE A] y_l [RESPONSE B] y_w` -> "B", re-tokenized with the task's vocabulary and
  trimmed to the feature lengths (with the byte vocabulary both orders have exactly the length
  the task already checked and counted). A batch of 2n rows therefore holds n pairs in both
  orders: the gradients of order-blind features cancel within the batch, which is what lets a
  small model find the A/B segments quickly (see gin/reward.gin).
  """

  def __init__(self, vocabulary: Any = None, response_label: str = RESPONSE_LABEL, **kwargs):
    super().__init__(pack=False, **kwargs)
    self._vocabulary = vocabulary if vocabulary is not None else _default_vocab()
    self._response_label = response_label

  def __call__(self, ds: tf.data.Dataset, task_feature_lengths: Mapping[str, int]):
    missing = [f for f in RAW_PAIR_FEATURES if f not in ds.element_spec]
    if missing:
      raise ValueError(f"both_orders=True needs the raw pair texts {missing} in the task "
                       f"(reward-ranking tasks keep them); dataset has {list(ds.element_spec)}."
                       " Use PairwiseRankingModel(both_orders=False) for other tasks.")
    li, lt = int(task_feature_lengths["inputs"]), int(task_feature_lengths["targets"])
    if lt < 2:
      raise ValueError(f"targets length {lt} cannot hold 'A'/'B' and EOS")
    vocab, label = self._vocabulary, self._response_label
    eos = tf.constant([vocab.eos_id], tf.int32)

    def tok(text, length):
      return tf.concat([tf.cast(vocab.encode_tf(text), tf.int32)[:length - 1], eos], 0)

    def both(ex):
      x, yw, yl = (ex[f] for f in RAW_PAIR_FEATURES)
      one = lambda a, b, t: tf.data.Dataset.from_tensors(
          {"inputs": tok(_ranking_text_tf(x, a, b, label), li), "targets": tok(t, lt)})
      return one(yw, yl, "A").concatenate(one(yl, yw, "B"))

    return super().__call__(ds.flat_map(both), task_feature_lengths)


def _ab_logit(module: network.Transformer, params, encoder_input_tokens: Array, token_a: int,
              token_b: int) -> Array:
  b = encoder_input_tokens.shape[0]
  start = jnp.zeros((b, 1), jnp.int32)  # decoder start token (BOS = 0)
  logits = module.apply({"params": params}, encoder_input_tokens.astype(jnp.int32), start, None,
                        enable_dropout=False)  # [B, 1, V]
  first = logits[:, 0, :].astype(jnp.float32)
  return first[:, token_a] - first[:, token_b]


# Jitted once per (network config, token ids): scorers of one config share compilations.
_ab_logit_jit = jax.jit(_ab_logit, static_argnames=("module", "token_a", "token_b"))


class PairwiseRankingModel(models.Seq2SeqModel):
  """ρ(x, y1, y2): a text-to-text T5 trained to answer "A" or "B" (paper Sec. 5, reward model).

  Loss: `Seq2SeqModel`'s token cross-entropy on the targets ("A"/"B" + EOS). Extra metrics on
  the first target position, over examples whose target starts with "A" or "B":
  `pairwise_accuracy` (the two-way softmax puts > 0.5 on the right letter) and `mean_p_a`
  (mean P(A); with balanced A/B targets, > 0.5 means a bias toward position A).

  Training aids for small models trained from scratch (both off by default; gin/reward.gin turns
  them on):
    both_orders: feed every pair in both presentation orders, adjacent in the batch
      (`BothOrdersRankingConverter`; BATCH_SIZE then counts rows = 2 × pairs). The task's
      random flip alone gives the same data in expectation, but pairing the orders cancels the
      order-blind gradient noise.
    relpos_init_scale: multiplies the encoder's initial relative-position bias table, so the
      encoder starts with sharper position preferences and finds which tag ("[RESPONSE A]" or
      "[RESPONSE B]") precedes a token sooner. Only the initialization changes.
  """

  def __init__(self, config: network.T5Config, vocabulary: Any = None, both_orders: bool = False,
               relpos_init_scale: float = 1.0, response_label: str = RESPONSE_LABEL, **kwargs):
    super().__init__(config, **kwargs)
    self.vocabulary = vocabulary if vocabulary is not None else _default_vocab()
    self.token_a = _single_token(self.vocabulary, "A")
    self.token_b = _single_token(self.vocabulary, "B")
    if not (math.isfinite(relpos_init_scale) and relpos_init_scale > 0):
      raise ValueError(f"relpos_init_scale must be a finite number > 0, got {relpos_init_scale!r}")
    self.relpos_init_scale = float(relpos_init_scale)
    self.both_orders = bool(both_orders)
    if self.both_orders:
      self.feature_converter = BothOrdersRankingConverter(self.vocabulary, response_label)

  def get_initial_variables(self, rng: Array, input_shapes: Mapping[str, Tuple[int, ...]]):
    variables = super().get_initial_variables(rng, input_shapes)
    if self.relpos_init_scale == 1.0:
      return variables
    params = dict(variables["params"])
    encoder = dict(params["encoder"])
    relpos = dict(encoder["relpos_bias"])
    box = relpos["rel_embedding"]
    if isinstance(box, nn.LogicallyPartitioned):
      relpos["rel_embedding"] = box.replace_boxed(box.value * self.relpos_init_scale)
    else:
      relpos["rel_embedding"] = box * self.relpos_init_scale
    encoder["relpos_bias"], params["encoder"] = relpos, encoder
    return dict(variables, params=params)

  def preference_logits(self, params, encoder_input_tokens: Array) -> Array:
    """logit ρ = logit_A − logit_B `[B]` from ONE decoder step on `[B, Li]` ranking inputs."""
    return _ab_logit(self.module, params, encoder_input_tokens, self.token_a, self.token_b)

  def loss_fn(self, params, batch: Batch, dropout_rng: Optional[Array]):
    logits = self.logits(params, batch["encoder_input_tokens"], batch["decoder_input_tokens"],
                         batch["decoder_target_tokens"], dropout_rng)  # [B, Lt, V]
    loss, metrics = models.Seq2SeqModel.loss_fn(_PrecomputedLogits(self, logits), params, batch,
                                                dropout_rng)
    first_target = batch["decoder_target_tokens"][:, 0]
    is_a = first_target == self.token_a
    ranked = (is_a | (first_target == self.token_b)).astype(jnp.float32)
    first = logits[:, 0, :].astype(jnp.float32)
    logit_a = first[:, self.token_a] - first[:, self.token_b]  # [B]
    correct = jnp.where(is_a, logit_a > 0, logit_a < 0).astype(jnp.float32)
    metrics = dict(metrics)
    metrics["pairwise_accuracy"] = losses.masked_mean(correct, ranked)
    metrics["mean_p_a"] = losses.masked_mean(jax.nn.sigmoid(logit_a), ranked)
    return loss, metrics


# ------------------------------------------------------------------------------------------
# Pointwise Bradley–Terry reward model r(x, y)
# ------------------------------------------------------------------------------------------
def pack_prompt_response(prompt_tokens: Array, response_tokens: Array, separator: Sequence[int],
                         eos_id: int = 1) -> Array:
  """`x [SEP] y` token rows, left-aligned, inside jit.

  Args:
    prompt_tokens: `[B, Li]` int prompt tokens (0-padded; a trailing EOS is dropped).
    response_tokens: `[B, Lt]` int response tokens (0-padded; EOS kept).
    separator: the S separator token ids.
    eos_id: the EOS id removed from the end of the prompt.

  Returns:
    `[B, Li + S + Lt]` int32: prompt, separator, response, then zeros.
  """
  prompt_tokens = prompt_tokens.astype(jnp.int32)
  response_tokens = response_tokens.astype(jnp.int32)
  b, li = prompt_tokens.shape
  lt = response_tokens.shape[1]
  sep = jnp.asarray(np.asarray(separator, np.int32))
  s = int(sep.shape[0])
  n_real = jnp.sum(prompt_tokens > 0, axis=1)  # [B]
  last = jnp.take_along_axis(prompt_tokens, jnp.maximum(n_real - 1, 0)[:, None], axis=1)[:, 0]
  n_p = n_real - ((n_real > 0) & (last == eos_id)).astype(jnp.int32)  # [B] without EOS
  # Source row: [prompt (Li) | separator (S) | response (Lt)] -> gather positions.
  source = jnp.concatenate([prompt_tokens, jnp.broadcast_to(sep, (b, s)), response_tokens], 1)
  j = jnp.arange(li + s + lt)[None, :]  # [1, L]
  n = n_p[:, None]
  idx = jnp.where(j < n, j, jnp.where(j < n + s, li + (j - n), li + s + (j - n - s)))
  idx = jnp.clip(idx, 0, li + s + lt - 1)
  packed = jnp.take_along_axis(source, idx, axis=1)
  return jnp.where(j < n + s + lt, packed, 0)


class BTRewardNetwork(nn.Module):
  """T5 encoder over packed `x [SEP] y` + pooling + scalar head: `[B, L]` tokens -> `[B]`.

  Param names follow `network.Transformer` (`token_embedder`, `encoder/...`: the same layout as a
  T5 checkpoint's subtrees); the head is `reward_head/kernel` `[E, 1]` with
  logical axes ("embed", "scalar") (sharded like every embed dimension, replicated on the 1).
  """
  config: network.T5Config
  pooling: str = "mean"

  def setup(self):
    cfg = self.config
    self.token_embedder = network.Embed(cfg.vocab_size, cfg.emb_dim, cfg.activation_dtype,
                                        cfg.weight_dtype)
    self.encoder = network.Encoder(cfg, self.token_embedder)
    self.reward_head = network.DenseGeneral(
        features=(1,), kernel_axes=("embed", "scalar"), dtype=jnp.float32,
        param_dtype=cfg.weight_dtype, name="reward_head")

  def __call__(self, tokens: Array, enable_dropout: bool = False) -> Array:
    # [B, L] -> [B, L, E]
    h = self.encoder(tokens.astype(jnp.int32), enable_dropout).astype(jnp.float32)
    mask = (tokens > 0).astype(jnp.float32)  # [B, L]
    if self.pooling == "mean":
      pooled = jnp.sum(h * mask[..., None], 1) / jnp.maximum(jnp.sum(mask, 1, keepdims=True), 1.0)
    elif self.pooling == "first":
      pooled = h[:, 0]
    elif self.pooling == "last":
      last = jnp.maximum(jnp.sum(mask, 1).astype(jnp.int32) - 1, 0)
      pooled = jnp.take_along_axis(h, last[:, None, None], axis=1)[:, 0]
    else:
      raise ValueError(f"pooling={self.pooling!r}: use one of {POOLINGS}")
    # [B, E] -> [B, 1] -> [B]
    return self.reward_head(pooled)[:, 0]


def _bt_rewards(module: BTRewardNetwork, params, prompt_tokens: Array, response_tokens: Array,
                separator: Tuple[int, ...], eos_id: int,
                dropout_rng: Optional[Array] = None) -> Array:
  packed = pack_prompt_response(prompt_tokens, response_tokens, separator, eos_id)
  rngs = {"dropout": dropout_rng} if dropout_rng is not None else None
  return module.apply({"params": params}, packed, enable_dropout=dropout_rng is not None,
                      rngs=rngs)


_bt_rewards_jit = jax.jit(_bt_rewards, static_argnames=("module", "separator", "eos_id"))


class BradleyTerryRewardModel(models.BaseModel):
  """Pointwise reward r(x, y) trained on preference pairs (Bradley–Terry).

  Loss per pair `−log σ(r_w − r_l − margin)` (`losses.bradley_terry`) plus the optional reward
  centering `center_weight·(r_w + r_l)²` (keeps rewards near 0; the BT loss alone is invariant to a
  shift). Pairs whose two responses are the same tokens carry no signal and get weight 0.
  Metrics: `loss`, `bt_loss`, `accuracy` (r_w > r_l; ties 1/2), `margin` (mean r_w − r_l),
  `mean_reward`, and TRL's `rewards/chosen`, `rewards/rejected`.
  """

  def __init__(self, config: network.T5Config, pooling: str = "mean", margin: float = 0.0,
               center_weight: float = 0.0, separator: str = BT_SEPARATOR,
               vocabulary: Any = None):
    if not isinstance(config, network.T5Config):
      raise TypeError(f"config must be a network.T5Config, got {type(config).__name__}")
    if pooling not in POOLINGS:
      raise ValueError(f"pooling={pooling!r}: use one of {POOLINGS}")
    if not (math.isfinite(margin) and math.isfinite(center_weight) and center_weight >= 0):
      raise ValueError(f"margin={margin!r} must be finite and center_weight={center_weight!r} "
                       "finite and >= 0")
    self.config = config
    self.pooling = pooling
    self.margin = float(margin)
    self.center_weight = float(center_weight)
    self.separator = separator
    self.vocabulary = vocabulary if vocabulary is not None else _default_vocab()
    self.separator_ids = tuple(int(t) for t in self.vocabulary.encode(separator))
    self.eos_id = int(self.vocabulary.eos_id)
    self.module = BTRewardNetwork(config, pooling)
    from rso_jax import feature_converters  # pylint: disable=g-import-not-at-top
    self.feature_converter = feature_converters.PairwiseFeatureConverter()

  def input_shapes(self, batch_size, feature_lengths):
    return models.pair_input_shapes(batch_size, feature_lengths)

  def get_initial_variables(self, rng: Array, input_shapes: Mapping[str, Tuple[int, ...]]):
    b, li = input_shapes["encoder_input_tokens"]
    lt = input_shapes["chosen_decoder_target_tokens"][1]
    tokens = jnp.ones((b, li + len(self.separator_ids) + lt), jnp.int32)
    return self.module.init(rng, tokens, enable_dropout=False)

  def rewards(self, params, prompt_tokens: Array, response_tokens: Array,
              dropout_rng: Optional[Array] = None) -> Array:
    """r(x, y) `[B]` from prompt tokens `[B, Li]` and response tokens `[B, Lt]` (EOS included)."""
    return _bt_rewards(self.module, params, prompt_tokens, response_tokens, self.separator_ids,
                       self.eos_id, dropout_rng)

  def pair_rewards(self, params, batch: Batch, dropout_rng: Optional[Array] = None
                   ) -> Tuple[Array, Array]:
    """(r_w, r_l), each `[B]`: chosen and rejected as 2B rows of one encoder call."""
    b = batch["encoder_input_tokens"].shape[0]
    prompts = jnp.concatenate([batch["encoder_input_tokens"]] * 2, 0)
    responses = jnp.concatenate([batch["chosen_decoder_target_tokens"],
                                 batch["rejected_decoder_target_tokens"]], 0)
    r = self.rewards(params, prompts, responses, dropout_rng)
    return r[:b], r[b:]

  def loss_fn(self, params, batch: Batch, dropout_rng: Optional[Array]):
    rw, rl = self.pair_rewards(params, batch, dropout_rng)
    return bt_loss_and_metrics(rw, rl, self._pair_weights(batch), margin=self.margin,
                               center_weight=self.center_weight)

  @staticmethod
  def _pair_weights(batch: Batch) -> Array:
    flags = losses.pair_token_flags(
        batch["chosen_decoder_target_tokens"], batch["chosen_loss_weights"],
        batch["rejected_decoder_target_tokens"], batch["rejected_loss_weights"])
    return jnp.where(flags["identical"], 0.0, 1.0)

  def score_batch(self, params, batch: Batch) -> Array:
    """`[B, 2]` rewards of (chosen, rejected)."""
    return jnp.stack(self.pair_rewards(params, batch), axis=-1)


def bt_loss_and_metrics(chosen_rewards: Array, rejected_rewards: Array,
                        weights: Optional[Array] = None, *, margin: float = 0.0,
                        center_weight: float = 0.0) -> Tuple[Array, Dict[str, Array]]:
  """Bradley–Terry reward loss and metrics over pairs with weight > 0.

  loss = mean_w[−log σ(r_w − r_l − margin) + center_weight·(r_w + r_l)²].
  """
  rw = jnp.asarray(chosen_rewards, jnp.float32)
  rl = jnp.asarray(rejected_rewards, jnp.float32)
  w = jnp.ones_like(rw) if weights is None else jnp.asarray(weights, jnp.float32)
  bt = losses.bradley_terry(rw - margin, rl)
  center = jnp.square(rw + rl)
  loss = losses.masked_mean(bt + center_weight * center, w)
  diff = rw - rl
  acc = jnp.where(diff > 0, 1.0, jnp.where(diff == 0, 0.5, 0.0))
  metrics = {
      "loss": loss,
      "bt_loss": losses.masked_mean(bt, w),
      "center_loss": losses.masked_mean(center, w),
      "accuracy": losses.masked_mean(acc, w),
      "margin": losses.masked_mean(diff, w),
      "mean_reward": losses.masked_mean(0.5 * (rw + rl), w),
      "rewards/chosen": losses.masked_mean(rw, w),
      "rewards/rejected": losses.masked_mean(rl, w),
      "pairs/skipped_identical": jnp.sum(w <= 0).astype(jnp.float32),
  }
  return loss, metrics


# ------------------------------------------------------------------------------------------
# Scorers: text in, rewards out
# ------------------------------------------------------------------------------------------
class RewardScorer(Protocol):
  """What the sampling stage needs from a reward model."""

  def score(self, prompts: Sequence[str], responses: Sequence[Sequence[str]],
            baselines: Optional[Sequence[str]] = None) -> np.ndarray:
    """Pointwise rewards `[B, N]` float32 for `B` prompts and `N` responses each."""

  def prefer(self, prompts: Sequence[str], y1: Sequence[str], y2: Sequence[str]) -> np.ndarray:
    """P(y1 ≻ y2 | x) `[B]` float32."""


def _check_texts(name: str, texts: Sequence[Any]) -> List[str]:
  out = []
  for i, t in enumerate(texts):
    if isinstance(t, (bytes, np.bytes_)):
      t = bytes(t).decode("utf-8")
    if not isinstance(t, str):
      raise ValueError(f"{name}[{i}] must be a string, got {type(t).__name__}: {t!r}")
    out.append(t)
  return out


def _check_candidates(prompts: Sequence[str], responses: Sequence[Sequence[str]]
                      ) -> Tuple[List[str], List[List[str]]]:
  prompts = _check_texts("prompts", prompts)
  if isinstance(responses, np.ndarray):
    responses = responses.tolist()
  if len(responses) != len(prompts):
    raise ValueError(f"{len(prompts)} prompts but {len(responses)} rows of responses")
  rows = [_check_texts(f"responses[{b}]", row) for b, row in enumerate(responses)]
  if rows:
    n = len(rows[0])
    for b, row in enumerate(rows):
      if len(row) != n or n == 0:
        raise ValueError(f"responses must be [B, N] with N >= 1: row 0 has {n}, row {b} has "
                         f"{len(row)}")
  return prompts, rows


def tokenize_texts(vocab: Any, texts: Sequence[str], length: int, what: str,
                   truncate: str = "count", counts: Optional[Dict[str, int]] = None
                   ) -> np.ndarray:
  """`[M, length]` int32: tokens + EOS, 0-padded.

  Over-long texts (tokens + EOS > length) raise with `truncate="error"`; with "count" they are
  trimmed keeping the EOS, counted in `counts` ({"sequences", "truncated"}) and logged on the
  1st, 2nd, 4th, ... occurrence (the tasks' policy).
  """
  counts = counts if counts is not None else {"sequences": 0, "truncated": 0}
  out = np.zeros((len(texts), length), np.int32)
  eos = int(vocab.eos_id)
  for i, t in enumerate(texts):
    ids = list(vocab.encode(t))
    counts["sequences"] += 1
    if len(ids) + 1 > length:
      if truncate == "error":
        raise ValueError(f"{what} is {len(ids) + 1} tokens with EOS, over its feature length "
                         f"{length} (truncate='error'): {t[:200]!r}")
      counts["truncated"] += 1
      n = counts["truncated"]
      if n & (n - 1) == 0:
        logging.warning("reward scorer: %d of %d sequences so far exceed their feature length "
                        "and were truncated (this one: %s, %d > %d tokens)", n,
                        counts["sequences"], what, len(ids) + 1, length)
      ids = ids[:length - 1]
    out[i, :len(ids)] = ids
    out[i, len(ids)] = eos
  return out


class _ScorerBase:
  """Tokenization with a truncation policy, and fixed-shape padded batches (optionally sharded)."""

  def __init__(self, params: Any, vocab: Any, batch_size: int, mesh: Any, truncate: str,
               abstract_boxed: Any):
    if truncate not in TRUNCATE_POLICIES:
      raise ValueError(f"truncate={truncate!r}: use one of {TRUNCATE_POLICIES}")
    if int(batch_size) < 1:
      raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
    self.vocab = vocab if vocab is not None else _default_vocab()
    self.truncate = truncate
    self.mesh = mesh
    self.truncation = {"sequences": 0, "truncated": 0}
    bs = int(batch_size)
    if mesh is not None:
      dp = partitioning.data_parallel_size(mesh)
      bs = int(math.ceil(bs / dp)) * dp
      shardings = partitioning.logical_shardings(abstract_boxed, mesh)
      with self._ctx():
        self.params = jax.device_put(params, shardings)
    else:
      self.params = jax.device_put(params)
    self.batch_size = bs

  def _ctx(self):
    from rso_jax import trainer  # pylint: disable=g-import-not-at-top
    return trainer._MeshRules(self.mesh, partitioning.LOGICAL_RULES)  # pylint: disable=protected-access

  def tokenize(self, texts: Sequence[str], length: int, what: str) -> np.ndarray:
    return tokenize_texts(self.vocab, texts, length, what, self.truncate, self.truncation)

  def _run(self, fn, arrays: Sequence[np.ndarray]) -> np.ndarray:
    """`fn(params, *[batch_size, ...]) -> [batch_size]` over all M rows; pads the last batch."""
    m = arrays[0].shape[0]
    out = np.zeros((m,), np.float32)
    bs = self.batch_size
    for start in range(0, m, bs):
      chunk = [a[start:start + bs] for a in arrays]
      n = chunk[0].shape[0]
      if n < bs:
        chunk = [np.concatenate([c, np.zeros((bs - n,) + c.shape[1:], c.dtype)]) for c in chunk]
      if self.mesh is not None:
        with self._ctx():
          sharded = partitioning.shard_batch({str(i): c for i, c in enumerate(chunk)}, self.mesh)
          res = fn(self.params, *[sharded[str(i)] for i in range(len(chunk))])
      else:
        res = fn(self.params, *chunk)
      out[start:start + n] = np.asarray(jax.device_get(res), np.float32)[:n]
    return out


class PairwiseScorer(_ScorerBase):
  """Scores with the pairwise reward-ranking model ρ (see the module docstring).

  `symmetrize=True` averages both presentation orders, `logit ρ = (ℓ(x,y1,y2) − ℓ(x,y2,y1)) / 2`
  (removes position bias; twice the compute). The paper uses one order (False).
  """

  def __init__(self, config: network.T5Config, params: Any, vocab: Any = None,
               feature_lengths: Optional[Mapping[str, int]] = None, batch_size: int = 128, *,
               mesh: Any = None, truncate: str = "count", response_label: str = RESPONSE_LABEL,
               symmetrize: bool = False):
    self.model = PairwiseRankingModel(config, vocabulary=vocab if vocab is not None
                                      else _default_vocab())
    lengths = dict(PAIRWISE_FEATURE_LENGTHS, **(feature_lengths or {}))
    self.input_length = int(lengths["inputs"])
    self.response_label = response_label
    self.symmetrize = bool(symmetrize)
    abstract = None
    if mesh is not None:
      shapes = self.model.input_shapes(1, {"inputs": self.input_length, "targets": 1})
      abstract = jax.eval_shape(lambda k: self.model.get_initial_variables(k, shapes),
                                jax.random.key(0))["params"]
    super().__init__(params, self.model.vocabulary, batch_size, mesh, truncate, abstract)
    m = self.model
    self._fn = lambda p, t: _ab_logit_jit(m.module, p, t, token_a=m.token_a, token_b=m.token_b)

  def preference_logits(self, prompts: Sequence[str], y_a: Sequence[str], y_b: Sequence[str]
                        ) -> np.ndarray:
    """logit ρ(x, y_a, y_b) `[M]` (one order; identical inputs computed once)."""
    texts = [ranking_input_text(x, a, b, self.response_label)
             for x, a, b in zip(prompts, y_a, y_b)]
    unique = sorted(set(texts))
    where = {t: i for i, t in enumerate(unique)}
    tokens = self.tokenize(unique, self.input_length, "ranking input")
    logits = self._run(self._fn, [tokens])
    return logits[[where[t] for t in texts]] if texts else np.zeros((0,), np.float32)

  def _logits(self, prompts, y1, y2) -> np.ndarray:
    fwd = self.preference_logits(prompts, y1, y2)
    if not self.symmetrize:
      return fwd
    return 0.5 * (fwd - self.preference_logits(prompts, y2, y1))

  def prefer(self, prompts: Sequence[str], y1: Sequence[str], y2: Sequence[str]) -> np.ndarray:
    """ρ(x, y1, y2) = P(y1 ≻ y2) `[B]` float32 (y1 shown as A)."""
    prompts, y1, y2 = (_check_texts("prompts", prompts), _check_texts("y1", y1),
                       _check_texts("y2", y2))
    if not len(prompts) == len(y1) == len(y2):
      raise ValueError(f"prefer needs equal lengths: {len(prompts)} prompts, {len(y1)} y1, "
                       f"{len(y2)} y2")
    return (1.0 / (1.0 + np.exp(-self._logits(prompts, y1, y2)))).astype(np.float32)

  def score(self, prompts: Sequence[str], responses: Sequence[Sequence[str]],
            baselines: Optional[Sequence[str]] = None) -> np.ndarray:
    """Paper Eq. 7: `r(x, y) = logit ρ(x, y, y_b)` `[B, N]`; 0 exactly where y == y_b.

    Args:
      prompts: `[B]` prompt texts.
      responses: `[B][N]` candidate texts.
      baselines: `[B]` baseline texts y_b; default `responses[b][0]` (the first candidate: a
        random SFT decode, as the paper's y_b).
    """
    prompts, rows = _check_candidates(prompts, responses)
    if baselines is None:
      base = [row[0] for row in rows]
    else:
      base = _check_texts("baselines", baselines)
      if len(base) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(base)} baselines")
    out = np.zeros((len(rows), len(rows[0]) if rows else 0), np.float32)
    todo = [(b, j) for b, row in enumerate(rows) for j, y in enumerate(row) if y != base[b]]
    if todo:
      logits = self._logits([prompts[b] for b, _ in todo], [rows[b][j] for b, j in todo],
                            [base[b] for b, _ in todo])
      for (b, j), v in zip(todo, logits):
        out[b, j] = v
    return out


class BTScorer(_ScorerBase):
  """Scores with a Bradley–Terry reward model: `score` = r(x, y) (minus r(x, y_b) if baselines
  are given: a per-prompt shift, which rejection sampling ignores); `prefer` = σ(r1 − r2)."""

  def __init__(self, config: network.T5Config, params: Any, vocab: Any = None,
               feature_lengths: Optional[Mapping[str, int]] = None, batch_size: int = 128, *,
               mesh: Any = None, truncate: str = "count", pooling: str = "mean",
               separator: str = BT_SEPARATOR):
    self.model = BradleyTerryRewardModel(config, pooling=pooling, separator=separator,
                                         vocabulary=vocab if vocab is not None
                                         else _default_vocab())
    lengths = dict(BT_FEATURE_LENGTHS, **(feature_lengths or {}))
    self.input_length, self.target_length = int(lengths["inputs"]), int(lengths["targets"])
    abstract = None
    if mesh is not None:
      shapes = self.model.input_shapes(1, {"inputs": self.input_length,
                                           "targets": self.target_length})
      abstract = jax.eval_shape(lambda k: self.model.get_initial_variables(k, shapes),
                                jax.random.key(0))["params"]
    super().__init__(params, self.model.vocabulary, batch_size, mesh, truncate, abstract)
    m = self.model
    self._fn = lambda p, x, y: _bt_rewards_jit(m.module, p, x, y, separator=m.separator_ids,
                                               eos_id=m.eos_id)

  def rewards(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
    """r(x, y) `[M]` for aligned prompts and responses (identical pairs computed once)."""
    keys = list(zip(prompts, responses))
    unique = sorted(set(keys))
    where = {k: i for i, k in enumerate(unique)}
    if not unique:
      return np.zeros((0,), np.float32)
    p_tok = self.tokenize([k[0] for k in unique], self.input_length, "prompt")
    y_tok = self.tokenize([k[1] for k in unique], self.target_length, "response")
    r = self._run(self._fn, [p_tok, y_tok])
    return r[[where[k] for k in keys]]

  def prefer(self, prompts: Sequence[str], y1: Sequence[str], y2: Sequence[str]) -> np.ndarray:
    prompts, y1, y2 = (_check_texts("prompts", prompts), _check_texts("y1", y1),
                       _check_texts("y2", y2))
    if not len(prompts) == len(y1) == len(y2):
      raise ValueError(f"prefer needs equal lengths: {len(prompts)} prompts, {len(y1)} y1, "
                       f"{len(y2)} y2")
    r = self.rewards(prompts + prompts, y1 + y2)
    d = r[:len(prompts)] - r[len(prompts):]
    return (1.0 / (1.0 + np.exp(-d))).astype(np.float32)

  def score(self, prompts: Sequence[str], responses: Sequence[Sequence[str]],
            baselines: Optional[Sequence[str]] = None) -> np.ndarray:
    prompts, rows = _check_candidates(prompts, responses)
    n = len(rows[0]) if rows else 0
    flat_p = [p for p in prompts for _ in range(n)]
    flat_y = [y for row in rows for y in row]
    if baselines is not None:
      base = _check_texts("baselines", baselines)
      if len(base) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(base)} baselines")
      flat_p, flat_y = flat_p + prompts, flat_y + base
    r = self.rewards(flat_p, flat_y)
    out = r[:len(prompts) * n].reshape(len(prompts), n)
    if baselines is not None:
      b = r[len(prompts) * n:]
      out = np.where(np.asarray(flat_y[:len(prompts) * n], object).reshape(out.shape)
                     == np.asarray(base, object)[:, None], 0.0, out - b[:, None])
    return out.astype(np.float32)


SCORER_KINDS = ("pairwise", "bt")


def _gin_binding(path: str, name: str) -> Optional[str]:
  """A string binding `...BradleyTerryRewardModel.<name> = '...'` from the run's config.gin."""
  try:
    from rso_jax import checkpoints  # pylint: disable=g-import-not-at-top
    resolved = checkpoints.resolve_params_path(path)
  except FileNotFoundError:
    resolved = path
  for d in (path, resolved, os.path.dirname(os.path.dirname(resolved))):
    f = os.path.join(d, "config.gin")
    if os.path.exists(f):
      with open(f) as fh:
        m = re.search(rf"BradleyTerryRewardModel\.{name}\s*=\s*['\"]([^'\"]*)['\"]", fh.read())
      return m.group(1) if m else None
  return None


def load_scorer(path: str, kind: str = "pairwise", *, vocab: Any = None,
                feature_lengths: Optional[Mapping[str, int]] = None, batch_size: int = 128,
                mesh: Any = None, **kwargs) -> Union[PairwiseScorer, BTScorer]:
  """A scorer from a params checkpoint (a run dir, a step dir or a params dir).

  `kind`: "pairwise" (ρ, gin/reward.gin) or "bt" (gin/reward_bt.gin). The network config comes
  from `t5_config.json`; a BT model's `pooling`/`separator` from kwargs, else the run's
  `config.gin`, else the defaults. Extra kwargs go to the scorer class.
  """
  from rso_jax import checkpoints  # pylint: disable=g-import-not-at-top
  if kind not in SCORER_KINDS:
    raise ValueError(f"reward model kind={kind!r}: use one of {SCORER_KINDS}")
  config = checkpoints.read_config(path)
  if config is None:
    raise FileNotFoundError(f"no {checkpoints.CONFIG_FILE} beside the reward checkpoint {path!r}")
  params = checkpoints.load_params(path)
  is_bt = "reward_head" in params
  if is_bt != (kind == "bt"):
    raise ValueError(f"reward checkpoint {path!r} holds a "
                     f"{'Bradley-Terry' if is_bt else 'pairwise ranking (seq2seq)'} model but "
                     f"kind={kind!r}; pass kind={'bt' if is_bt else 'pairwise'!r}")
  if kind == "pairwise":
    return PairwiseScorer(config, params, vocab, feature_lengths, batch_size, mesh=mesh, **kwargs)
  for name in ("pooling", "separator"):
    if name not in kwargs:
      value = _gin_binding(path, name)
      if value is not None:
        kwargs[name] = value
  return BTScorer(config, params, vocab, feature_lengths, batch_size, mesh=mesh, **kwargs)


# ------------------------------------------------------------------------------------------
# Evaluation on the embedded task
# ------------------------------------------------------------------------------------------
def _ranks(x: np.ndarray) -> np.ndarray:
  """Average ranks (ties share their mean rank), as Spearman needs."""
  x = np.asarray(x, np.float64)
  order = np.argsort(x, kind="mergesort")
  ranks = np.empty(len(x), np.float64)
  sx = x[order]
  i = 0
  while i < len(x):
    j = i
    while j + 1 < len(x) and sx[j + 1] == sx[i]:
      j += 1
    ranks[order[i:j + 1]] = 0.5 * (i + j)
    i = j + 1
  return ranks


def pearson(x: np.ndarray, y: np.ndarray) -> float:
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  if len(x) < 2 or np.std(x) == 0 or np.std(y) == 0:
    return float("nan")
  return float(np.corrcoef(x, y)[0, 1])


def spearman(x: np.ndarray, y: np.ndarray) -> float:
  return pearson(_ranks(x), _ranks(y))


def _correlations(rewards: np.ndarray, golden: np.ndarray, prefix: str = "") -> Dict[str, float]:
  """Correlations of rewards `[P, n]` with r* `[P, n]`; column 0 is each prompt's baseline."""
  rewards, golden = np.asarray(rewards, np.float64), np.asarray(golden, np.float64)
  rel_r, rel_g = rewards - rewards[:, :1], golden - golden[:, :1]
  out = {
      "pearson_r_star": pearson(rewards[:, 1:].ravel(), golden[:, 1:].ravel()),
      "spearman_r_star": spearman(rewards[:, 1:].ravel(), golden[:, 1:].ravel()),
      "pearson_relative": pearson(rel_r[:, 1:].ravel(), rel_g[:, 1:].ravel()),
      "spearman_relative": spearman(rel_r[:, 1:].ravel(), rel_g[:, 1:].ravel()),
  }
  per = [spearman(r, g) for r, g in zip(rewards, golden)]
  per = [v for v in per if np.isfinite(v)]
  out["within_prompt_spearman"] = float(np.mean(per)) if per else float("nan")
  a, b = rel_g[:, 1:].ravel(), rel_r[:, 1:].ravel()
  denom = float(np.sum((a - a.mean()) ** 2))
  out["reward_slope"] = float(np.dot(a - a.mean(), b - b.mean()) / denom) if denom else float("nan")
  return {prefix + k: v for k, v in out.items()}


def sample_policy_responses(policy_checkpoint: str, prompts: Sequence[str], num_samples: int,
                            *, seed: int = 0, temperature: float = 0.7, top_k: Optional[int] = 40,
                            input_length: int = 32, max_decode_length: int = 32,
                            batch_prompts: int = 32) -> List[List[str]]:
  """`[P][num_samples]` texts sampled from a seq2seq policy checkpoint (paper: T = 0.7, top-k 40)."""
  from rso_jax import checkpoints  # pylint: disable=g-import-not-at-top
  from rso_jax import decoding  # pylint: disable=g-import-not-at-top
  config, params = checkpoints.load_model(policy_checkpoint)
  module = network.Transformer(config)
  vocab = _default_vocab()
  tokens = tokenize_texts(vocab, list(prompts), input_length, "prompt")
  key = jax.random.key(seed)
  out: List[List[str]] = []
  for start in range(0, len(prompts), batch_prompts):
    chunk = tokens[start:start + batch_prompts]
    n = chunk.shape[0]
    if n < batch_prompts:
      chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch_prompts - n, 0)])
    res = decoding.sample(module, params, jnp.asarray(chunk), jax.random.fold_in(key, start),
                          num_decodes=num_samples, max_decode_length=max_decode_length,
                          temperature=temperature, top_k=top_k)
    toks = np.asarray(jax.device_get(res.tokens))[:n]  # [n, N, L]
    for row in toks:
      texts = []
      for ids in row.tolist():
        if decoding.EOS_ID in ids:
          ids = ids[:ids.index(decoding.EOS_ID)]
        texts.append(vocab.decode([t for t in ids if t > 0]))
      out.append(texts)
  return out


def evaluate_reward_model(path: str, kind: str, split: str = "validation", *,
                          scorer: Optional[RewardScorer] = None, env_config: Any = None,
                          batch_size: int = 256, policy_checkpoint: Optional[str] = None,
                          num_policy_samples: int = 8, seed: int = 0) -> Dict[str, float]:
  """Held-out quality of a reward model on the embedded synthetic environment.

  Pairs: the `D_hf` pairs of `split`; each is shown in both orders, (chosen, rejected) and
  (rejected, chosen). Candidates for the pointwise reward: per prompt of `split`, its SFT
  demonstration (the baseline y_b, reward 0) and the 2·pairs_per_prompt behaviour responses of its
  `D_hf` pairs. With `policy_checkpoint` (an SFT policy), also `num_policy_samples` samples per
  prompt (T = 0.7, top-k 40; the first is the baseline, as in the paper), keys `sft_samples/...`.

  Returns floats:
    accuracy_golden: P(y_hi ≻ y_lo) > 0.5 on pairs with unequal r*, mean over both orders.
    accuracy_golden_symmetrized: the same with logit ρ averaged over the two orders.
    accuracy_labels: agreement with the D_hf labels (all pairs, both orders).
    label_agreement_ceiling: agreement of the D_hf labels themselves with r* (unequal pairs);
      the most that `accuracy_labels` can reach on those pairs. (Against r* a model may exceed
      it: the rater's noise is not in r*.)
    position_bias: mean P(A) over both orders − 0.5 (0 for BT by construction).
    pearson_r_star / spearman_r_star: pointwise reward vs r*(x, y), pooled over the non-baseline
      candidates.
    pearson_relative / spearman_relative: reward − reward(y_b) vs r*(x, y) − r*(x, y_b), pooled
      (the shift-free quantity the rejection sampler reads).
    within_prompt_spearman: mean over prompts of the Spearman correlation across its candidates.
    reward_slope: least-squares slope of the relative reward on the relative r* (an ideal ρ of
      the simulated rater has slope 1/τ = 1/0.15 ≈ 6.7).
  """
  from rso_jax.tasks import synthetic  # pylint: disable=g-import-not-at-top
  scorer = scorer if scorer is not None else load_scorer(path, kind, batch_size=batch_size)
  data = synthetic.build_environment(env_config or synthetic.EnvConfig())
  pairs = data.dhf[split]
  x = [p.prompt for p in pairs]
  yc, yr = [p.chosen for p in pairs], [p.rejected for p in pairs]
  rc = np.array([p.chosen_reward for p in pairs])
  rr = np.array([p.rejected_reward for p in pairs])
  p_cr = np.asarray(scorer.prefer(x, yc, yr), np.float64)  # chosen shown first (A)
  p_rc = np.asarray(scorer.prefer(x, yr, yc), np.float64)  # rejected shown first
  untied = ~np.isclose(rc, rr)
  c_better = rc > rr
  acc_1 = (p_cr > 0.5) == c_better
  acc_2 = (p_rc < 0.5) == c_better
  logit = lambda p: np.log(np.clip(p, 1e-12, 1)) - np.log(np.clip(1 - p, 1e-12, 1))
  sym = 0.5 * (logit(p_cr) - logit(p_rc))
  out = {
      "pairs": float(len(pairs)),
      "pairs_untied": float(untied.sum()),
      "accuracy_golden": float(np.mean(np.concatenate([acc_1[untied], acc_2[untied]]))),
      "accuracy_golden_symmetrized": float(np.mean(((sym > 0) == c_better)[untied])),
      "accuracy_labels": float(np.mean(np.concatenate([p_cr > 0.5, p_rc < 0.5]))),
      "label_agreement_ceiling": float(np.mean(c_better[untied])),
      "position_bias": float(np.mean(np.concatenate([p_cr, p_rc])) - 0.5),
  }

  prompts = list(data.prompts[split])
  by_prompt: Dict[str, List[str]] = {p: [] for p in prompts}
  for p in pairs:
    by_prompt[p.prompt].extend([p.chosen, p.rejected])
  cands = [[demo] + by_prompt[p] for p, demo in zip(prompts, data.sft[split])]
  n = min(len(c) for c in cands)
  cands = [c[:n] for c in cands]
  rewards = scorer.score(prompts, cands)  # [P, n]; pairwise: y_b = the SFT demo (column 0)
  out.update(_correlations(rewards, synthetic.golden_rewards(prompts, cands)))
  if policy_checkpoint:
    samples = sample_policy_responses(policy_checkpoint, prompts, num_policy_samples, seed=seed)
    rewards = scorer.score(prompts, samples)
    golden = synthetic.golden_rewards(prompts, samples)
    out.update(_correlations(rewards, golden, prefix="sft_samples/"))
    out["sft_samples/golden_mean"] = float(np.mean(golden))
  return out


def main(argv: Optional[Sequence[str]] = None) -> None:
  import argparse  # pylint: disable=g-import-not-at-top
  import json  # pylint: disable=g-import-not-at-top
  parser = argparse.ArgumentParser(description="Evaluate a reward model on the embedded task.")
  parser.add_argument("path")
  parser.add_argument("--kind", default="pairwise", choices=SCORER_KINDS)
  parser.add_argument("--split", default="validation")
  parser.add_argument("--policy", default=None, help="SFT checkpoint: also score its samples")
  args = parser.parse_args(argv)
  print(json.dumps(evaluate_reward_model(args.path, args.kind, args.split,
                                         policy_checkpoint=args.policy), indent=2))


if __name__ == "__main__":
  main()
