"""Models over `network.Transformer` with T5X's BaseModel interface.

Every model exposes
  * `get_initial_variables(rng, input_shapes) -> {"params": ...}` (boxed with logical axes),
  * `loss_fn(params, batch, dropout_rng) -> (loss, metrics)` with scalar metrics,
  * `score_batch(params, batch) -> [B]` and `predict_batch(params, batch, rng) -> tokens`,
  * `feature_converter` (a seqio FeatureConverter instance) and `input_shapes(batch, lengths)`.

`Seq2SeqModel` is the SFT objective (token cross-entropy with T5X loss normalization and
optional z-loss). The preference policy and the reward models live beside it.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Tuple, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import seqio

from rso_jax import losses
from rso_jax import network

Array = jax.Array
Batch = Mapping[str, Array]
Metrics = dict

NUM_REAL_TARGET_TOKENS = "NUM_REAL_TARGET_TOKENS"
NUMBER_OF_EXAMPLES = "NUMBER_OF_EXAMPLES"


class BaseModel:
  """Shared plumbing: the network module, init from input shapes, decoding hooks."""

  FEATURE_DTYPES = {"encoder_input_tokens": jnp.int32}

  def __init__(self, config: network.T5Config):
    if not isinstance(config, network.T5Config):
      raise TypeError(f"config must be a network.T5Config, got {type(config).__name__}")
    self.config = config
    self.module = network.Transformer(config)

  # --- shapes -----------------------------------------------------------------------------
  def input_shapes(self, batch_size: int, feature_lengths: Mapping[str, int]) -> dict:
    raise NotImplementedError

  def dummy_batch(self, batch_size: int, feature_lengths: Mapping[str, int]) -> dict:
    return {k: jnp.ones(s, jnp.float32 if k.endswith("logps") else jnp.int32)
            for k, s in self.input_shapes(batch_size, feature_lengths).items()}

  def get_initial_variables(self, rng: Array, input_shapes: Mapping[str, Tuple[int, ...]]):
    """Boxed variables (`nn.LogicallyPartitioned` leaves) from the encoder/decoder shapes."""
    enc = jnp.ones(input_shapes["encoder_input_tokens"], jnp.int32)
    dec_shape = next(v for k, v in input_shapes.items() if k.endswith("decoder_input_tokens"))
    dec = jnp.ones(dec_shape, jnp.int32)
    return self.module.init(rng, enc, dec, dec, enable_dropout=False)

  # --- shared pieces ----------------------------------------------------------------------
  def logits(self, params, encoder_input_tokens, decoder_input_tokens, decoder_target_tokens,
             dropout_rng: Optional[Array] = None) -> Array:
    rngs = {"dropout": dropout_rng} if dropout_rng is not None else None
    return self.module.apply({"params": params}, encoder_input_tokens, decoder_input_tokens,
                             decoder_target_tokens, enable_dropout=dropout_rng is not None,
                             rngs=rngs)


class Seq2SeqModel(BaseModel):
  """Supervised seq2seq (SFT; also the pairwise reward-ranking model's training objective).

  Loss normalization as in T5X: `loss_normalizing_factor` = "NUM_REAL_TARGET_TOKENS" (mean over
  real target tokens, default), "NUMBER_OF_EXAMPLES", a float constant, or None (plain sum).
  """

  def __init__(self, config: network.T5Config,
               loss_normalizing_factor: Union[str, float, None] = NUM_REAL_TARGET_TOKENS,
               z_loss: float = 1e-4, label_smoothing: float = 0.0):
    super().__init__(config)
    if isinstance(loss_normalizing_factor, str) and loss_normalizing_factor not in (
        NUM_REAL_TARGET_TOKENS, NUMBER_OF_EXAMPLES):
      raise ValueError(f"loss_normalizing_factor={loss_normalizing_factor!r}: use "
                       f"{NUM_REAL_TARGET_TOKENS!r}, {NUMBER_OF_EXAMPLES!r}, a number or None")
    self.loss_normalizing_factor = loss_normalizing_factor
    self.z_loss = float(z_loss)
    self.label_smoothing = float(label_smoothing)
    self.feature_converter = seqio.EncDecFeatureConverter(pack=False)

  def input_shapes(self, batch_size, feature_lengths):
    return {"encoder_input_tokens": (batch_size, feature_lengths["inputs"]),
            "decoder_input_tokens": (batch_size, feature_lengths["targets"]),
            "decoder_target_tokens": (batch_size, feature_lengths["targets"]),
            "decoder_loss_weights": (batch_size, feature_lengths["targets"])}

  def loss_fn(self, params, batch: Batch, dropout_rng: Optional[Array]) -> Tuple[Array, Metrics]:
    # [B, Ld, V]
    logits = self.logits(params, batch["encoder_input_tokens"], batch["decoder_input_tokens"],
                         batch["decoder_target_tokens"], dropout_rng)
    targets = batch["decoder_target_tokens"]
    weights = batch.get("decoder_loss_weights", (targets > 0).astype(jnp.float32))
    weights = weights.astype(jnp.float32)
    # [B, Ld] per-token losses (z-loss included), weighted.
    token_loss, token_z = losses.token_cross_entropy(
        logits, targets, weights, z_loss=self.z_loss, label_smoothing=self.label_smoothing)
    num_tokens = jnp.sum(weights)
    total = jnp.sum(token_loss * weights)
    lnf = self.loss_normalizing_factor
    if lnf == NUM_REAL_TARGET_TOKENS:
      denom = jnp.maximum(num_tokens, 1.0)
    elif lnf == NUMBER_OF_EXAMPLES:
      denom = jnp.maximum(jnp.sum(jnp.any(weights > 0, axis=-1)), 1.0)
    elif lnf is None:
      denom = 1.0
    else:
      denom = float(lnf)
    loss = total / denom
    correct = (jnp.argmax(logits, -1) == targets).astype(jnp.float32) * weights
    metrics = {
        "loss": loss,
        "cross_ent_loss": jnp.sum((token_loss - token_z) * weights) / jnp.maximum(num_tokens, 1.0),
        "z_loss": jnp.sum(token_z * weights) / jnp.maximum(num_tokens, 1.0),
        "accuracy": jnp.sum(correct) / jnp.maximum(num_tokens, 1.0),
        "num_tokens": num_tokens,
    }
    return loss, metrics

  def score_batch(self, params, batch: Batch) -> Array:
    """Teacher-forced sequence log-probs `[B]` (sum over real target tokens)."""
    logits = self.logits(params, batch["encoder_input_tokens"], batch["decoder_input_tokens"],
                         batch["decoder_target_tokens"])
    targets = batch["decoder_target_tokens"]
    weights = batch.get("decoder_loss_weights", (targets > 0).astype(jnp.float32))
    return losses.sequence_logps(logits, targets, weights)

  def predict_batch(self, params, batch: Batch, rng: Optional[Array] = None, *,
                    max_decode_length: Optional[int] = None, **decode_kwargs) -> Array:
    """Greedy decode (rng None) or a temperature sample: tokens `[B, L]` (or `[B, N, L]`)."""
    from rso_jax import decoding  # pylint: disable=g-import-not-at-top
    enc = batch["encoder_input_tokens"]
    length = max_decode_length or batch["decoder_target_tokens"].shape[1]
    if rng is None:
      return decoding.greedy(self.module, params, enc, max_decode_length=length).tokens[:, 0]
    out = decoding.sample(self.module, params, enc, rng, max_decode_length=length,
                          **decode_kwargs)
    return out.tokens
