"""rso_jax's models under upstream T5X: `python -m t5x.train --gin_file=gin/t5x/rso_hinge.gin`.

This is the one module that imports `t5x` (gin files under `gin/t5x/` import it; nothing else in
rso_jax does). Install T5X with `launch/install_t5x.sh` (or `../shared/t5x/install.sh` offline).

  EncoderDecoderModel    `t5x.models.EncoderDecoderModel` (SFT) that also takes rso_jax's network
                         (`Transformer` below): params boxed with logical axes become T5X's
                         `params_axes`, and decoding uses `rso_jax.decoding` for that network.
  PreferenceModel        the policy on preference pairs (`PairwiseFeatureConverter` batches):
                         sigmoid-norm / hinge-norm / hinge / IPO through `models.PairObjective`,
                         the same code as rso_jax's `PolicyModel`, with the cached
                         `ref_chosen_logps` / `ref_rejected_logps` of the sampling stage's pair
                         task; TRL-named metrics (`rewards/accuracies`, `logps/chosen`, ...).
  BradleyTerryRewardModel  rso_jax's pointwise reward model r(x, y) as a `t5x.models.BaseModel`.
                         (The pairwise ρ is a plain text-to-text model: `EncoderDecoderModel` on
                         a ranking task.)
  Transformer            rso_jax's `network.Transformer` with T5X's call signature.

Checkpoints: `summarize_config` (bound as `train.summarize_config_fn`) writes rso_jax's manifest
into MODEL_DIR, so rso_jax's inference layer, sampling stage, evaluation and export open what
`t5x.train` writes (`checkpoints.load` reads T5X's `checkpoint_<step>/state` layout, and splits
the joined attention kernels of T5X's own network). The reverse: `python -m
rso_jax.checkpoints to-t5x CKPT DIR` writes any rso_jax checkpoint (e.g. the main job's π_sft)
as `DIR/checkpoint_0`, which `INITIAL_CHECKPOINT_PATH` takes (`params_from_checkpoint`: every
param from it, a fresh optimizer state).

T5X on a CPU puts every device on its `model` axis: the network's heads, MLP width and
vocabulary must divide by the device count there.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Tuple

import flax
from flax import traverse_util
import flax.linen as nn
from flax.linen import partitioning as flax_partitioning
import jax
import jax.numpy as jnp
import seqio
from clu import metrics as clu_metrics
from t5x import metrics as t5x_metrics
from t5x import models as t5x_models
from t5x.examples.t5 import network as t5x_network

from rso_jax import checkpoints
from rso_jax import datasets
from rso_jax import decoding
from rso_jax import feature_converters
from rso_jax import losses
from rso_jax import models
from rso_jax import network
from rso_jax import reward_models

Array = jax.Array
Batch = Mapping[str, Array]

# Pair-loss metrics that are counts (summed over microbatches and steps), not batch means.
_COUNT_METRICS = ("pairs/skipped_degenerate", "loss/nonfinite_pairs")


# ----------------------------------------------------------------------------------- network


class Transformer(network.Transformer):
  """rso_jax's network with the keyword arguments `t5x.models.EncoderDecoderModel` passes.

  Params, names and logits are `network.Transformer`'s; batches must be unpacked (segment ids
  and positions None). Decoding goes through `rso_jax.decoding` (the models below), not T5X's
  cache layout.
  """

  def __call__(self, encoder_input_tokens: Array, decoder_input_tokens: Array,
               decoder_target_tokens: Optional[Array] = None,
               encoder_segment_ids: Optional[Array] = None,
               decoder_segment_ids: Optional[Array] = None,
               encoder_positions: Optional[Array] = None,
               decoder_positions: Optional[Array] = None, *, enable_dropout: bool = True,
               decode: bool = False, max_decode_length: Optional[int] = None,
               prefill_cross_cache: bool = False) -> Array:
    packed = {"encoder_segment_ids": encoder_segment_ids,
              "decoder_segment_ids": decoder_segment_ids,
              "encoder_positions": encoder_positions, "decoder_positions": decoder_positions}
    given = sorted(k for k, v in packed.items() if v is not None)
    if given:
      raise ValueError(f"rso_jax's network reads unpacked batches; got {given}: set "
                       "utils.DatasetConfig.pack = False")
    return super().__call__(encoder_input_tokens, decoder_input_tokens, decoder_target_tokens,
                            enable_dropout=enable_dropout, decode=decode,
                            max_decode_length=max_decode_length,
                            prefill_cross_cache=prefill_cross_cache)


def t5x_network_config(config: network.T5Config) -> t5x_network.T5Config:
  """The same T5 v1.1 sizes as T5X's `t5x.examples.t5.network.T5Config`.

  T5X's network fixes 32 relative-attention buckets, max distance 128 and RMSNorm ε = 1e-6;
  a config with other values has no T5X equivalent and is refused.
  """
  fixed = {"relative_attention_num_buckets": 32, "relative_attention_max_distance": 128,
           "layer_norm_epsilon": 1e-6}
  for name, value in fixed.items():
    if getattr(config, name) != value:
      raise ValueError(f"T5X's network fixes {name}={value}; the config has "
                       f"{getattr(config, name)!r}")
  if config.remat:
    raise ValueError("T5Config.remat=True has no equivalent in T5X's network config")
  return t5x_network.T5Config(
      vocab_size=config.vocab_size, dtype=config.dtype, emb_dim=config.emb_dim,
      num_heads=config.num_heads, num_encoder_layers=config.num_encoder_layers,
      num_decoder_layers=config.num_decoder_layers, head_dim=config.head_dim,
      mlp_dim=config.mlp_dim, mlp_activations=tuple(config.mlp_activations),
      dropout_rate=config.dropout_rate, logits_via_embedding=config.logits_via_embedding)


def rso_network_config(module: nn.Module) -> network.T5Config:
  """The `network.T5Config` of rso_jax's network or of T5X's `t5x.examples.t5.network`."""
  if isinstance(module, network.Transformer):
    return module.config
  if isinstance(module, t5x_network.Transformer):
    c = module.config
    if c.dtype not in ("float32", "bfloat16", jnp.float32, jnp.bfloat16):
      raise ValueError(f"T5X network dtype {c.dtype!r} has no rso_jax equivalent")
    return network.T5Config(
        vocab_size=c.vocab_size, emb_dim=c.emb_dim, num_heads=c.num_heads, head_dim=c.head_dim,
        mlp_dim=c.mlp_dim, num_encoder_layers=c.num_encoder_layers,
        num_decoder_layers=c.num_decoder_layers, mlp_activations=tuple(c.mlp_activations),
        dropout_rate=c.dropout_rate, logits_via_embedding=c.logits_via_embedding,
        dtype=jnp.dtype(c.dtype).name)
  raise TypeError(f"no rso_jax network config for a {type(module).__name__} module")


def _shares_encoder(module: nn.Module) -> bool:
  """rso_jax's network encodes a prompt once for all of its decoder rows."""
  return isinstance(module, network.Transformer)


def t5x_variables(variables: Mapping[str, Any]) -> flax.core.FrozenDict:
  """Linen variables with `nn.LogicallyPartitioned` params -> T5X's {params, params_axes}.

  T5X's train state reads logical axis names from a `params_axes` collection
  (`<name>_axes: AxisMetadata(names)`); rso_jax's network boxes each param with its names.
  Variables that already hold `params_axes` (T5X's network) come back unchanged.
  """
  variables = flax.core.unfreeze(variables)
  if "params_axes" in variables:
    return flax.core.freeze(variables)
  is_box = lambda x: isinstance(x, nn.LogicallyPartitioned)
  flat = traverse_util.flatten_dict(variables["params"], is_leaf=lambda _, x: is_box(x))
  unboxed = {}
  axes = {}
  for path, leaf in flat.items():
    if not is_box(leaf):
      raise ValueError(f"param {'/'.join(path)} has no logical axis names")
    unboxed[path] = leaf.value
    axes[path[:-1] + (path[-1] + "_axes",)] = flax_partitioning.AxisMetadata(
        names=tuple(leaf.names))
  variables["params"] = traverse_util.unflatten_dict(unboxed)
  variables["params_axes"] = traverse_util.unflatten_dict(axes)
  return flax.core.freeze(variables)


# ------------------------------------------------------------------------------------ models


def _decode_with_rso(module: nn.Module, params: Any, batch: Batch, rng: Optional[Array],
                     num_decodes: int, return_all_decodes: bool, decode_kwargs: Mapping[str, Any]
                     ) -> Tuple[Array, Mapping[str, Array]]:
  """Greedy (rng None) or temperature sampling with rso_jax's KV cache: T5X's output shapes."""
  enc = batch["encoder_input_tokens"]
  length = batch["decoder_input_tokens"].shape[1]
  if rng is None:
    if num_decodes != 1:
      raise ValueError(f"greedy decoding gives 1 decode per prompt; num_decodes={num_decodes}")
    out = decoding.greedy(module, params, enc, max_decode_length=length)
  else:
    out = decoding.sample(module, params, enc, rng, num_decodes=num_decodes,
                          max_decode_length=length, **dict(decode_kwargs))
  # T5X sorts decodes by score, best last: [B, N, L], [B, N]
  order = jnp.argsort(out.model_logps, axis=-1)
  tokens = jnp.take_along_axis(out.tokens, order[..., None], axis=1)
  scores = jnp.take_along_axis(out.model_logps, order, axis=1)
  if return_all_decodes:
    return tokens, {"scores": scores}
  return tokens[:, -1], {"scores": scores[:, -1]}


class EncoderDecoderModel(t5x_models.EncoderDecoderModel):
  """`t5x.models.EncoderDecoderModel` that also runs rso_jax's network (`Transformer`)."""

  manifest_kind = "seq2seq"

  @property
  def config(self) -> network.T5Config:
    """The network config (rso_jax's or T5X's network), as the manifest records it."""
    return rso_network_config(self.module)

  def manifest_settings(self) -> dict:
    return {}

  def get_initial_variables(self, rng, input_shapes, input_types=None):
    return t5x_variables(super().get_initial_variables(rng, input_shapes, input_types))

  def predict_batch_with_aux(self, params, batch: Batch, rng: Optional[Array] = None,
                             decoder_params: Optional[Mapping[str, Any]] = None,
                             return_all_decodes: Optional[bool] = None,
                             num_decodes: Optional[int] = None, **kwargs):
    if not _shares_encoder(self.module):
      return super().predict_batch_with_aux(
          params, batch, rng, decoder_params=decoder_params,
          return_all_decodes=return_all_decodes, num_decodes=num_decodes, **kwargs)
    defaults = self._default_decoder_params
    n = num_decodes if num_decodes is not None else defaults.num_decodes
    all_decodes = (return_all_decodes if return_all_decodes is not None
                   else defaults.return_all_decodes)
    return _decode_with_rso(self.module, params, batch, rng, n, all_decodes,
                            dict(decoder_params or {}))


class PreferenceModel(EncoderDecoderModel):
  """The RSO / DPO / SLiC policy on preference pairs, under T5X.

  Batches are `feature_converters.PairwiseFeatureConverter`'s (prompt, chosen, rejected and the
  cached log π_sft of both). Chosen and rejected run as 2 decoder rows per prompt: with
  rso_jax's network against one encoder pass, with T5X's network as 2 encoder rows. The loss
  and metrics are `models.PairObjective`'s, the code rso_jax's `PolicyModel` runs.

  Args (beyond `t5x.models.EncoderDecoderModel`'s):
    loss: "hinge_norm" (RSO), "sigmoid_norm" (DPO), "hinge" (Eq. 9), "slic_hinge", "ipo".
    gamma: γ of Eq. 8/10 (the implicit rewards' scale in the metrics too).
    loss_kwargs: other hyper-parameters of the loss (e.g. {"delta": 1.0} for slic_hinge).
    sft_weight: SLiC's λ on −log π_θ(y_w|x).
    policy_dropout: run the policy with dropout in the loss (default off, as in rso_jax's
      `PolicyModel`: the cached log π_sft has none, so Δ at step 0 would be dropout noise).
  """

  FEATURE_CONVERTER_CLS = feature_converters.PairwiseFeatureConverter
  manifest_kind = "policy"

  def __init__(self, module: nn.Module, input_vocabulary: seqio.Vocabulary,
               output_vocabulary: seqio.Vocabulary, optimizer_def: Any, *,
               loss: str = "hinge_norm", gamma: float = 0.05,
               loss_kwargs: Optional[Mapping[str, Any]] = None, sft_weight: float = 0.0,
               policy_dropout: bool = False, **kwargs):
    kwargs.setdefault("feature_converter_cls", feature_converters.PairwiseFeatureConverter)
    super().__init__(module, input_vocabulary, output_vocabulary, optimizer_def, **kwargs)
    self.policy_dropout = models.policy_dropout_enabled(module.config, policy_dropout)
    self.objective = models.PairObjective(losses.get_loss_fn(loss), float(gamma),
                                          dict(loss_kwargs or {}), float(sft_weight))

  def get_initial_variables(self, rng, input_shapes, input_types=None):
    shapes = {"encoder_input_tokens": input_shapes["encoder_input_tokens"],
              "decoder_input_tokens": input_shapes["chosen_decoder_input_tokens"]}
    types = None
    if input_types:
      types = {"encoder_input_tokens": input_types.get("encoder_input_tokens", jnp.int32),
               "decoder_input_tokens": input_types.get("chosen_decoder_input_tokens",
                                                       jnp.int32)}
    return super().get_initial_variables(rng, shapes, types)

  def pair_logps(self, params, batch: Batch, dropout_rng: Optional[Array] = None
                 ) -> Tuple[Array, Array]:
    """Sequence log-probs `([B], [B])` of chosen and rejected."""
    b = batch["encoder_input_tokens"].shape[0]
    dec_in, dec_tgt, weights = models.pair_decoder_rows(batch)
    enc = batch["encoder_input_tokens"]
    if not _shares_encoder(self.module):
      enc = jnp.repeat(enc, 2, axis=0)  # [B, Le] -> [2B, Le], rows aligned with the decoder's
    rngs = {"dropout": dropout_rng} if dropout_rng is not None else None
    # [2B, Lt, V]
    logits = self.module.apply({"params": params}, enc, dec_in, dec_tgt,
                               enable_dropout=rngs is not None, rngs=rngs)
    logps = losses.sequence_logps(logits, dec_tgt, weights).reshape(b, 2)
    return logps[:, 0], logps[:, 1]

  def loss_fn(self, params, batch: Batch, dropout_rng: Optional[Array]):
    pc, pr = self.pair_logps(params, batch, dropout_rng if self.policy_dropout else None)
    loss, metrics = self.objective(batch, pc, pr)
    return loss, pair_metrics(metrics, batch["encoder_input_tokens"].shape[0])

  def score_batch(self, params, batch: Batch, return_intermediates: bool = False) -> Array:
    """`[B, 2]` sequence log-probs of (chosen, rejected)."""
    if return_intermediates:
      raise ValueError("PreferenceModel.score_batch has no intermediates")
    return jnp.stack(self.pair_logps(params, batch), axis=-1)

  def predict_batch_with_aux(self, params, batch: Batch, rng: Optional[Array] = None, **kwargs):
    """Responses to the batch's prompts (decode length: the responses' feature length)."""
    if "chosen_decoder_input_tokens" in batch:
      batch = {"encoder_input_tokens": batch["encoder_input_tokens"],
               "decoder_input_tokens": batch["chosen_decoder_input_tokens"]}
    return super().predict_batch_with_aux(params, batch, rng, **kwargs)


def pair_metrics(metrics: Mapping[str, Array], batch_size: int) -> dict:
  """`PairObjective` scalars -> clu metrics that merge exactly over microbatches and steps.

  Means over the pairs that count become `clu.metrics.Average(total=mean·n, count=n)`; the
  counts are sums; `loss` is T5X's per-step average. Adds T5X's timing metrics.
  """
  skipped = metrics["pairs/skipped_degenerate"]
  nonfinite = metrics["loss/nonfinite_pairs"].astype(jnp.float32)
  counted = jnp.float32(batch_size) - skipped - nonfinite
  out = {}
  for name, value in metrics.items():
    value = jnp.asarray(value, jnp.float32)
    if name == "loss":
      out[name] = t5x_metrics.AveragePerStep(total=value)
    elif name in _COUNT_METRICS:
      out[name] = t5x_metrics.Sum.from_model_output(value)
    else:
      out[name] = clu_metrics.Average(total=value * counted, count=counted)
  out["pairs/counted"] = t5x_metrics.Sum.from_model_output(counted)
  out["timing/seqs"] = t5x_metrics.Sum.from_model_output(jnp.float32(batch_size))
  out["timing/seqs_per_second"] = t5x_metrics.TimeRate.from_model_output(
      numerator=jnp.float32(batch_size))
  out["timing/steps_per_second"] = t5x_metrics.StepsPerTime.from_model_output()
  out["timing/seconds"] = t5x_metrics.Time()
  return out


class BradleyTerryRewardModel(t5x_models.BaseModel):
  """rso_jax's pointwise reward model r(x, y) (`reward_models.BradleyTerryRewardModel`) for T5X.

  Trains on the same pair batches as `PreferenceModel`; `score_batch` gives `[B, 2]` rewards of
  (chosen, rejected). Its network is rso_jax's (encoder + scalar head); `config` sizes it.
  """

  FEATURE_CONVERTER_CLS = feature_converters.PairwiseFeatureConverter
  manifest_kind = "bt_rm"

  def __init__(self, config: network.T5Config, vocabulary: seqio.Vocabulary,
               optimizer_def: Any, **bt_kwargs):
    super().__init__(optimizer_def=optimizer_def)
    self.rm = reward_models.BradleyTerryRewardModel(config, vocabulary=vocabulary, **bt_kwargs)
    self.module = self.rm.module
    self.config = config
    self.input_vocabulary = self.output_vocabulary = self.vocabulary = vocabulary

  def manifest_settings(self) -> dict:
    return self.rm.manifest_settings()

  def get_initial_variables(self, rng, input_shapes, input_types=None):
    del input_types
    return t5x_variables(self.rm.get_initial_variables(rng, input_shapes))

  def loss_fn(self, params, batch: Batch, dropout_rng: Optional[Array]):
    loss, metrics = self.rm.loss_fn(params, batch, dropout_rng)
    b = batch["encoder_input_tokens"].shape[0]
    out = {k: clu_metrics.Average.from_model_output(jnp.asarray(v, jnp.float32))
           for k, v in metrics.items() if k != "loss"}
    out["loss"] = t5x_metrics.AveragePerStep(total=loss)
    out["timing/seqs"] = t5x_metrics.Sum.from_model_output(jnp.float32(b))
    out["timing/steps_per_second"] = t5x_metrics.StepsPerTime.from_model_output()
    out["timing/seconds"] = t5x_metrics.Time()
    return loss, out

  def score_batch(self, params, batch: Batch, return_intermediates: bool = False) -> Array:
    if return_intermediates:
      raise ValueError("BradleyTerryRewardModel.score_batch has no intermediates")
    return self.rm.score_batch(params, batch)

  def predict_batch_with_aux(self, params, batch: Batch, rng: Optional[Array] = None):
    del rng
    rewards = self.score_batch(params, batch)
    return rewards, {"rewards": rewards}


# ------------------------------------------------------------------------- tasks and manifest


def params_from_checkpoint(ckpt_state: Mapping[str, Any], state: Mapping[str, Any],
                           is_resuming: bool = False) -> Mapping[str, Any]:
  """T5X state transformation for `INITIAL_CHECKPOINT_PATH`: every param from the checkpoint.

  A params-only checkpoint (`python -m rso_jax.checkpoints to-t5x`) has no optimizer state;
  bound with `RestoreCheckpointConfig.fallback_to_scratch = True`, only that starts fresh. A
  param of the model that the checkpoint lacks is an error naming it, never a fresh init.
  """
  del is_resuming
  want = traverse_util.flatten_dict(dict(state.get("target", {})), sep="/")
  have = traverse_util.flatten_dict(dict(ckpt_state.get("target", {})), sep="/")
  missing = sorted(set(want) - set(have))
  if missing:
    raise ValueError(f"INITIAL_CHECKPOINT_PATH lacks {len(missing)} of the model's "
                     f"{len(want)} params, e.g. {missing[:3]}: is it this network's checkpoint?")
  return ckpt_state


def summarize_config(model_dir: str, summary_writer: Any, step: int, *, model: Any = None,
                     task: Any = None, feature_lengths: Optional[Mapping[str, int]] = None
                     ) -> None:
  """T5X's `summarize_config_fn`: writes rso_jax's manifest into MODEL_DIR, then T5X's summary.

  With the manifest beside T5X's `checkpoint_<step>/` directories, `rso_jax.checkpoints.load`,
  `rso_jax.inference.load`, the evaluation and the export open the run like one of rso_jax's.
  """
  import dataclasses  # pylint: disable=g-import-not-at-top
  from t5x import gin_utils  # pylint: disable=g-import-not-at-top
  if model is None:
    raise ValueError("summarize_config.model is unset: bind it to %MODEL in the gin file")
  if jax.process_index() == 0:
    manifest = datasets.model_manifest(model, task, feature_lengths)
    checkpoints.write_manifest(model_dir, dataclasses.replace(manifest, source="t5x"))
  gin_utils.summarize_gin_config(model_dir, summary_writer, step)
