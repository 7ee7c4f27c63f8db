"""Reward models: the paper's pairwise reward-ranking model ρ and a pointwise Bradley–Terry model.

Training (through `train.train`, T5X BaseModel interface):
  * `PairwiseRankingModel` (the paper's choice, gin/stages/reward.gin): a T5 reads
    `[CONTEXT] x [RESPONSE A] y1 [RESPONSE B] y2` and emits "A" or "B" (seq2seq cross-entropy on
    `synthetic_rm_pairwise`, A/B flipped at random by the task). ρ(x, y1, y2) = P(y1 ≻ y2) =
    σ(logit_A − logit_B): the softmax over the two first-step logits of the "A" and "B" tokens.
    Two optional aids let the tiny model learn this from scratch in a few hundred steps (pairs in
    both orders, adjacent in the batch; a sharper initial relative-position table); see the
    class docstring and gin/stages/reward.gin.
  * `BradleyTerryRewardModel` (gin/stages/reward_bt.gin): the T5 encoder over
    `x [RESPONSE] y` (see "Input packing"), masked mean-pooled (or first / last token), and a
    scalar head; loss `−log σ(r_w − r_l − margin) + c·(r_w + r_l)²` on pair tasks
    (`PairwiseFeatureConverter`). `architecture="encoder_decoder"`: x through the encoder, y
    teacher-forced through the decoder, the head on the decoder's pooled final states (a
    prompt's N responses share its one encoder pass; a policy checkpoint initializes it).

Using a trained reward model (rewards `[B, N]` for the rejection sampler, Eq. 7's
`logit ρ(x, y, y_b)`, preferences ρ) is `inference.py`'s job; its quality on the embedded task is
measured by `reward_quality.evaluate_reward_model`.

Input packing of the BT model: the pair task gives the prompt as encoder tokens `[B, Li]` and
each response as decoder targets `[B, Lt]`. The model concatenates, per row and inside jit,
prompt tokens without their EOS, the separator tokens (" [RESPONSE] "), and the response tokens
with EOS, into one `[B, Li + S + Lt]` sequence with all padding at the end, and runs the
bidirectional encoder on it: every response token attends to every prompt token (the encoder-
decoder variant sees the prompt only through cross-attention). Chosen and rejected run as
2B rows of one encoder call.

"""

from __future__ import annotations

import math
from typing import Any, Mapping, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from rso_jax import decoder_network
from rso_jax import decoding
from rso_jax import feature_converters
from rso_jax import losses
from rso_jax import models
from rso_jax import network
from rso_jax import networks
from rso_jax.tasks import vocab as vocab_lib
from rso_jax.tasks.text_formats import BT_SEPARATOR, RESPONSE_LABEL

Array = jax.Array
Batch = Mapping[str, Array]

POOLINGS = ("mean", "first", "last")
# "encoder": the T5 encoder over packed `x [SEP] y`. "encoder_decoder": the prompt through the
# encoder once, each response teacher-forced through the decoder, the head on its final states.
# "decoder": a decoder-only network reads the prompt once (its prefix) and each response after
# it, the head on the response's final states.
ARCHITECTURES = ("encoder", "encoder_decoder", "decoder")


def _default_vocab():
  return vocab_lib.get_vocabulary()


def _single_token(vocab, text: str) -> int:
  ids = list(vocab.encode(text))
  if len(ids) != 1:
    raise ValueError(f"target {text!r} is {len(ids)} tokens {ids} in {type(vocab).__name__}; "
                     "the ranking model needs a single-token 'A' and 'B'")
  return int(ids[0])


# ------------------------------------------------------------------------------------------
# Pairwise reward-ranking model ρ(x, y1, y2)
# ------------------------------------------------------------------------------------------
def _ab_logit(module: nn.Module, params, encoder_input_tokens: Array, token_a: int,
              token_b: int) -> Array:
  b = encoder_input_tokens.shape[0]
  start = jnp.zeros((b, 1), jnp.int32)  # decoder start token (BOS = 0)
  logits = module.apply({"params": params}, encoder_input_tokens.astype(jnp.int32), start, None,
                        enable_dropout=False)  # [B, 1, V]
  first = logits[:, 0, :].astype(jnp.float32)
  return first[:, token_a] - first[:, token_b]


# Jitted once per (network config, token ids): every loaded copy of one config shares them.
preference_logits_jit = jax.jit(_ab_logit, static_argnames=("module", "token_a", "token_b"))


class PairwiseRankingModel(models.Seq2SeqModel):
  """ρ(x, y1, y2): a text-to-text T5 trained to answer "A" or "B" (paper Sec. 5, reward model).

  Loss: `Seq2SeqModel`'s token cross-entropy on the targets ("A"/"B" + EOS). Extra metrics on
  the first target position, over examples whose target starts with "A" or "B":
  `pairwise_accuracy` (the two-way softmax puts > 0.5 on the right letter) and `mean_p_a`
  (mean P(A); with balanced A/B targets, > 0.5 means a bias toward position A).

  Training aids for small models trained from scratch (both off by default; gin/stages/reward.gin turns
  them on):
    both_orders: feed every pair in both presentation orders, adjacent in the batch
      (`feature_converters.BothOrdersRankingConverter`; BATCH_SIZE then counts rows = 2 × pairs). The task's
      random flip alone gives the same data in expectation, but pairing the orders cancels the
      order-blind gradient noise.
    relpos_init_scale: multiplies the encoder's initial relative-position bias table, so the
      encoder starts with sharper position preferences and finds which tag ("[RESPONSE A]" or
      "[RESPONSE B]") precedes a token sooner. Only the initialization changes. T5 only: a
      decoder-only network has rotary positions, no table, and ignores it.
  """

  def __init__(self, config: networks.NetworkConfig, vocabulary: Any = None, both_orders: bool = False,
               relpos_init_scale: float = 1.0, response_label: str = RESPONSE_LABEL, **kwargs):
    super().__init__(config, **kwargs)
    self.vocabulary = vocabulary if vocabulary is not None else _default_vocab()
    self.token_a = _single_token(self.vocabulary, "A")
    self.token_b = _single_token(self.vocabulary, "B")
    if not (math.isfinite(relpos_init_scale) and relpos_init_scale > 0):
      raise ValueError(f"relpos_init_scale must be a finite number > 0, got {relpos_init_scale!r}")
    # A decoder-only network's rotary positions have no table to scale: the aid is T5's.
    self.relpos_init_scale = 1.0 if networks.is_decoder_only(config) else float(relpos_init_scale)
    self.both_orders = bool(both_orders)
    self.response_label = response_label
    if self.both_orders:
      self.feature_converter = feature_converters.BothOrdersRankingConverter(
          self.vocabulary, response_label)

  manifest_kind = "pairwise_rm"

  def manifest_settings(self) -> dict:
    return {"response_label": self.response_label}

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
    loss, metrics = self.loss_from_logits(logits, batch)
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


def _pool(h: Array, mask: Array, pooling: str) -> Array:
  """`[R, L, E]` states, `[R, L]` 0/1 mask -> `[R, E]`: masked mean, position 0, or the last
  masked-in position."""
  if pooling == "mean":
    return jnp.sum(h * mask[..., None], 1) / jnp.maximum(jnp.sum(mask, 1, keepdims=True), 1.0)
  if pooling == "first":
    return h[:, 0]
  if pooling == "last":
    last = jnp.maximum(jnp.sum(mask, 1).astype(jnp.int32) - 1, 0)
    return jnp.take_along_axis(h, last[:, None, None], axis=1)[:, 0]
  raise ValueError(f"pooling={pooling!r}: use one of {POOLINGS}")


class BTRewardNetwork(nn.Module):
  """A T5 + pooling + scalar head, in one of two `architecture`s:

    "encoder": the encoder over packed `x [SEP] y` tokens, `[B, L] -> [B]` (`__call__`);
    "encoder_decoder": the prompt through the encoder once, each of its N responses
      teacher-forced through the decoder (inputs `shift_right(y)`, as a policy reads it), pooled
      over the response's positions ("last" = the state that predicts EOS, which has read all of
      y), `[B, Li]` + `[B * N, Lt] -> [B * N]` (`score_responses`). A policy checkpoint
      initializes every parameter but the head: the reward model starts from π_sft's reading
      of responses, and scores the sampling stage's N candidates against one encoder pass.

  Param names follow `network.Transformer` (`token_embedder`, `encoder/...`, `decoder/...`: the
  same layout as a T5 checkpoint's subtrees; no `decoder/logits_dense`); the head is
  `reward_head/kernel` `[E, 1]` with logical axes ("embed", "scalar") (sharded like every embed
  dimension, replicated on the 1).
  """
  config: network.T5Config
  pooling: str = "mean"
  architecture: str = "encoder"

  def setup(self):
    cfg = self.config
    self.token_embedder = network.Embed(cfg.vocab_size, cfg.emb_dim, cfg.activation_dtype,
                                        cfg.weight_dtype)
    self.encoder = network.Encoder(cfg, self.token_embedder)
    if self.architecture == "encoder_decoder":
      self.decoder = network.Decoder(cfg, self.token_embedder)
    self.reward_head = network.DenseGeneral(
        features=(1,), kernel_axes=("embed", "scalar"), dtype=jnp.float32,
        param_dtype=cfg.weight_dtype, name="reward_head")

  def __call__(self, tokens: Array, enable_dropout: bool = False) -> Array:
    # [B, L] -> [B, L, E]
    h = self.encoder(tokens.astype(jnp.int32), enable_dropout).astype(jnp.float32)
    mask = (tokens > 0).astype(jnp.float32)  # [B, L]
    # [B, L, E] -> [B, E] -> [B, 1] -> [B]
    return self.reward_head(_pool(h, mask, self.pooling))[:, 0]

  def score_responses(self, prompt_tokens: Array, response_tokens: Array,
                      enable_dropout: bool = False) -> Array:
    """"encoder_decoder": `[B, Li]` prompts, `[B * N, Lt]` responses (EOS kept, prompt-major)
    -> `[B * N]` rewards."""
    prompt_tokens = prompt_tokens.astype(jnp.int32)
    targets = response_tokens.astype(jnp.int32)
    # [B, Li] -> [B, Li, E]
    encoded = self.encoder(prompt_tokens, enable_dropout)
    # [B * N, Lt] -> [B * N, Lt, E] (each prompt's N rows attend to its one encoder output)
    h = self.decoder(encoded, prompt_tokens, decoding.shift_right(targets), targets,
                     enable_dropout, False, None, False, hidden_only=True).astype(jnp.float32)
    mask = (targets > 0).astype(jnp.float32)  # [B * N, Lt]
    # [B * N, Lt, E] -> [B * N, E] -> [B * N, 1] -> [B * N]
    return self.reward_head(_pool(h, mask, self.pooling))[:, 0]


class BTDecoderRewardNetwork(decoder_network.DecoderTransformer):
  """A decoder-only network + pooling + scalar head ("decoder" architecture): each prompt's
  prefix computed once, its N responses read after it (inputs `shift_right(y)`, as the policy
  reads them), the final states pooled over the response ("last" = the state that has read all
  of y, the last token's state). Param names are the policy's (`token_embedder`, `layers_i`,
  `decoder_norm`; no `logits_dense`) plus `reward_head/kernel` `[E, 1]`, so a policy
  checkpoint initializes every parameter but the head."""
  pooling: str = "last"
  architecture: str = "decoder"

  def setup(self):
    super().setup()
    self.reward_head = network.DenseGeneral(
        features=(1,), kernel_axes=("embed", "scalar"), dtype=jnp.float32,
        param_dtype=self.config.weight_dtype)

  def score_responses(self, prompt_tokens: Array, response_tokens: Array,
                      enable_dropout: bool = False) -> Array:
    """`[B, Li]` prompts, `[B * N, Lt]` responses (EOS kept, prompt-major) -> `[B * N]`."""
    prompt_tokens = prompt_tokens.astype(jnp.int32)
    targets = response_tokens.astype(jnp.int32)
    # [B, Li] -> per layer keys / values [B, Li, K, D]
    prefix = self.encode(prompt_tokens, enable_dropout)
    # [B * N, Lt] -> [B * N, Lt, E]
    h = self.decode(prefix, prompt_tokens, decoding.shift_right(targets), targets,
                    enable_dropout, hidden_only=True).astype(jnp.float32)
    mask = (targets > 0).astype(jnp.float32)  # [B * N, Lt]
    # [B * N, Lt, E] -> [B * N, E] -> [B * N, 1] -> [B * N]
    return self.reward_head(_pool(h, mask, self.pooling))[:, 0]


def _bt_rewards(module: BTRewardNetwork, params, prompt_tokens: Array, response_tokens: Array,
                separator: Tuple[int, ...], eos_id: int,
                dropout_rng: Optional[Array] = None) -> Array:
  """r(x, y) `[B * N]` from prompts `[B, Li]` and N responses per prompt `[B * N, Lt]`
  (prompt-major; N = 1: aligned rows). The encoder architecture reads each (x, y) packed."""
  rngs = {"dropout": dropout_rng} if dropout_rng is not None else None
  dropout = dropout_rng is not None
  if module.architecture in ("encoder_decoder", "decoder"):
    return module.apply({"params": params}, prompt_tokens, response_tokens,
                        enable_dropout=dropout, rngs=rngs, method="score_responses")
  n = response_tokens.shape[0] // prompt_tokens.shape[0]
  if n * prompt_tokens.shape[0] != response_tokens.shape[0]:
    raise ValueError(f"{response_tokens.shape[0]} response rows for {prompt_tokens.shape[0]} "
                     "prompts: need N per prompt")
  if n > 1:  # [B, Li] -> [B * N, Li]
    prompt_tokens = jnp.repeat(prompt_tokens, n, axis=0)
  packed = pack_prompt_response(prompt_tokens, response_tokens, separator, eos_id)
  return module.apply({"params": params}, packed, enable_dropout=dropout, rngs=rngs)


bt_rewards_jit = jax.jit(_bt_rewards, static_argnames=("module", "separator", "eos_id"))


def response_feature_lengths(lengths: Mapping[str, int]) -> dict:
  """A Bradley–Terry reward model's feature lengths from the policy's `{inputs, targets}`.

  The policy decodes at most `targets` tokens; one that never emits EOS is `targets` tokens
  long, and the reward model reads it with an EOS after it: `targets + 1`. The prompt length
  is the policy's.
  """
  li, lt = int(lengths["inputs"]), int(lengths["targets"])
  if li < 1 or lt < 1:
    raise ValueError(f"feature lengths {dict(lengths)!r} must be positive")
  return {"inputs": li, "targets": lt + 1}


class BradleyTerryRewardModel(models.BaseModel):
  """Pointwise reward r(x, y) trained on preference pairs (Bradley–Terry).

  Loss per pair `−log σ(r_w − r_l − margin)` (`losses.bradley_terry`) plus the optional reward
  centering `center_weight·(r_w + r_l)²` (keeps rewards near 0; the BT loss alone is invariant to a
  shift). Pairs whose two responses are the same tokens carry no signal and get weight 0.
  Metrics: `loss`, `bt_loss`, `accuracy` (r_w > r_l; ties 1/2), `margin` (mean r_w − r_l),
  `mean_reward`, and TRL's `rewards/chosen`, `rewards/rejected`.

  `architecture` (see `BTRewardNetwork`; None = "encoder" for a T5, "decoder" for a
  decoder-only network): "encoder" reads `x [SEP] y` with one encoder;
  "encoder_decoder" encodes x once and reads y with the decoder (chosen and rejected as 2 decoder
  rows of one encoder pass); pooling "first" is refused there (position 0 has read no response).
  """

  def __init__(self, config: networks.NetworkConfig, pooling: str = "mean", margin: float = 0.0,
               center_weight: float = 0.0, separator: str = BT_SEPARATOR,
               vocabulary: Any = None, architecture: Optional[str] = None):
    networks.check_config(config)
    if architecture is None:  # the network's own: a decoder-only network has no encoder
      architecture = "decoder" if networks.is_decoder_only(config) else "encoder"
    if pooling not in POOLINGS:
      raise ValueError(f"pooling={pooling!r}: use one of {POOLINGS}")
    if architecture not in ARCHITECTURES:
      raise ValueError(f"architecture={architecture!r}: use one of {ARCHITECTURES}")
    if (architecture == "decoder") != networks.is_decoder_only(config):
      raise ValueError(f"architecture={architecture!r} with a {networks.family(config)} network: "
                       "a decoder-only network takes architecture='decoder', a T5 'encoder' or "
                       "'encoder_decoder'")
    if architecture != "encoder" and pooling == "first":
      raise ValueError(f"pooling='first' with architecture={architecture!r}: the decoder's first "
                       "position has read none of the response; use 'last' or 'mean'")
    self.architecture = architecture
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
    self.module = (BTDecoderRewardNetwork(config, pooling) if architecture == "decoder"
                   else BTRewardNetwork(config, pooling, architecture))
    self.feature_converter = feature_converters.PairwiseFeatureConverter()

  manifest_kind = "bt_rm"

  def manifest_settings(self) -> dict:
    return {"pooling": self.pooling, "separator": self.separator,
            "architecture": self.architecture}

  def input_shapes(self, batch_size, feature_lengths):
    return models.pair_input_shapes(batch_size, feature_lengths)

  def get_initial_variables(self, rng: Array, input_shapes: Mapping[str, Tuple[int, ...]]):
    b, li = input_shapes["encoder_input_tokens"]
    lt = input_shapes["chosen_decoder_target_tokens"][1]
    if self.architecture != "encoder":
      return self.module.init(rng, jnp.ones((b, li), jnp.int32), jnp.ones((b, lt), jnp.int32),
                              enable_dropout=False, method="score_responses")
    tokens = jnp.ones((b, li + len(self.separator_ids) + lt), jnp.int32)
    return self.module.init(rng, tokens, enable_dropout=False)

  def rewards(self, params, prompt_tokens: Array, response_tokens: Array,
              dropout_rng: Optional[Array] = None) -> Array:
    """r(x, y) `[B * N]` from prompt tokens `[B, Li]` and N response rows per prompt
    `[B * N, Lt]` (EOS included, prompt-major; N = 1: aligned rows)."""
    return _bt_rewards(self.module, params, prompt_tokens, response_tokens, self.separator_ids,
                       self.eos_id, dropout_rng)

  def pair_rewards(self, params, batch: Batch, dropout_rng: Optional[Array] = None
                   ) -> Tuple[Array, Array]:
    """(r_w, r_l), each `[B]`: chosen and rejected as 2B rows of one encoder call (encoder-
    decoder: B encoder rows, 2B decoder rows)."""
    b = batch["encoder_input_tokens"].shape[0]
    if self.architecture != "encoder":
      # [B, 2, Lt] -> [2B, Lt]: each prompt's chosen then rejected
      responses = jnp.stack([batch["chosen_decoder_target_tokens"],
                             batch["rejected_decoder_target_tokens"]], 1).reshape(2 * b, -1)
      r = self.rewards(params, batch["encoder_input_tokens"], responses, dropout_rng)
      r = r.reshape(b, 2)  # [2B] -> [B, 2]
      return r[:, 0], r[:, 1]
    prompts = jnp.concatenate([batch["encoder_input_tokens"]] * 2, 0)
    responses = jnp.concatenate([batch["chosen_decoder_target_tokens"],
                                 batch["rejected_decoder_target_tokens"]], 0)
    r = self.rewards(params, prompts, responses, dropout_rng)
    return r[:b], r[b:]

  def loss_fn(self, params, batch: Batch, dropout_rng: Optional[Array]):
    rw, rl = self.pair_rewards(params, batch, dropout_rng)
    return losses.bt_loss_and_metrics(rw, rl, self._pair_weights(batch), margin=self.margin,
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


