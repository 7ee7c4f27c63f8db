"""T5 v1.1 encoder-decoder in Flax linen, shared by policy, reference scorer, sampler and RM.

T5 v1.1 (and Flan-T5): RMS layer norm without bias, pre-norm residual blocks, bucketed relative
position biases (one table per stack, shared across its layers), gated-GELU MLP, no biases
anywhere, untied output head. Attention logits are not scaled by 1/sqrt(head_dim): as in T5 the
scale lives in the query initializer.

Every parameter carries logical axis names (`embed`, `vocab`, `heads`, `kv`, `mlp`,
`relpos_buckets`) and every activation a logical constraint (`activation_batch`,
`activation_length`, `activation_embed`, ...); `partitioning.py` maps both onto a mesh.
Module names mirror T5X's checkpoint layout (`token_embedder`, `encoder/layers_0/attention/query`,
`decoder/logits_dense`, ...).

Decoding: `Transformer.decode(..., decode=True)` runs one step with a KV cache. The decoder batch
may be a multiple `num_decodes` of the encoder batch (`[B * N, ...]` candidates, prompt-major): the
encoder output and the cross-attention keys/values of each prompt are computed once and shared
by its N candidates, never copied N-fold. Cached keys / values are laid out `[B, H, D, L]` (T5X's
layout): a step writes one column and both attention contractions read the cache in place (a
`[B, L, H, D]` cache made XLA transpose all of it at every step); a step computes only its own
row of the decoder's relative position bias (O(L), not the O(L^2) matrix). The decoder's
`cache/position` is the decode's one position counter. The self-attention caches may be shorter
than the decode and grown as it goes (`decode_window`, `grow_decode_cache`), so a step's cost
follows the decoded length, not the capacity.

On XLA:CPU, attention without a cache whose logits pass 1 MB runs over blocks of a few rows
(`_attend_blocked`), so its `[rows, heads, Lq, Lk]` logits never exist whole; other backends
run the batched form.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

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

_NEG_INF = -1e10  # finite: a row with every key masked gives uniform weights, never NaN.


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
  """Bias-free dense layer contracting the last `len(in_axes)` dims into `features`."""
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

    def init(key, shape, dtype):
      # Initialize as a 2-D [fan_in, fan_out] matrix so fan-in/fan-out are the true ones.
      return self.kernel_init(key, (fan_in, fan_out), dtype).reshape(shape)

    kernel = _param(self, "kernel", init, kernel_shape, self.kernel_axes, self.param_dtype)
    x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
    if jax.default_backend() == "cpu":
      return _dense_cpu(x, kernel, self.num_in_dims)
    return _contract(x, kernel, self.num_in_dims)


def _contract(x: Array, kernel: Array, n: int) -> Array:
  """`[..., *in] x [*in, *out] -> [..., *out]` (the last n dims of x against the first of kernel)."""
  in_dims = tuple(range(x.ndim - n, x.ndim))
  return jax.lax.dot_general(x, kernel, ((in_dims, tuple(range(n))), ((), ())))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _dense_cpu(x: Array, kernel: Array, n: int) -> Array:
  """`_contract` with a backward pass XLA:CPU runs at full speed.

  Autodiff's weight gradient `dW = x^T g` is one dot contracting the leading (batch, length)
  dims of both operands, which XLA:CPU runs through a transposed-LHS kernel at about half the
  speed of a plain matmul (49 such dots in a T5-small policy step). Here `x^T` is materialized
  first (`[*in, batch...]`, a copy the barrier keeps XLA from folding back into the dot), so
  the dot is a plain row-major matmul: the policy step runs ~1.2x faster on CPU (see
  benchmarks/train_step.py). Same values as autodiff up to float summation order.
  """
  return _contract(x, kernel, n)


def _dense_cpu_fwd(x, kernel, n):
  return _contract(x, kernel, n), (x, kernel)


def _dense_cpu_bwd(n, residuals, g):
  x, kernel = residuals
  nb = x.ndim - n  # leading (batch, length) dims of x and of g
  # dx: g [..., *out] x kernel [*in, *out] -> [..., *in]
  dx = jax.lax.dot_general(g, kernel, ((tuple(range(nb, g.ndim)), tuple(range(n, kernel.ndim))),
                                       ((), ())))
  # dW: x^T [*in, ...] (materialized) x g [..., *out] -> [*in, *out]
  xt = jax.lax.optimization_barrier(jnp.transpose(x, tuple(range(nb, x.ndim)) + tuple(range(nb))))
  dw = jax.lax.dot_general(xt, g, ((tuple(range(n, xt.ndim)), tuple(range(nb))), ((), ())))
  return dx.astype(x.dtype), dw.astype(kernel.dtype)


_dense_cpu.defvjp(_dense_cpu_fwd, _dense_cpu_bwd)


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
    table = _param(self, "rel_embedding",
                   nn.initializers.variance_scaling(1.0, "fan_avg", "uniform"),
                   (self.num_heads, self.num_buckets), ("heads", "relpos_buckets"),
                   self.param_dtype)
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


def _rows_per_block(local_rows: int, row_bytes: int, budget: int) -> int:
  """The largest divisor of `local_rows` that is at most `budget // row_bytes` (and at least 2
  when `local_rows` is even): the attention logits of one block stay about `budget` bytes."""
  cap = max(2, budget // max(row_bytes, 1))
  return max(d for d in range(1, min(cap, local_rows) + 1) if local_rows % d == 0)


_BLOCK_BYTES = 1 << 20  # float32 attention logits per block of `_attend_blocked`


def _blocked_attention(logit_bytes: int) -> bool:
  """Whether attention without a cache runs in blocks of rows (`_attend_blocked`): on XLA:CPU,
  when its float32 logits exceed one block. Smaller ones keep the batched form and with it their
  float results (the embedded main job's table stays the same to the last digit)."""
  return jax.default_backend() == "cpu" and logit_bytes > _BLOCK_BYTES


def _attend_blocked(query: Array, key: Array, value: Array, bias: Optional[Array],
                    mask: Optional[Array], dtype: DType, budget: Optional[int] = None) -> Array:
  """Attention over blocks of a few rows at a time, for XLA:CPU (no dropout, one query row per
  key/value row).

  `query` `[B, Lq, H, D]`, `key` / `value` `[B, Lk, H, D]`, `bias` `[1, H, Lq, Lk]` or None,
  `mask` boolean `[B or 1, 1, Lq or 1, Lk]` or None -> `[B, Lq, H, D]`: the batched einsum's
  values up to float summation order. `budget`: bytes of float32 logits per block
  (default `_BLOCK_BYTES`).

  XLA:CPU runs the batched form over the whole `[B, H, Lq, Lk]` logits (339 MB per layer for
  128 rows of 332 tokens), its two dots through transposed layouts at 45-87 GFLOP/s. A
  `lax.map` over blocks whose logits stay near 1 MB, both dots in plain row-major layouts, runs
  that layer's attention in 200 ms instead of 845 (at 76 tokens: 14 instead of 52 ms, and with
  its gradient 109 instead of 188 ms). Under a mesh each step takes the same few rows from every
  batch shard, so no row leaves its device.
  """
  b, lq, h, d = query.shape
  lk = key.shape[1]
  shards = _batch_shards(b)
  rows = _rows_per_block(b // shards, h * lq * lk * 4, budget or _BLOCK_BYTES)
  steps = b // (shards * rows)

  def blocks(x):  # [B, ...] -> [steps, shards * rows, ...]: step i holds rows i*rows.. of each shard
    x = x.reshape(shards, steps, rows, *x.shape[1:])
    return jnp.swapaxes(x, 0, 1).reshape(steps, shards * rows, *x.shape[3:])

  def block(args):
    q, k, v, m = args
    # [r, Lq, H, D] -> [r, H, Lq, D]; keys -> [r, H, D, Lk]; values -> [r, H, Lk, D]
    q = jnp.transpose(q, (0, 2, 1, 3))
    k = jnp.transpose(k, (0, 2, 3, 1))
    v = jnp.transpose(v, (0, 2, 1, 3)).astype(dtype)
    # [r, H, Lq, D] x [r, H, D, Lk] -> [r, H, Lq, Lk]
    logits = jax.lax.dot_general(q, k, (((3,), (2,)), ((0, 1), (0, 1))),
                                 preferred_element_type=jnp.float32)
    if bias is not None:
      logits = logits + bias.astype(jnp.float32)
    if m is not None:
      logits = jnp.where(m, logits, _NEG_INF)
    weights = jax.nn.softmax(logits, axis=-1).astype(dtype)
    # [r, H, Lq, Lk] x [r, H, Lk, D] -> [r, H, Lq, D] -> [r, Lq, H, D]
    out = jax.lax.dot_general(weights, v, (((3,), (2,)), ((0, 1), (0, 1))))
    return jnp.transpose(out, (0, 2, 1, 3))

  if mask is not None and mask.shape[0] == b:  # a mask per row travels with its rows
    xs, run = (blocks(query), blocks(key), blocks(value), blocks(mask)), block
  else:
    xs, run = (blocks(query), blocks(key), blocks(value)), lambda a: block((*a, mask))
  out = run(jax.tree.map(lambda x: x[0], xs))[None] if steps == 1 else jax.lax.map(run, xs)
  # [steps, shards * rows, Lq, H, D] -> [B, Lq, H, D]
  out = out.reshape(steps, shards, rows, lq, h, d)
  return jnp.swapaxes(out, 0, 1).reshape(b, lq, h, d)


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

  def _proj(self, name: str, x: Array, init: Callable) -> Array:
    # [batch, length, embed] -> [batch, length, heads, kv]
    y = DenseGeneral(features=(self.num_heads, self.head_dim), kernel_axes=("embed", "heads", "kv"),
                     kernel_init=init, dtype=self.dtype, param_dtype=self.param_dtype,
                     name=name)(x)
    return _constrain(y, (BATCH, LENGTH, HEADS, KV))

  @nn.compact
  def __call__(self, inputs_q: Array, inputs_kv: Optional[Array], *, mask: Optional[Array],
               bias: Optional[Array], enable_dropout: bool, decode: bool = False,
               cross: bool = False, prefill_cross_cache: bool = False,
               decode_position: Optional[Array] = None) -> Array:
    """Attention.

    Args:
      inputs_q: `[Bq, Lq, E]`.
      inputs_kv: `[Bkv, Lk, E]` (None for self attention; = inputs_q).
      mask: boolean `[B?, 1, Lq or 1, Lk]` broadcastable to the logits, True = attend.
      bias: additive `[1, H, Lq, Lk]` position bias (self attention) or None.
      decode: one-step decoding with a cache (self attention: Lq = 1; cross: keys cached).
      cross: this is encoder-decoder attention.
      prefill_cross_cache: in decode mode, compute the cross keys/values and store them.
      decode_position: a cached self-attention step: the position p of this step's token (a
        traced int < the cache's length; its key/value go to column p of the cache).
    """
    base = nn.initializers.variance_scaling(1.0, "fan_in", "normal")
    depth_scale = float(np.sqrt(self.head_dim))
    query_init = lambda k, s, d: base(k, s, d) / depth_scale  # T5: scale folded into q init.

    # [Bq, Lq, E] -> [Bq, Lq, H, D]
    query = self._proj("query", inputs_q, query_init)
    # Keys / values are [B, L, H, D] ("bkhd"), or, read from a decode cache, [B, H, D, L]
    # ("bhdk", T5X's cache layout): a step writes one column and both attention contractions
    # read the cache as it lies, with no per-step transpose of the whole cache.
    kv_axes = "bkhd"
    if cross and decode:
      if inputs_kv is None:
        raise ValueError("cross attention needs the encoder output")
      bkv, lk = inputs_kv.shape[0], inputs_kv.shape[1]
      shape = (bkv, self.num_heads, self.head_dim, lk)
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

    if decode and not cross:
      is_initialized = self.has_variable("cache", "cached_key")
      b, max_len = query.shape[0], query.shape[1]
      shape = (b, self.num_heads, self.head_dim, max_len)
      cached_key = self.variable("cache", "cached_key", jnp.zeros, shape, self.dtype)
      cached_value = self.variable("cache", "cached_value", jnp.zeros, shape, self.dtype)
      if is_initialized:
        if query.shape[1] != 1:
          raise ValueError(f"cached decoding takes one token per step, got length {query.shape[1]}")
        if decode_position is None:
          raise ValueError("a cached decoding step needs decode_position")
        idx = decode_position
        cache_len = cached_key.value.shape[-1]
        # Write this step's key/value in column idx: [B, 1, H, D] -> [B, H, D, 1] -> the cache
        # [B, H, D, cache_len]; attention reads the whole written cache (XLA writes the column
        # in place; reading a slice of it made XLA copy every layer's cache at every step).
        key = jax.lax.dynamic_update_slice(cached_key.value, _to_cache(key).astype(self.dtype),
                                           (0, 0, 0, idx))
        value = jax.lax.dynamic_update_slice(cached_value.value,
                                             _to_cache(value).astype(self.dtype), (0, 0, 0, idx))
        cached_key.value, cached_value.value = key, value
        kv_axes = "bhdk"
        # Attend to positions <= idx: [1, 1, 1, cache_len]; `bias` is the decoder's row for
        # position idx, [1, H, 1, cache_len].
        mask = (jnp.arange(cache_len) <= idx)[None, None, None, :]

    bq, lq = query.shape[0], query.shape[1]
    bkv = key.shape[0]
    if bq % bkv:
      raise ValueError(f"query batch {bq} is not a multiple of key/value batch {bkv}")
    dropout = enable_dropout and self.dropout_rate > 0.0
    logit_bytes = bq * self.num_heads * lq * key.shape[1] * 4
    if kv_axes == "bkhd" and bq == bkv and not dropout and _blocked_attention(logit_bytes):
      out = _attend_blocked(query, key, value, bias, mask, self.dtype)
      return self._out(_constrain(out, (BATCH, LENGTH, HEADS, KV)), inputs_q.shape[-1], base)
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
      logits = jnp.where(m, logits, _NEG_INF)
    weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    if enable_dropout and self.dropout_rate > 0.0:
      weights = nn.Dropout(rate=self.dropout_rate)(weights, deterministic=False)
    # [Bkv, N, H, Lq, Lk] x values -> [Bkv, N, Lq, H, D] -> [Bq, Lq, H, D]
    out = jnp.einsum(f"bnhqk,{kv_axes}->bnqhd", weights, value.astype(self.dtype))
    out = out.reshape(bq, lq, self.num_heads, self.head_dim)
    return self._out(_constrain(out, (BATCH, LENGTH, HEADS, KV)), inputs_q.shape[-1], base)

  def _out(self, x: Array, features: int, init: Callable) -> Array:
    # [Bq, Lq, H, D] -> [Bq, Lq, E]
    out = DenseGeneral(features=(features,), kernel_axes=("heads", "kv", "embed"), num_in_dims=2,
                       kernel_init=init, dtype=self.dtype, param_dtype=self.param_dtype,
                       name="out")(x)
    return _constrain(out, (BATCH, LENGTH, EMBED))


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
    h = RMSNorm(cfg.layer_norm_epsilon, dt, pdt, name="pre_cross_attention_layer_norm")(x)
    h = MultiHeadAttention(cfg.num_heads, cfg.head_dim, cfg.dropout_rate, dt, pdt,
                           name="encoder_decoder_attention")(
                               h, encoded, mask=cross_mask, bias=None,
                               enable_dropout=enable_dropout, decode=decode, cross=True,
                               prefill_cross_cache=prefill_cross_cache)
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
    # Gather from a replicated copy of the table (all-gathered like any FSDP weight): a gather
    # from a (vocab, embed)-sharded table into a batch-sharded output makes the SPMD
    # partitioner replicate through slow paths.
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
    dt, pdt = cfg.activation_dtype, cfg.weight_dtype
    length = encoder_input_tokens.shape[1]
    # [batch, length] -> [batch, 1, 1, length] (key padding mask; queries are not masked)
    mask = (encoder_input_tokens > 0)[:, None, None, :]
    bias = RelativePositionBiases(cfg.relative_attention_num_buckets,
                                  cfg.relative_attention_max_distance, cfg.num_heads, True, dt,
                                  pdt, name="relpos_bias")(length, length)
    # [batch, length] -> [batch, length, embed]
    x = self.shared_embedding(encoder_input_tokens.astype(jnp.int32))
    x = nn.Dropout(rate=cfg.dropout_rate)(x, deterministic=not enable_dropout)
    x = _constrain(x, (BATCH, LENGTH, EMBED))
    layer_cls = nn.remat(EncoderLayer, static_argnums=(4,)) if cfg.remat else EncoderLayer
    for i in range(cfg.num_encoder_layers):
      x = layer_cls(cfg, name=f"layers_{i}")(x, mask, bias, enable_dropout)
    # An identity for every token id (ids are >= 0) that XLA cannot prove one: on XLA:CPU this
    # select ends the YNNPACK fusion of the last layer. Without it the last layer's four dots,
    # the final norm and the reader's reduction (a reward model's pooling) became one YNNPACK
    # subgraph that ran at 56 GFLOP/s against ~180 for the same dots alone (reward-model
    # encoder, 128 rows x 332 tokens: 15.1-15.3 -> 13.9-14.2 s; benchmarks/README.md).
    x = jnp.where((encoder_input_tokens >= 0)[..., None], x, 0.0)
    x = RMSNorm(cfg.layer_norm_epsilon, dt, pdt, name="encoder_norm")(x)
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
    dt, pdt = cfg.activation_dtype, cfg.weight_dtype
    length = decoder_input_tokens.shape[1]
    relpos = RelativePositionBiases(cfg.relative_attention_num_buckets,
                                    cfg.relative_attention_max_distance, cfg.num_heads, False,
                                    dt, pdt, name="relpos_bias")
    # Cross-attention key padding mask: [B_enc, 1, 1, L_enc]
    cross_mask = (encoder_input_tokens > 0)[:, None, None, :]
    if decode:
      if max_decode_length is None:
        raise ValueError("decode=True needs max_decode_length")
      if self.has_variable("cache", "position"):
        # A cached step at position p (the one counter of the decode) with self-attention
        # caches of `window` columns: the bias row of p only, [1, H, 1, window].
        position = self.variable("cache", "position", lambda: jnp.array(0, jnp.int32))
        decode_position = position.value
        window = max_decode_length if decode_window is None else decode_window
        bias = relpos(1, window, query_position=decode_position)
        position.value = decode_position + 1
      else:  # the call that lays out the cache ([B, cache length] tokens)
        self.variable("cache", "position", lambda: jnp.array(0, jnp.int32))
        decode_position = None
        bias = relpos(length, length)
      self_mask = None if length == 1 else jnp.tril(
          jnp.ones((length, length), bool))[None, None]
    else:
      decode_position = None
      bias = relpos(length, length)
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
      y = layer_cls(cfg, name=f"layers_{i}")(y, encoded, self_mask, cross_mask, bias,
                                             enable_dropout, decode, prefill_cross_cache,
                                             decode_position)
    y = RMSNorm(cfg.layer_norm_epsilon, dt, pdt, name="decoder_norm")(y)
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
                            dtype=jnp.float32, param_dtype=pdt, name="logits_dense")(y)
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
    """Decoder logits `[B * N, Ld, V]` from encoder output `[B, Le, E]`.

    `decoder_input_tokens` may hold N candidates per prompt, prompt-major (`[B * N, Ld]`):
    they share the prompt's encoder output and cross-attention keys/values.
    With `decode=True` this is one cached step (`Ld = 1`); the first step must pass
    `prefill_cross_cache=True` so the cross-attention keys/values are computed and cached.
    A cached step at position p may run with self-attention caches shorter than
    `max_decode_length` (laid out by a call on `[B * N, window]` tokens, then grown with
    `grow_decode_cache`): pass their length `window` (> p, static) as `decode_window`. The
    sampler grows them in buckets, so a step's cost follows the decoded length, not the capacity.
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
