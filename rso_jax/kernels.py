"""Speed kernels: the same values as a plain jnp form, laid out the way a backend runs fast.

The math lives in `network.py` (T5 v1.1), `decoding.py` (sampling) and `rejection.py`
(Algorithm 1); they call the functions here where XLA's straightforward lowering of the plain
form is slow on one backend, mostly XLA:CPU. Each kernel states what it equals and on which
backend it departs from the plain form; elsewhere it is the plain form itself.

  dense              `[..., *in] x [*in, *out]`; on XLA:CPU with a backward pass whose weight
                     gradient is a row-major matmul (`dense_cpu`).
  attend_blocked     softmax attention over blocks of a few rows (XLA:CPU, large logits).
  end_fusion         an identity XLA cannot prove one, to end a fusion where it is placed.
  top_k              `lax.top_k` in two stages (XLA:CPU, large vocabularies);
                     `batch_local_top_k` keeps it shard-local under a mesh.
  bit sets           sets of candidates packed 32 to a uint32 word (`pack_bits`, `popcount`,
                     `nth_set_bit`, ...), so per-row bookkeeping costs `[B, N/32]`.
  threefry2x32       jax's Threefry-2x32 hash unrolled in jnp, bit for bit; `round_uniforms`
                     draws rejection sampling's uniforms with it.
  step_capacities    rows per while-loop step when a loop gathers its unfinished rows.

Pure jax / numpy; imports nothing from rso_jax but `partitioning`.
"""

from __future__ import annotations

import functools
from typing import Any, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from rso_jax import partitioning

Array = jax.Array
DType = Any


def _on_cpu() -> bool:
  return jax.default_backend() == "cpu"


# ------------------------------------------------------------------------------------------------
# Dense contraction.


def contract(x: Array, kernel: Array, n: int) -> Array:
  """`[..., *in] x [*in, *out] -> [..., *out]`: the last n dims of x against the first of kernel."""
  in_dims = tuple(range(x.ndim - n, x.ndim))
  return jax.lax.dot_general(x, kernel, ((in_dims, tuple(range(n))), ((), ())))


def dense(x: Array, kernel: Array, n: int) -> Array:
  """`contract(x, kernel, n)`; on XLA:CPU through `dense_cpu` (a faster backward pass)."""
  if _on_cpu():
    return dense_cpu(x, kernel, n)
  return contract(x, kernel, n)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def dense_cpu(x: Array, kernel: Array, n: int) -> Array:
  """`contract` with a backward pass XLA:CPU runs at full speed.

  Autodiff's weight gradient `dW = x^T g` is one dot contracting the leading (batch, length)
  dims of both operands, which XLA:CPU runs through a transposed-LHS kernel at about half the
  speed of a plain matmul (49 such dots in a T5-small policy step). Here `x^T` is materialized
  first (`[*in, batch...]`, a copy the barrier keeps XLA from folding back into the dot), so
  the dot is a plain row-major matmul. Same values as autodiff up to float summation order.
  """
  return contract(x, kernel, n)


def _dense_cpu_fwd(x, kernel, n):
  return contract(x, kernel, n), (x, kernel)


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


dense_cpu.defvjp(_dense_cpu_fwd, _dense_cpu_bwd)


# ------------------------------------------------------------------------------------------------
# Attention without a cache, in blocks of rows.

# Masked logits: finite, so a row with every key masked gives uniform weights, never NaN. The
# batched attention of `network.MultiHeadAttention` masks with the same value.
NEG_INF = -1e10

BLOCK_BYTES = 1 << 20  # float32 attention logits per block of `attend_blocked`


def use_blocked_attention(logit_bytes: int) -> bool:
  """Whether attention without a cache runs in blocks of rows (`attend_blocked`): on XLA:CPU,
  when its float32 logits exceed one block. Smaller ones keep the batched form and with it their
  float results."""
  return _on_cpu() and logit_bytes > BLOCK_BYTES


def rows_per_block(local_rows: int, row_bytes: int, budget: int) -> int:
  """The largest divisor of `local_rows` that is at most `budget // row_bytes` (and at least 2
  when `local_rows` is even): the attention logits of one block stay about `budget` bytes."""
  cap = max(2, budget // max(row_bytes, 1))
  return max(d for d in range(1, min(cap, local_rows) + 1) if local_rows % d == 0)


def attend_blocked(query: Array, key: Array, value: Array, bias: Optional[Array],
                   mask: Optional[Array], dtype: DType, budget: Optional[int] = None,
                   batch_shards: int = 1) -> Array:
  """Attention over blocks of a few rows at a time (no dropout, one query row per key/value row).

  `query` `[B, Lq, H, D]`, `key` / `value` `[B, Lk, H, D]`, `bias` `[1, H, Lq, Lk]` or None,
  `mask` boolean `[B or 1, 1, Lq or 1, Lk]` or None -> `[B, Lq, H, D]`: the batched einsum's
  values up to float summation order. `budget`: bytes of float32 logits per block (default
  `BLOCK_BYTES`). `batch_shards`: how many ways the mesh splits the batch (it must divide B).

  XLA:CPU runs the batched form over the whole `[B, H, Lq, Lk]` logits (339 MB per layer for
  128 rows of 332 tokens), its two dots through transposed layouts. A `lax.map` over blocks
  whose logits stay near `budget`, both dots in plain row-major layouts, never holds the whole
  logits. Each step takes the same few rows from every batch shard, so no row leaves its
  device.
  """
  b, lq, h, d = query.shape
  lk = key.shape[1]
  shards = batch_shards
  rows = rows_per_block(b // shards, h * lq * lk * 4, budget or BLOCK_BYTES)
  steps = b // (shards * rows)

  def blocks(x):  # [B, ...] -> [steps, shards * rows, ...]: step i, rows i*rows.. of each shard
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
      logits = jnp.where(m, logits, NEG_INF)
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


# ------------------------------------------------------------------------------------------------
# Fusion control.


def end_fusion(x: Array, token_ids: Array) -> Array:
  """`x` `[B, L, E]` unchanged, through a select on `token_ids >= 0` `[B, L]` (ids are >= 0).

  XLA cannot prove the select an identity, so on XLA:CPU it ends the YNNPACK fusion of the ops
  before it. Without it the encoder's last layer (its four dots), the final norm and the
  reader's reduction (a reward model's pooling) form one YNNPACK subgraph that runs well below
  the speed of the same dots alone.
  """
  return jnp.where((token_ids >= 0)[..., None], x, 0.0)


# ------------------------------------------------------------------------------------------------
# Top-k.


TOP_K_CHUNK = 32


def top_k(x: Array, k: int, chunk: int = TOP_K_CHUNK) -> Tuple[Array, Array]:
  """`jax.lax.top_k(x, k)` over the last dim of `[R, V]`: the same values and ids, same order.

  On CPU, for a vocabulary much larger than k, in two stages: every one of the k largest
  values lies in a chunk of `chunk` consecutive ids whose maximum is >= the k-th largest
  value, and at most k chunks have one, so the k chunks with the largest maxima hold them all.
  Those chunks, taken in id order, are searched for the k largest (`[R, k * chunk]` instead of
  `[R, V]`). Ties keep `lax.top_k`'s order (lower id first): chunks with equal maxima are taken
  lower id first, and the tied values `lax.top_k` keeps lie in a prefix of them. XLA:CPU's TopK
  is a per-row partial sort; the two stages cost a max-reduce over the row and two small sorts.
  Elsewhere (GPU / TPU TopK kernels) and for small vocabularies it is `lax.top_k` itself.
  """
  r, v = x.shape
  n_chunks = -(-v // chunk)
  if not _on_cpu() or n_chunks < 4 * k:
    return tuple(jax.lax.top_k(x, k))
  if n_chunks * chunk != v:  # -inf at the end: after every real id in lax.top_k's order
    x = jnp.pad(x, ((0, 0), (0, n_chunks * chunk - v)), constant_values=-jnp.inf)
  blocks = x.reshape(r, n_chunks, chunk)  # [R, V] -> [R, C, chunk]
  _, top_chunks = jax.lax.top_k(jnp.max(blocks, axis=-1), k)  # [R, C] -> [R, k]
  top_chunks = jnp.sort(top_chunks, axis=-1)  # id order, for lax.top_k's order of ties
  # [R, k, chunk] -> [R, k * chunk] candidates, in id order
  cand = jnp.take_along_axis(blocks, top_chunks[:, :, None], axis=1).reshape(r, k * chunk)
  vals, j = jax.lax.top_k(cand, k)  # [R, k]
  ids = jnp.take_along_axis(top_chunks, j // chunk, axis=-1) * chunk + j % chunk
  return vals, ids.astype(jnp.int32)


def batch_local_top_k(x: Array, k: int) -> Tuple[Array, Array]:
  """`top_k` over the last dim of `[R, V]`, computed shard-locally along the batch.

  XLA's SPMD partitioner replicates the TopK custom call (it would all-gather the `[R, V]`
  logits onto every device), so under a mesh context (`jax.set_mesh`) with data / fsdp axes
  the rows are split with `shard_map` instead.
  """
  mesh = jax.sharding.get_abstract_mesh()
  axes = () if mesh.empty else tuple(
      a for a in partitioning.BATCH_AXES if a in mesh.axis_names and mesh.shape[a] > 1)
  size = int(np.prod([mesh.shape[a] for a in axes])) if axes else 1
  if size == 1 or x.shape[0] % size:
    return top_k(x, k)
  spec = P(axes if len(axes) > 1 else axes[0], None)
  return jax.shard_map(lambda y: top_k(y, k), mesh=mesh, in_specs=spec,
                       out_specs=(spec, spec))(x)


# ------------------------------------------------------------------------------------------------
# Bit sets: sets of candidates packed 32 per uint32 word, bit l of word w being candidate
# 32·w + l.

_U32 = jnp.uint32
ALL_BITS = 0xFFFFFFFF


def popcount(x: Array) -> Array:
  """Set bits of each uint32, as int32."""
  return jax.lax.population_count(x).astype(jnp.int32)


def lowmask(n: Array) -> Array:
  """uint32 with bits [0, n) set, for int32 n in [0, 32]."""
  n = jnp.asarray(n, jnp.int32)
  ones = (_U32(1) << jnp.clip(n, 0, 31).astype(_U32)) - _U32(1)
  return jnp.where(n >= 32, _U32(ALL_BITS), ones)


def pack_bits(bits: Array) -> Array:
  """bool [..., 32] -> uint32 [...]."""
  shifts = jnp.arange(32, dtype=_U32)
  return jnp.sum(jnp.where(bits, _U32(1) << shifts, _U32(0)), axis=-1,
                 dtype=_U32)


def unpack_bits(words: Array) -> Array:
  """uint32 [...] -> bool [..., 32]."""
  return ((words[..., None] >> jnp.arange(32, dtype=_U32)) & _U32(1)) == 1


def nth_set_bit(words: Array, r: Array) -> Array:
  """words [..., W], r [...] -> index (into 32·W) of the r-th set bit.

  The index of the r-th (0-based) set bit is the number of positions whose
  inclusive prefix popcount is <= r; 32·W when fewer than r + 1 bits are set.
  """
  prefix = jnp.zeros(r.shape, jnp.int32)
  index = jnp.zeros(r.shape, jnp.int32)
  upto = lowmask(jnp.arange(1, 33, dtype=jnp.int32))  # [32]
  for g in range(words.shape[-1]):
    w = words[..., g, None]
    inclusive = prefix[..., None] + popcount(w & upto)  # [..., 32]
    index = index + jnp.sum(inclusive <= r[..., None], axis=-1,
                            dtype=jnp.int32)
    prefix = prefix + popcount(words[..., g])
  return index


def bits_through(t: Array, num_words: int) -> Array:
  """t [B] -> [B, W] words with the bits of candidates 0..t set."""
  g = jnp.arange(num_words, dtype=jnp.int32)
  return lowmask(jnp.clip(t[:, None] - 32 * g + 1, 0, 32))


# ------------------------------------------------------------------------------------------------
# Threefry.


def _rotl32(x: Array, d: int) -> Array:
  return (x << _U32(d)) | (x >> _U32(32 - d))


def threefry2x32(k0: Array, k1: Array, x0: Array,
                 x1: Array) -> tuple[Array, Array]:
  """Threefry-2x32 (20 rounds), bit-identical to jax's threefry2x32_p.

  Written unrolled in jnp so XLA fuses it with its consumers; jax lowers its
  own primitive to a rolled loop on CPU.
  """
  ks = (k0, k1, k0 ^ k1 ^ _U32(0x1BD11BDA))
  rotations = ((13, 15, 26, 6), (17, 29, 16, 24))
  x0, x1 = x0 + ks[0], x1 + ks[1]
  for i in range(5):
    for r in rotations[i % 2]:
      x0 = x0 + x1
      x1 = _rotl32(x1, r) ^ x0
    x0 = x0 + ks[(i + 1) % 3]
    x1 = x1 + ks[(i + 2) % 3] + _U32(i + 1)
  return x0, x1


def bits_to_uniform(bits: Array) -> Array:
  """uint32 -> float32 U[0, 1) exactly as jax.random.uniform (23 bits)."""
  return jax.lax.bitcast_convert_type((bits >> 9) | _U32(0x3F800000),
                                      jnp.float32) - 1.0


def round_uniforms(key: Any, rows: Array, rnd: Array, h: int) -> tuple[Array, Array]:
  """float32 U[0, 1) for rejection sampling's prompts rows[C] in their rounds rnd[C].

  Returns two [C, h, 32] halves: u0[c, g, l] belongs to candidate 32·g + l
  and u1[c, g, l] to candidate 32·h + 32·g + l. For threefry keys both are
  the two output words of one hash of the counter (row, rnd·32·h + 32·g + l);
  other key types use `jax.random.bits(fold_in(fold_in(key, row), rnd))`.
  The draws depend only on (key, row, round, candidate), never on which
  other prompts share the step.
  """
  shape = (rows.shape[0], h, 32)
  if str(jax.random.key_impl(key)) == "threefry2x32":
    kd = jax.random.key_data(key)
    x0 = jnp.broadcast_to(rows.astype(_U32)[:, None, None], shape)
    x1 = (rnd.astype(_U32)[:, None, None] * _U32(32 * h) +
          jax.lax.broadcasted_iota(_U32, shape, 1) * _U32(32) +
          jax.lax.broadcasted_iota(_U32, shape, 2))
    b0, b1 = threefry2x32(kd[0], kd[1], x0, x1)
  else:
    row_bits = jax.vmap(lambda b, t: jax.random.bits(
        jax.random.fold_in(jax.random.fold_in(key, b), t), (2, h, 32),
        _U32))(rows, rnd)
    b0, b1 = row_bits[:, 0], row_bits[:, 1]
  return bits_to_uniform(b0), bits_to_uniform(b1)


# ------------------------------------------------------------------------------------------------
# While loops over rows that finish at different steps.


def step_capacities(batch: int, sharded: bool = False) -> list[int]:
  """Rows per while-loop step: all B, then B/4 (if >= 256).

  When few rows need the late steps (rejection sampling's late rounds), a step that gathers
  only the unfinished rows, once at most a quarter are left, does less work (results do not
  change). Each extra size costs one more compiled copy of the step; B/2 and B/8 as well save
  little for about twice the compile time. Not used for a batch explicitly sharded over
  devices: the gather would cross devices.
  """
  if sharded or batch // 4 < 256:
    return [batch]
  return [batch, batch // 4]


def explicitly_sharded(x: Array) -> bool:
  """True for an array whose type carries an Explicit sharding of an axis."""
  spec = getattr(getattr(jax.typeof(x), "sharding", None), "spec", ())
  return any(axis is not None for axis in spec)
