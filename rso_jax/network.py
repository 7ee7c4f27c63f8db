"""T5 v1.1 encoder-decoder in Flax linen, shared by policy, reference scorer, sampler and RM.

T5 v1.1 (and Flan-T5): RMS layer norm without bias, pre-norm residual blocks, bucketed relative
position biases (one table per stack, shared across its layers), gated-GELU MLP, no biases
anywhere, untied output head. Attention logits are not scaled by 1/sqrt(head_dim): as in T5 the
scale lives in the query initializer.

Parameters carry logical axis names (`embed`, `vocab`, `heads`, ...), activations logical
constraints (`activation_batch`, ...); `partitioning.py` maps both onto a mesh. Module names
mirror T5X's checkpoint layout (`encoder/layers_0/attention/query`, ...). The decoder batch may
hold N candidates per prompt (`[B * N, ...]`, prompt-major) sharing the prompt's encoder output
and cross-attention keys/values. A decode step reads a KV cache laid out `[B, H, D, L]` as in
T5X. Backend speed kernels (dense, blocked attention, a fusion break) live in `kernels.py`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from rso_jax import kernels

Array = jax.Array
DType = Any

# Logical axis names of activations (params use the short names, see partitioning.py).
BATCH = "activation_batch"
LENGTH = "activation_length"
EMBED = "activation_embed"
HEADS = "activation_heads"
KV = "activation_kv"
MLP = "activation_mlp"
VOCAB = "activation_vocab"


@dataclasses.dataclass(frozen=True)
class T5Config:
  """Hyper-parameters of a T5 v1.1 network (defaults: the `tiny` size for tests)."""
  vocab_size: int = 384
  emb_dim: int = 128
  num_heads: int = 4
  head_dim: int = 32
  mlp_dim: int = 256
  num_encoder_layers: int = 2
  num_decoder_layers: int = 2
  mlp_activations: Tuple[str, ...] = ("gelu", "linear")
  dropout_rate: float = 0.0
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  layer_norm_epsilon: float = 1e-6
  logits_via_embedding: bool = False  # True = tied embeddings (T5 v1.0); logits scaled by emb^-0.5.
  dtype: str = "float32"  # activations; "bfloat16" on accelerators.
  param_dtype: str = "float32"
  remat: bool = False  # rematerialize each layer in the backward pass (saves activation memory).

  def __post_init__(self):
    for name in ("vocab_size", "emb_dim", "num_heads", "head_dim", "mlp_dim",
                 "num_encoder_layers", "num_decoder_layers",
                 "relative_attention_num_buckets", "relative_attention_max_distance"):
      if int(getattr(self, name)) <= 0:
        raise ValueError(f"T5Config.{name} must be positive, got {getattr(self, name)!r}")
    for act in self.mlp_activations:
      if act not in _ACTIVATIONS:
        raise ValueError(f"T5Config.mlp_activations: unknown activation {act!r}; "
                         f"choose from {sorted(_ACTIVATIONS)}")
    if not 0.0 <= self.dropout_rate < 1.0:
      raise ValueError(f"T5Config.dropout_rate must be in [0, 1), got {self.dropout_rate!r}")
    for name in ("dtype", "param_dtype"):
      try:
        jnp.dtype(getattr(self, name))
      except TypeError as e:
        raise ValueError(f"T5Config.{name}={getattr(self, name)!r} is not a dtype") from e

  @property
  def activation_dtype(self) -> DType:
    return jnp.dtype(self.dtype)

  @property
  def weight_dtype(self) -> DType:
    return jnp.dtype(self.param_dtype)


_ACTIVATIONS: dict = {
    "gelu": functools.partial(jax.nn.gelu, approximate=True),  # HF "gelu_new"
    "gelu_exact": functools.partial(jax.nn.gelu, approximate=False),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "linear": lambda x: x,
}


def _constrain(x: Array, axes: Sequence[Optional[str]]) -> Array:
  return nn.with_logical_constraint(x, tuple(axes))


def _param(module: nn.Module, name: str, init: Callable, shape: Tuple[int, ...],
           axes: Tuple[str, ...], dtype: DType) -> Array:
  return module.param(name, nn.with_logical_partitioning(init, axes), shape, dtype)


class RMSNorm(nn.Module):
  """T5 layer norm: `x / rms(x) * scale`, no centering, no bias; computed in float32."""
  epsilon: float = 1e-6
  dtype: DType = jnp.float32
  param_dtype: DType = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    # [..., embed] -> [..., embed]
    scale = _param(self, "scale", nn.initializers.ones, (x.shape[-1],), ("embed",),
                   self.param_dtype)
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.epsilon)
    return (x32 * scale.astype(jnp.float32)).astype(self.dtype)


class DenseGeneral(nn.Module):
  """Bias-free dense layer contracting the last `num_in_dims` dims into `features`."""
  features: Tuple[int, ...]
  kernel_axes: Tuple[str, ...]
  num_in_dims: int = 1
  kernel_init: Callable = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")
  dtype: DType = jnp.float32
  param_dtype: DType = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    in_shape = x.shape[-self.num_in_dims:]
    kernel_shape = tuple(in_shape) + tuple(self.features)
    fan_in = int(np.prod(in_shape))
    fan_out = int(np.prod(self.features))
    # Initialized as a 2-D [fan_in, fan_out] matrix so fan-in/fan-out are the true ones.
    init = lambda key, shape, dtype: self.kernel_init(key, (fan_in, fan_out), dtype).reshape(shape)
    kernel = _param(self, "kernel", init, kernel_shape, self.kernel_axes, self.param_dtype)
    x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
    # [..., *in] x [*in, *features] -> [..., *features]
    return kernels.dense(x, kernel, self.num_in_dims)


def relative_position_bucket(relative_position: np.ndarray, bidirectional: bool,
                             num_buckets: int, max_distance: int) -> np.ndarray:
  """Mesh-TensorFlow / HF T5 bucketing of `memory_position - query_position` (int array)."""
  rp = np.asarray(relative_position, dtype=np.int64)
  buckets = np.zeros_like(rp)
  if bidirectional:
    num_buckets //= 2
    buckets += (rp > 0).astype(np.int64) * num_buckets
    rp = np.abs(rp)
  else:
    rp = -np.minimum(rp, 0)
  max_exact = num_buckets // 2
  is_small = rp < max_exact
  safe = np.maximum(rp, 1).astype(np.float64)
  large = max_exact + (np.log(safe / max_exact) / np.log(max_distance / max_exact)
                       * (num_buckets - max_exact)).astype(np.int64)
  large = np.minimum(large, num_buckets - 1)
  return buckets + np.where(is_small, rp, large)


class RelativePositionBiases(nn.Module):
  """Bucketed relative position bias `[1, heads, q_len, k_len]` (one table per stack)."""
  num_buckets: int
  max_distance: int
  num_heads: int
  bidirectional: bool
  dtype: DType = jnp.float32
  param_dtype: DType = jnp.float32

  @nn.compact
  def __call__(self, q_len: int, k_len: int, query_position: Optional[Array] = None) -> Array:
    """`[1, H, q_len, k_len]`; with `query_position` (a traced int, `q_len` = 1) the row of the
    query at that position, `[1, H, 1, k_len]`, at O(k_len) cost (one decode step)."""
    init = nn.initializers.variance_scaling(1.0, "fan_avg", "uniform")
    table = _param(self, "rel_embedding", init, (self.num_heads, self.num_buckets),
                   ("heads", "relpos_buckets"), self.param_dtype)
    # Bucket indices are static (shapes are static), so they are built in NumPy at trace time.
    if query_position is not None:
      if q_len != 1:
        raise ValueError(f"query_position needs q_len = 1, got {q_len}")
      # Buckets of every relative position -(k_len-1) .. k_len-1: [2 k_len - 1]; the query at
      # p needs positions k - p for k = 0 .. k_len-1, a window starting at k_len-1-p.
      every = relative_position_bucket(np.arange(-(k_len - 1), k_len), self.bidirectional,
                                       self.num_buckets, self.max_distance)
      buckets = jax.lax.dynamic_slice(jnp.asarray(every, jnp.int32),
                                      (k_len - 1 - query_position,), (k_len,))[None]  # [1, k]
    else:
      rp = np.arange(k_len)[None, :] - np.arange(q_len)[:, None]
      buckets = jnp.asarray(relative_position_bucket(rp, self.bidirectional, self.num_buckets,
                                                     self.max_distance), jnp.int32)  # [q, k]
    # [heads, buckets] -> [heads, q, k] -> [1, heads, q, k]
    bias = jnp.take(table, buckets, axis=1)
    return bias[None].astype(self.dtype)


def _to_cache(x: Array) -> Array:
  """Keys / values `[B, L, H, D]` -> the decode cache's layout `[B, H, D, L]`."""
  return _constrain(jnp.transpose(x, (0, 2, 3, 1)), (BATCH, HEADS, KV, LENGTH))


def grow_decode_cache(cache: Any, length: int) -> Any:
  """The decode cache with every self-attention key/value `[B, H, D, L]` zero-padded to `length`.

  Positions < L keep their keys/values; cross-attention caches and the position are unchanged.
  """
  def grow(path, x):
    names = [getattr(k, "key", None) for k in path]
    if "self_attention" not in names or names[-1] not in ("cached_key", "cached_value"):
      return x
    if length < x.shape[-1]:
      raise ValueError(f"cannot shrink a self-attention cache of {x.shape[-1]} to {length}")
    return jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, length - x.shape[-1])])
  return jax.tree_util.tree_map_with_path(grow, cache)


def _batch_shards(batch: int) -> int:
  """How many ways the current mesh splits an activation batch of `batch` rows (1 = not at all)."""
  mesh = jax.sharding.get_abstract_mesh()
  spec = None if mesh.empty else nn.logical_to_mesh_axes((BATCH,))
  axes = () if spec is None or spec[0] is None else spec[0]
  axes = (axes,) if isinstance(axes, str) else tuple(axes)
  shards = int(np.prod([mesh.shape[a] for a in axes if a in mesh.shape]))
  return shards if batch % shards == 0 else 1


class MultiHeadAttention(nn.Module):
  """T5 multi-head attention, self or cross, with optional KV cache.

  Queries `[Bq, Lq, E]` may have `Bq = N * Bkv` rows per key/value row (prompt-major order):
  each group of N query rows attends to the same keys/values, which are computed once.
  """
  num_heads: int
  head_dim: int
  dropout_rate: float = 0.0
  dtype: DType = jnp.float32
  param_dtype: DType = jnp.float32

  @nn.compact
  def __call__(self, inputs_q: Array, inputs_kv: Optional[Array], *, mask: Optional[Array],
               bias: Optional[Array], enable_dropout: bool, decode: bool = False,
               cross: bool = False, prefill_cross_cache: bool = False,
               decode_position: Optional[Array] = None) -> Array:
    """`inputs_q` `[Bq, Lq, E]` attends to `inputs_kv` `[Bkv, Lk, E]` (None: self) -> `[Bq, Lq, E]`.

    `mask`: boolean `[B?, 1, Lq or 1, Lk]`, True = attend. `bias`: additive `[1, H, Lq, Lk]` or
    None. `decode`: a step with a cache (self attention: Lq = 1; `cross`: keys / values cached,
    computed on `prefill_cross_cache`). `decode_position`: a cached self-attention step's
    position p (a traced int < the cache's length; its key/value go to column p of the cache).
    """
    base = nn.initializers.variance_scaling(1.0, "fan_in", "normal")
    depth_scale = float(np.sqrt(self.head_dim))
    query_init = lambda k, s, d: base(k, s, d) / depth_scale  # T5: scale folded into q init.
    # [Bq, Lq, E] -> [Bq, Lq, H, D]
    query = self._proj("query", inputs_q, query_init)
    # Keys / values [Bkv, Lk, H, D] ("bkhd"), or from a decode cache [Bkv, H, D, Lk] ("bhdk")
    if cross and decode:
      if inputs_kv is None:
        raise ValueError("cross attention needs the encoder output")
      shape = (inputs_kv.shape[0], self.num_heads, self.head_dim, inputs_kv.shape[1])
      cached_key = self.variable("cache", "cached_key", jnp.zeros, shape, self.dtype)
      cached_value = self.variable("cache", "cached_value", jnp.zeros, shape, self.dtype)
      if prefill_cross_cache or self.is_initializing():
        # [Bkv, Lk, E] -> [Bkv, Lk, H, D] -> [Bkv, H, D, Lk], once per decode
        cached_key.value = _to_cache(self._proj("key", inputs_kv, base)).astype(self.dtype)
        cached_value.value = _to_cache(self._proj("value", inputs_kv, base)).astype(self.dtype)
      key, value, kv_axes = cached_key.value, cached_value.value, "bhdk"
    else:
      kv_in = inputs_q if inputs_kv is None else inputs_kv
      # [Bkv, Lk, E] -> [Bkv, Lk, H, D]
      key = self._proj("key", kv_in, base)
      value = self._proj("value", kv_in, base)
      kv_axes = "bkhd"
    if decode and not cross:
      key, value, mask, kv_axes = self._self_attention_cache(query, key, value, mask,
                                                             decode_position, kv_axes)
    out = self._attend(query, key, value, kv_axes, bias, mask, enable_dropout)
    # [Bq, Lq, H, D] -> [Bq, Lq, E]
    out = DenseGeneral(features=(inputs_q.shape[-1],), kernel_axes=("heads", "kv", "embed"),
                       num_in_dims=2, kernel_init=base, dtype=self.dtype,
                       param_dtype=self.param_dtype, name="out")(
                           _constrain(out, (BATCH, LENGTH, HEADS, KV)))
    return _constrain(out, (BATCH, LENGTH, EMBED))

  def _proj(self, name: str, x: Array, init: Callable) -> Array:
    # [batch, length, embed] -> [batch, length, heads, kv]
    y = DenseGeneral(features=(self.num_heads, self.head_dim), kernel_axes=("embed", "heads", "kv"),
                     kernel_init=init, dtype=self.dtype, param_dtype=self.param_dtype,
                     name=name)(x)
    return _constrain(y, (BATCH, LENGTH, HEADS, KV))

  def _self_attention_cache(self, query: Array, key: Array, value: Array, mask: Optional[Array],
                            decode_position: Optional[Array], kv_axes: str
                            ) -> Tuple[Array, Array, Optional[Array], str]:
    """Lays out the self-attention cache `[B, H, D, L]` (the first call: keys, values, mask pass
    through), or writes a cached step's key / value in column p and attends to positions <= p."""
    is_initialized = self.has_variable("cache", "cached_key")
    shape = (query.shape[0], self.num_heads, self.head_dim, query.shape[1])  # [B, H, D, L]
    cached_key = self.variable("cache", "cached_key", jnp.zeros, shape, self.dtype)
    cached_value = self.variable("cache", "cached_value", jnp.zeros, shape, self.dtype)
    if not is_initialized:
      return key, value, mask, kv_axes
    if query.shape[1] != 1:
      raise ValueError(f"cached decoding takes one token per step, got length {query.shape[1]}")
    if decode_position is None:
      raise ValueError("a cached decoding step needs decode_position")
    p, cache_len = decode_position, cached_key.value.shape[-1]
    # [B, 1, H, D] -> [B, H, D, 1] -> column p of [B, H, D, cache_len], written in place
    key = jax.lax.dynamic_update_slice(cached_key.value, _to_cache(key).astype(self.dtype),
                                       (0, 0, 0, p))
    value = jax.lax.dynamic_update_slice(cached_value.value,
                                         _to_cache(value).astype(self.dtype), (0, 0, 0, p))
    cached_key.value, cached_value.value = key, value
    # [1, 1, 1, cache_len]: positions <= p (the decoder's bias row is [1, H, 1, cache_len])
    mask = (jnp.arange(cache_len) <= p)[None, None, None, :]
    return key, value, mask, "bhdk"

  def _attend(self, query: Array, key: Array, value: Array, kv_axes: str,
              bias: Optional[Array], mask: Optional[Array], enable_dropout: bool) -> Array:
    """softmax(q k + bias, masked) v: `[Bq, Lq, H, D]`, keys / values as `kv_axes` -> same."""
    bq, lq = query.shape[0], query.shape[1]
    bkv = key.shape[0]
    if bq % bkv:
      raise ValueError(f"query batch {bq} is not a multiple of key/value batch {bkv}")
    dropout = enable_dropout and self.dropout_rate > 0.0
    logit_bytes = bq * self.num_heads * lq * key.shape[1] * 4
    if (kv_axes == "bkhd" and bq == bkv and not dropout
        and kernels.use_blocked_attention(logit_bytes)):
      return kernels.attend_blocked(query, key, value, bias, mask, self.dtype,
                                    batch_shards=_batch_shards(bq))
    n = bq // bkv
    # [Bq, Lq, H, D] -> [Bkv, N, Lq, H, D]
    q = query.reshape(bkv, n, lq, self.num_heads, self.head_dim)
    # [Bkv, N, Lq, H, D] x keys -> [Bkv, N, H, Lq, Lk]
    logits = jnp.einsum(f"bnqhd,{kv_axes}->bnhqk", q, key, preferred_element_type=jnp.float32)
    if bias is not None:
      logits = logits + bias.astype(jnp.float32)[:, None]  # [1, 1, H, Lq, Lk]
    if mask is not None:
      m = mask
      if m.shape[0] not in (1, bkv):  # per-query-row mask [Bq, 1, Lq, Lk]
        m = m.reshape(bkv, n, *m.shape[1:])
      else:
        m = m[:, None]
      logits = jnp.where(m, logits, kernels.NEG_INF)  # finite: never NaN
    weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    if dropout:
      weights = nn.Dropout(rate=self.dropout_rate)(weights, deterministic=False)
    # [Bkv, N, H, Lq, Lk] x values -> [Bkv, N, Lq, H, D] -> [Bq, Lq, H, D]
    out = jnp.einsum(f"bnhqk,{kv_axes}->bnqhd", weights, value.astype(self.dtype))
    return out.reshape(bq, lq, self.num_heads, self.head_dim)


class MlpBlock(nn.Module):
  """Gated MLP: `wo(act_0(wi_0 x) * act_1(wi_1 x))` (gated-GELU for T5 v1.1)."""
  mlp_dim: int
  activations: Tuple[str, ...]
  dropout_rate: float = 0.0
  dtype: DType = jnp.float32
  param_dtype: DType = jnp.float32

  @nn.compact
  def __call__(self, x: Array, enable_dropout: bool) -> Array:
    init = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")
    hidden = None
    for i, act in enumerate(self.activations):
      name = "wi" if len(self.activations) == 1 else f"wi_{i}"
      # [batch, length, embed] -> [batch, length, mlp]
      h = DenseGeneral(features=(self.mlp_dim,), kernel_axes=("embed", "mlp"), kernel_init=init,
                       dtype=self.dtype, param_dtype=self.param_dtype, name=name)(x)
      h = _ACTIVATIONS[act](h)
      hidden = h if hidden is None else hidden * h
    hidden = _constrain(hidden, (BATCH, LENGTH, MLP))
    hidden = nn.Dropout(rate=self.dropout_rate)(hidden, deterministic=not enable_dropout)
    # [batch, length, mlp] -> [batch, length, embed]
    out = DenseGeneral(features=(x.shape[-1],), kernel_axes=("mlp", "embed"), kernel_init=init,
                       dtype=self.dtype, param_dtype=self.param_dtype, name="wo")(hidden)
    return _constrain(out, (BATCH, LENGTH, EMBED))


class EncoderLayer(nn.Module):
  config: T5Config

  @nn.compact
  def __call__(self, x: Array, mask: Array, bias: Array, enable_dropout: bool) -> Array:
    cfg = self.config
    dt, pdt = cfg.activation_dtype, cfg.weight_dtype
    drop = lambda y: nn.Dropout(rate=cfg.dropout_rate)(y, deterministic=not enable_dropout)
    # [batch, length, embed] -> [batch, length, embed]
    h = RMSNorm(cfg.layer_norm_epsilon, dt, pdt, name="pre_attention_layer_norm")(x)
    h = MultiHeadAttention(cfg.num_heads, cfg.head_dim, cfg.dropout_rate, dt, pdt,
                           name="attention")(h, None, mask=mask, bias=bias,
                                             enable_dropout=enable_dropout)
    x = x + drop(h)
    h = RMSNorm(cfg.layer_norm_epsilon, dt, pdt, name="pre_mlp_layer_norm")(x)
    h = MlpBlock(cfg.mlp_dim, cfg.mlp_activations, cfg.dropout_rate, dt, pdt, name="mlp")(
        h, enable_dropout)
    x = x + drop(h)
    return _constrain(x, (BATCH, LENGTH, EMBED))


class DecoderLayer(nn.Module):
  config: T5Config

  @nn.compact
  def __call__(self, x: Array, encoded: Array, self_mask: Optional[Array],
               cross_mask: Array, bias: Array, enable_dropout: bool, decode: bool,
               prefill_cross_cache: bool, decode_position: Optional[Array] = None) -> Array:
    cfg = self.config
    dt, pdt = cfg.activation_dtype, cfg.weight_dtype
    drop = lambda y: nn.Dropout(rate=cfg.dropout_rate)(y, deterministic=not enable_dropout)
    # [batch, length, embed] -> [batch, length, embed]
    h = RMSNorm(cfg.layer_norm_epsilon, dt, pdt, name="pre_self_attention_layer_norm")(x)
    h = MultiHeadAttention(cfg.num_heads, cfg.head_dim, cfg.dropout_rate, dt, pdt,
                           name="self_attention")(h, None, mask=self_mask, bias=bias,
                                                  enable_dropout=enable_dropout, decode=decode,
                                                  decode_position=decode_position)
    x = x + drop(h)
    # [batch, length, embed] x encoded [batch_enc, length_enc, embed] -> [batch, length, embed]
    h = RMSNorm(cfg.layer_norm_epsilon, dt, pdt, name="pre_cross_attention_layer_norm")(x)
    h = MultiHeadAttention(cfg.num_heads, cfg.head_dim, cfg.dropout_rate, dt, pdt,
                           name="encoder_decoder_attention")(
        h, encoded, mask=cross_mask, bias=None, enable_dropout=enable_dropout, decode=decode,
        cross=True, prefill_cross_cache=prefill_cross_cache)
    x = x + drop(h)
    h = RMSNorm(cfg.layer_norm_epsilon, dt, pdt, name="pre_mlp_layer_norm")(x)
    h = MlpBlock(cfg.mlp_dim, cfg.mlp_activations, cfg.dropout_rate, dt, pdt, name="mlp")(
        h, enable_dropout)
    x = x + drop(h)
    return _constrain(x, (BATCH, LENGTH, EMBED))


class Embed(nn.Module):
  """Token embedding `[vocab, embed]`, with `attend` for tied output logits."""
  num_embeddings: int
  features: int
  dtype: DType = jnp.float32
  param_dtype: DType = jnp.float32

  def setup(self):
    self.embedding = self.param(
        "embedding", nn.with_logical_partitioning(nn.initializers.normal(1.0), ("vocab", "embed")),
        (self.num_embeddings, self.features), self.param_dtype)

  def __call__(self, tokens: Array) -> Array:
    # A replicated copy (all-gathered like any FSDP weight): the SPMD partitioner's gather from a
    # (vocab, embed)-sharded table into a batch-sharded output replicates through slow paths.
    table = _constrain(self.embedding, (None, None))
    # [batch, length] -> [batch, length, embed]
    return _constrain(jnp.take(table, tokens, axis=0).astype(self.dtype), (BATCH, LENGTH, EMBED))

  def attend(self, x: Array) -> Array:
    # [batch, length, embed] -> [batch, length, vocab]
    return jnp.einsum("ble,ve->blv", x, self.embedding.astype(self.dtype))


class Encoder(nn.Module):
  config: T5Config
  shared_embedding: nn.Module

  @nn.compact
  def __call__(self, encoder_input_tokens: Array, enable_dropout: bool) -> Array:
    cfg = self.config
    length = encoder_input_tokens.shape[1]
    # [batch, length] -> [batch, 1, 1, length] (key padding mask; queries are not masked)
    mask = (encoder_input_tokens > 0)[:, None, None, :]
    # [1, heads, length, length]
    bias = RelativePositionBiases(
        cfg.relative_attention_num_buckets, cfg.relative_attention_max_distance, cfg.num_heads,
        True, cfg.activation_dtype, cfg.weight_dtype, name="relpos_bias")(length, length)
    # [batch, length] -> [batch, length, embed]
    x = self.shared_embedding(encoder_input_tokens.astype(jnp.int32))
    x = nn.Dropout(rate=cfg.dropout_rate)(x, deterministic=not enable_dropout)
    x = _constrain(x, (BATCH, LENGTH, EMBED))
    layer_cls = nn.remat(EncoderLayer, static_argnums=(4,)) if cfg.remat else EncoderLayer
    for i in range(cfg.num_encoder_layers):
      # [batch, length, embed] -> [batch, length, embed]
      x = layer_cls(cfg, name=f"layers_{i}")(x, mask, bias, enable_dropout)
    x = kernels.end_fusion(x, encoder_input_tokens)  # an identity (ends the last layer's fusion)
    x = RMSNorm(cfg.layer_norm_epsilon, cfg.activation_dtype, cfg.weight_dtype,
                name="encoder_norm")(x)
    x = nn.Dropout(rate=cfg.dropout_rate)(x, deterministic=not enable_dropout)
    return _constrain(x, (BATCH, LENGTH, EMBED))


class Decoder(nn.Module):
  config: T5Config
  shared_embedding: nn.Module

  @nn.compact
  def __call__(self, encoded: Array, encoder_input_tokens: Array, decoder_input_tokens: Array,
               decoder_target_tokens: Optional[Array], enable_dropout: bool, decode: bool,
               max_decode_length: Optional[int], prefill_cross_cache: bool,
               decode_window: Optional[int] = None, hidden_only: bool = False) -> Array:
    """Logits `[B * N, Ld, V]`, or with `hidden_only` the final (normed) hidden states
    `[B * N, Ld, E]` and no logits projection (a reward head reads them)."""
    cfg = self.config
    length = decoder_input_tokens.shape[1]
    relpos = RelativePositionBiases(cfg.relative_attention_num_buckets,
                                    cfg.relative_attention_max_distance, cfg.num_heads, False,
                                    cfg.activation_dtype, cfg.weight_dtype, name="relpos_bias")
    # Cross-attention key padding mask: [B_enc, 1, 1, L_enc]
    cross_mask = (encoder_input_tokens > 0)[:, None, None, :]
    decode_position = None
    if decode:
      if max_decode_length is None:
        raise ValueError("decode=True needs max_decode_length")
      if self.has_variable("cache", "position"):
        # A step at position p (the decode's one counter): p's bias row only, [1, H, 1, window]
        position = self.variable("cache", "position", lambda: jnp.array(0, jnp.int32))
        decode_position = position.value
        window = max_decode_length if decode_window is None else decode_window
        bias = relpos(1, window, query_position=decode_position)
        position.value = decode_position + 1
      else:  # the call that lays out the cache ([B, cache length] tokens): [1, H, L, L]
        self.variable("cache", "position", lambda: jnp.array(0, jnp.int32))
        bias = relpos(length, length)
      # [1, 1, L, L] causal mask (a cached step: None, the cache masks)
      self_mask = None if length == 1 else jnp.tril(jnp.ones((length, length), bool))[None, None]
    else:
      bias = relpos(length, length)  # [1, H, L, L]
      # Causal mask [1, 1, L, L]; padding positions are in the future of every real position.
      self_mask = jnp.tril(jnp.ones((length, length), bool))[None, None]
      if decoder_target_tokens is not None:
        # also hide padding keys: [B, 1, 1, L]
        self_mask = jnp.logical_and(self_mask, (decoder_target_tokens > 0)[:, None, None, :]
                                    | jnp.eye(length, dtype=bool)[None, None])
    # [batch, length] -> [batch, length, embed]
    y = self.shared_embedding(decoder_input_tokens.astype(jnp.int32))
    y = nn.Dropout(rate=cfg.dropout_rate)(y, deterministic=not enable_dropout)
    y = _constrain(y, (BATCH, LENGTH, EMBED))
    layer_cls = (nn.remat(DecoderLayer, static_argnums=(6, 7, 8)) if cfg.remat
                 else DecoderLayer)
    for i in range(cfg.num_decoder_layers):
      # [batch, length, embed] -> [batch, length, embed]
      y = layer_cls(cfg, name=f"layers_{i}")(y, encoded, self_mask, cross_mask, bias,
                                             enable_dropout, decode, prefill_cross_cache,
                                             decode_position)
    y = RMSNorm(cfg.layer_norm_epsilon, cfg.activation_dtype, cfg.weight_dtype,
                name="decoder_norm")(y)
    y = nn.Dropout(rate=cfg.dropout_rate)(y, deterministic=not enable_dropout)
    y = _constrain(y, (BATCH, LENGTH, EMBED))
    if hidden_only:
      return y
    if cfg.logits_via_embedding:
      # Tied embeddings (T5 v1.0): scale by emb_dim^-0.5 before attending.
      logits = self.shared_embedding.attend(y * (cfg.emb_dim ** -0.5))
    else:
      # [batch, length, embed] -> [batch, length, vocab]
      logits = DenseGeneral(features=(cfg.vocab_size,), kernel_axes=("embed", "vocab"),
                            dtype=jnp.float32, param_dtype=cfg.weight_dtype,
                            name="logits_dense")(y)
    return _constrain(logits.astype(jnp.float32), (BATCH, LENGTH, VOCAB))


class Transformer(nn.Module):
  """T5 v1.1 encoder-decoder with T5X's call signature. Logits are float32 `[B, L, V]`."""
  config: T5Config

  def setup(self):
    cfg = self.config
    self.token_embedder = Embed(cfg.vocab_size, cfg.emb_dim, cfg.activation_dtype,
                                cfg.weight_dtype)
    self.encoder = Encoder(cfg, self.token_embedder)
    self.decoder = Decoder(cfg, self.token_embedder)

  def encode(self, encoder_input_tokens: Array, enable_dropout: bool = False) -> Array:
    """`[B, Le]` int tokens (0 = padding) -> encoder output `[B, Le, E]`."""
    return self.encoder(encoder_input_tokens, enable_dropout)

  def decode(self, encoded: Array, encoder_input_tokens: Array, decoder_input_tokens: Array,
             decoder_target_tokens: Optional[Array] = None, enable_dropout: bool = False,
             decode: bool = False, max_decode_length: Optional[int] = None,
             prefill_cross_cache: bool = False, decode_window: Optional[int] = None) -> Array:
    """Decoder logits `[B * N, Ld, V]` from encoder output `[B, Le, E]` (N candidates a prompt).

    With `decode=True` this is one cached step (`Ld = 1`); the first step passes
    `prefill_cross_cache=True` to compute and cache the cross-attention keys/values. The
    self-attention caches may be shorter than `max_decode_length` (laid out by a call on
    `[B * N, window]` tokens, grown with `grow_decode_cache`, so a step's cost follows the
    decoded length): a cached step at position p passes their length (> p) as `decode_window`.
    """
    return self.decoder(encoded, encoder_input_tokens, decoder_input_tokens,
                        decoder_target_tokens, enable_dropout, decode, max_decode_length,
                        prefill_cross_cache, decode_window)

  def __call__(self, encoder_input_tokens: Array, decoder_input_tokens: Array,
               decoder_target_tokens: Optional[Array] = None, enable_dropout: bool = True,
               decode: bool = False, max_decode_length: Optional[int] = None,
               prefill_cross_cache: bool = False) -> Array:
    """Full forward: `[B, Le]`, `[B * N, Ld]` int tokens -> logits `[B * N, Ld, V]`."""
    encoded = self.encode(encoder_input_tokens, enable_dropout=enable_dropout)
    return self.decode(encoded, encoder_input_tokens, decoder_input_tokens,
                       decoder_target_tokens, enable_dropout=enable_dropout, decode=decode,
                       max_decode_length=max_decode_length,
                       prefill_cross_cache=prefill_cross_cache)
