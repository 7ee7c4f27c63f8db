"""Models over a network of either family (`networks.py`) with T5X's BaseModel interface.

Every model exposes
  * `get_initial_variables(rng, input_shapes) -> {"params": ...}` (boxed with logical axes),
  * `loss_fn(params, batch, dropout_rng) -> (loss, metrics)` with scalar metrics,
  * `score_batch(params, batch) -> [B]` and `predict_batch(params, batch, rng) -> tokens`,
  * `feature_converter` (a seqio FeatureConverter instance, built on first use: importing or
    building a model needs no seqio / TensorFlow, so an accelerator host that only scores,
    samples or trains on arrays runs without them) and `input_shapes(batch, lengths)`.

`Seq2SeqModel` is the SFT objective (token cross-entropy with T5X loss normalization and
optional z-loss). The preference policy and the reward models live beside it.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from typing import Any, Mapping, Optional, Tuple, Union

import jax
import jax.numpy as jnp

from rso_jax import checkpoints
from rso_jax import decoding
from rso_jax import feature_converters
from rso_jax import losses
from rso_jax import networks

Array = jax.Array
Batch = Mapping[str, Array]
Metrics = dict

NUM_REAL_TARGET_TOKENS = "NUM_REAL_TARGET_TOKENS"
# Nats per response by which log π_θ may differ from the cached log π_sft at a run's first step
# (float rounding between the sampler's and the trainer's forward passes is ~1e-4).
STEP_ZERO_TOLERANCE = 0.5
NUMBER_OF_EXAMPLES = "NUMBER_OF_EXAMPLES"


class BaseModel:
  """Shared plumbing: the network module, init from input shapes, decoding hooks."""

  FEATURE_DTYPES = {"encoder_input_tokens": jnp.int32}
  # What `checkpoints.Manifest.kind` a checkpoint of this model is (see checkpoints.py).
  manifest_kind = "seq2seq"

  def manifest_settings(self) -> dict:
    """The loss-independent settings a loader needs to rebuild this model (JSON-able)."""
    return {}

  def __init__(self, config: networks.NetworkConfig):
    networks.check_config(config)
    self.config = config
    self.module = networks.build(config)

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

  def __init__(self, config: networks.NetworkConfig,
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

  @functools.cached_property
  def feature_converter(self):
    import seqio  # pylint: disable=g-import-not-at-top  (TensorFlow: on first use only)
    return seqio.EncDecFeatureConverter(pack=False)

  def input_shapes(self, batch_size, feature_lengths):
    return {"encoder_input_tokens": (batch_size, feature_lengths["inputs"]),
            "decoder_input_tokens": (batch_size, feature_lengths["targets"]),
            "decoder_target_tokens": (batch_size, feature_lengths["targets"]),
            "decoder_loss_weights": (batch_size, feature_lengths["targets"])}

  def loss_fn(self, params, batch: Batch, dropout_rng: Optional[Array]) -> Tuple[Array, Metrics]:
    # [B, Ld, V]
    logits = self.logits(params, batch["encoder_input_tokens"], batch["decoder_input_tokens"],
                         batch["decoder_target_tokens"], dropout_rng)
    return self.loss_from_logits(logits, batch)

  def loss_from_logits(self, logits: Array, batch: Batch) -> Tuple[Array, Metrics]:
    """The token cross-entropy loss and metrics of `[B, Ld, V]` logits against the batch."""
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
    enc = batch["encoder_input_tokens"]
    length = max_decode_length or batch["decoder_target_tokens"].shape[1]
    if rng is None:
      return decoding.greedy(self.module, params, enc, max_decode_length=length).tokens[:, 0]
    out = decoding.sample(self.module, params, enc, rng, max_decode_length=length,
                          **decode_kwargs)
    return out.tokens


def pair_input_shapes(batch_size: int, feature_lengths: Mapping[str, int]) -> dict:
  """Shapes of a `PairwiseFeatureConverter` batch (prompt + chosen + rejected)."""
  li, lt = feature_lengths["inputs"], feature_lengths["targets"]
  shapes = {"encoder_input_tokens": (batch_size, li)}
  for r in ("chosen", "rejected"):
    for s in ("decoder_input_tokens", "decoder_target_tokens", "loss_weights"):
      shapes[f"{r}_{s}"] = (batch_size, lt)
  return shapes


def pair_decoder_rows(batch: Batch) -> Tuple[Array, Array, Array]:
  """Chosen and rejected as 2 decoder rows per prompt, prompt-major.

  `[B, Lt]` chosen_* / rejected_* -> decoder inputs, targets (int) and loss weights (float32),
  each `[2B, Lt]` (row 2b is prompt b's chosen, row 2b+1 its rejected).
  """
  b = batch["encoder_input_tokens"].shape[0]
  # [B, 2, Lt] -> [2B, Lt]
  stack = lambda s: jnp.stack([batch[f"chosen_{s}"], batch[f"rejected_{s}"]], 1).reshape(
      2 * b, -1)
  return (stack("decoder_input_tokens"), stack("decoder_target_tokens"),
          stack("loss_weights").astype(jnp.float32))


def policy_dropout_enabled(config: networks.NetworkConfig, policy_dropout: bool) -> bool:
  """Whether a preference loss runs the policy with dropout; warns when it will (the
  reference log-probs never have dropout, so Δ is not 0 at π_θ = π_sft)."""
  if not isinstance(policy_dropout, bool):
    raise ValueError(f"policy_dropout={policy_dropout!r} must be True or False")
  if policy_dropout and config.dropout_rate > 0:
    logging.warning(
        "policy_dropout=True: log π_θ is computed with dropout %g, the reference log π_sft "
        "without it; the margins at step 0 are dropout noise, not 0", config.dropout_rate)
  return policy_dropout


@dataclasses.dataclass(frozen=True)
class PairObjective:
  """The preference loss of a pair batch from its sequence log-probs (any network, any trainer).

  `__call__(batch, pc, pr, rc=None, rr=None) -> (loss, metrics)`: `pc`, `pr` `[B]` are the
  policy's log π_θ of chosen and rejected; the reference log-probs are the batch's cached
  `ref_chosen_logps` / `ref_rejected_logps` when present, else `rc`, `rr`. Degenerate pairs
  (identical responses, an empty one) get weight 0 and are counted in
  `pairs/skipped_degenerate`; the metrics are `losses.pair_loss_and_metrics`'s (TRL names),
  means over the pairs that count: B − `pairs/skipped_degenerate` − `loss/nonfinite_pairs`.
  """
  loss: losses.PairLoss
  gamma: float = 0.05
  loss_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  sft_weight: float = 0.0

  def __call__(self, batch: Batch, pc: Array, pr: Array, rc: Optional[Array] = None,
               rr: Optional[Array] = None) -> Tuple[Array, Metrics]:
    if self.loss.uses_reference:
      if "ref_chosen_logps" in batch:
        rc = batch["ref_chosen_logps"].reshape(-1)
        rr = batch["ref_rejected_logps"].reshape(-1)
      elif rc is None or rr is None:
        raise ValueError(f"loss {self.loss.name!r} needs reference log-probs: the batch has no "
                         "ref_chosen_logps/ref_rejected_logps and none were given")
    flags = losses.pair_token_flags(batch["chosen_decoder_target_tokens"],
                                    batch["chosen_loss_weights"],
                                    batch["rejected_decoder_target_tokens"],
                                    batch["rejected_loss_weights"])
    degenerate = flags["identical"] | flags["empty_chosen"] | flags["empty_rejected"]
    weights = jnp.where(degenerate, 0.0, 1.0)
    hparams = dict(self.loss_kwargs)
    if self.loss.name in ("sigmoid_norm", "hinge_norm", "hinge"):
      hparams.setdefault("gamma", self.gamma)
    elif self.loss.name == "slic_hinge":
      hparams.setdefault("gamma", self.gamma)
      if self.sft_weight:
        hparams["sft_weight"] = self.sft_weight
        # SLiC Eq. 1's −λ·log π_θ(y_ref|x): pair tasks carry no separate y_ref, so the chosen
        # response stands in for it (as TRL's `rpo_alpha` NLL term does).
        hparams["sft_logps"] = pc
    loss, per_example, metrics = losses.pair_loss_and_metrics(
        self.loss, pc, pr, rc, rr, weights=weights, metrics_gamma=self.gamma, **hparams)
    del per_example
    metrics = dict(metrics)
    metrics["pairs/skipped_degenerate"] = jnp.sum(degenerate).astype(jnp.float32)
    return loss, metrics


class PolicyModel(BaseModel):
  """Preference-trained policy: chosen and rejected scored in one forward pass.

  The batch holds one prompt and two responses per example (`PairwiseFeatureConverter`).
  Both responses run as 2 decoder rows per prompt against ONE encoder pass (the network shares
  the encoder output and cross-attention keys/values across candidates).

  Reference log-probs `log π_sft(y|x)`: read from the batch (`ref_chosen_logps`,
  `ref_rejected_logps`, stored by the sampling stage) when present; otherwise computed from
  `reference_params`, which the trainer passes into the jitted step as a frozen, sharded
  argument (never part of the optimizer state).

  Degenerate pairs (identical chosen and rejected, an empty response) and non-finite
  log-probs are skipped (weight 0) and counted in `pairs/skipped_degenerate` and
  `loss/nonfinite_pairs`, never a silent NaN.

  Dropout: off for the policy's log-probs by default (`policy_dropout=False`, as TRL does for
  preference training). The reference log π_sft is always computed without dropout, so with
  dropout on (a converted T5 carries `dropout_rate` 0.1) Δ at π_θ = π_sft is dropout noise, not
  0, and that noise drives the loss. `policy_dropout=True` keeps it and says so at start-up.
  """

  def __init__(self, config: networks.NetworkConfig, loss: str = "hinge_norm", gamma: float = 0.05,
               loss_kwargs: Optional[Mapping[str, Any]] = None,
               use_cached_reference: bool = True, reference_params: Any = None,
               reference_checkpoint: Optional[str] = None, sft_weight: float = 0.0,
               policy_dropout: bool = False):
    super().__init__(config)
    self.policy_dropout = policy_dropout_enabled(config, policy_dropout)
    self.loss = losses.get_loss_fn(loss)
    self.gamma = float(gamma)
    self.loss_kwargs = dict(loss_kwargs or {})
    self.use_cached_reference = bool(use_cached_reference)
    self._reference_params = reference_params
    self.reference_checkpoint = reference_checkpoint
    self.sft_weight = float(sft_weight)
    self.objective = PairObjective(self.loss, self.gamma, self.loss_kwargs, self.sft_weight)
    if (self.loss.uses_reference and not use_cached_reference and reference_params is None
        and reference_checkpoint is None):
      raise ValueError(f"loss {self.loss.name!r} needs reference log-probs: set "
                       "use_cached_reference=True (pair tasks from the sampling stage) or "
                       "give reference_params / reference_checkpoint")

  @functools.cached_property
  def feature_converter(self):
    return feature_converters.PairwiseFeatureConverter()

  manifest_kind = "policy"

  @property
  def reference_params(self) -> Any:
    """Frozen π_sft params when log-probs are recomputed (loaded lazily from a checkpoint,
    so a pipeline can build that checkpoint first); None with cached reference log-probs."""
    if self.use_cached_reference or not self.loss.uses_reference:
      return self._reference_params
    if self._reference_params is None and self.reference_checkpoint:
      self._reference_params = checkpoints.load_params(self.reference_checkpoint)
    return self._reference_params

  def input_shapes(self, batch_size, feature_lengths):
    shapes = pair_input_shapes(batch_size, feature_lengths)
    if self.use_cached_reference and self.loss.uses_reference:
      shapes["ref_chosen_logps"] = (batch_size,)
      shapes["ref_rejected_logps"] = (batch_size,)
    return shapes

  def pair_logps(self, params, batch: Batch, dropout_rng: Optional[Array] = None
                 ) -> Tuple[Array, Array]:
    """Sequence log-probs `([B], [B])` of chosen and rejected under `params`."""
    b = batch["encoder_input_tokens"].shape[0]
    dec_in, dec_tgt, weights = pair_decoder_rows(batch)
    logits = self.logits(params, batch["encoder_input_tokens"], dec_in, dec_tgt, dropout_rng)
    logps = losses.sequence_logps(logits, dec_tgt, weights).reshape(b, 2)
    return logps[:, 0], logps[:, 1]

  def loss_fn(self, params, batch: Batch, dropout_rng: Optional[Array],
              reference_params: Any = None) -> Tuple[Array, Metrics]:
    pc, pr = self.pair_logps(params, batch, dropout_rng if self.policy_dropout else None)
    rc = rr = None
    if self.loss.uses_reference and "ref_chosen_logps" not in batch:
      ref = reference_params if reference_params is not None else self.reference_params
      if ref is None:
        raise ValueError("batch has no ref_chosen_logps/ref_rejected_logps and the model has "
                         "no reference_params")
      rc, rr = jax.lax.stop_gradient(self.pair_logps(ref, batch))
    return self.objective(batch, pc, pr, rc, rr)

  def score_batch(self, params, batch: Batch) -> Array:
    """`[B, 2]` sequence log-probs of (chosen, rejected)."""
    return jnp.stack(self.pair_logps(params, batch), axis=-1)

  def first_step_note(self, metrics: Mapping[str, Any],
                      tolerance: float = STEP_ZERO_TOLERANCE) -> Optional[str]:
    """A warning line when a run's first step has log π_θ ≠ log π_sft, else None.

    At step 0 the policy is its initial checkpoint, which should be the π_sft whose log-probs
    the pairs carry: `rewards/chosen` and `rewards/rejected` (γ·mean(log π_θ − log π_sft) over
    the batch) are then 0 up to float rounding. More than `tolerance` nats per response means
    the pairs were scored by another model than INITIAL_CHECKPOINT_PATH, or dropout is on.
    """
    if not self.loss.uses_reference:
      return None
    drift = {side: float(metrics[f"rewards/{side}"]) / self.gamma
             for side in ("chosen", "rejected")}
    if max(abs(v) for v in drift.values()) <= tolerance:
      return None
    cause = ("policy_dropout=True" if self.policy_dropout and self.config.dropout_rate > 0 else
             "the pairs' log π_sft come from another model than the initial checkpoint")
    return (f"warning: step 1 starts away from the reference: log π_θ − log π_sft averages "
            f"{drift['chosen']:+.3f} nats (chosen), {drift['rejected']:+.3f} (rejected) on the "
            f"first batch, not 0 (likely {cause}); the preference loss then trains on that "
            "offset")
