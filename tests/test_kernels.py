"""kernels.py: each speed kernel equals the plain form it stands for (values, ids, bits)."""

import functools

import jax
from jax.extend.random import threefry2x32_p
import jax.numpy as jnp
import numpy as np
import pytest

from rso_jax import kernels
from rso_jax import partitioning


@pytest.mark.parametrize("x_shape,k_shape,n", [((3, 5, 8), (8, 2, 4), 1),   # q/k/v projection
                                               ((3, 5, 2, 4), (2, 4, 8), 2),  # attention out
                                               ((7, 8), (8, 6), 1)])
def test_cpu_dense_gradient_equals_autodiff(x_shape, k_shape, n):
  """The CPU dense's hand-written backward (materialized x^T) = autodiff of the contraction."""
  rng = np.random.RandomState(0)
  x = jnp.asarray(rng.randn(*x_shape), jnp.float32)
  k = jnp.asarray(rng.randn(*k_shape), jnp.float32)
  out_shape = x_shape[:len(x_shape) - n] + k_shape[n:]
  probe = jnp.asarray(rng.randn(*out_shape), jnp.float32)
  loss = lambda f: lambda x, k: jnp.sum(jnp.tanh(f(x, k, n)) * probe)
  want = jax.grad(loss(kernels.contract), argnums=(0, 1))(x, k)
  got = jax.jit(jax.grad(loss(kernels.dense_cpu), argnums=(0, 1)))(x, k)
  np.testing.assert_allclose(kernels.dense_cpu(x, k, n), kernels.contract(x, k, n), rtol=1e-6)
  np.testing.assert_array_equal(kernels.dense(x, k, n), kernels.dense_cpu(x, k, n))  # on CPU
  for w, g in zip(want, got):
    assert w.shape == g.shape
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


def _numpy_attention(q, k, v, bias, mask):
  """Plain NumPy T5 attention, one (row, head) at a time: softmax(q k^T + bias, masked) v."""
  q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
  b, lq, h, _ = q.shape
  out = np.zeros(q.shape)
  for r in range(b):
    for j in range(h):
      logits = q[r, :, j] @ k[r, :, j].T  # [Lq, Lk]
      if bias is not None:
        logits = logits + np.asarray(bias, np.float64)[0, j]
      if mask is not None:
        m = np.broadcast_to(np.asarray(mask)[min(r, mask.shape[0] - 1), 0], logits.shape)
        logits = np.where(m, logits, -1e10)
      w = np.exp(logits - logits.max(-1, keepdims=True))
      out[r, :, j] = (w / w.sum(-1, keepdims=True)) @ v[r, :, j]
  return out


@pytest.mark.parametrize("b,lq,lk,mask_kind,budget", [
    (6, 5, 5, "keys", 1),          # encoder self-attention, blocks of 2 rows (3 steps)
    (6, 5, 5, "keys", 1 << 20),    # one block
    (5, 4, 4, "causal_keys", 1),   # decoder self-attention; 5 rows: blocks of 1
    (4, 3, 7, "keys", 1),          # cross attention (no bias)
    (4, 3, 3, "shared_causal", 1),  # one mask for every row
    (4, 3, 3, None, 1),
])
def test_cpu_blocked_attention_equals_numpy_oracle(b, lq, lk, mask_kind, budget):
  """`attend_blocked` (XLA:CPU's attention) = a NumPy oracle, values and gradients = autodiff
  of the batched einsum form (the path of other backends)."""
  rng = np.random.RandomState(b * 100 + lk)
  h, d = 3, 4
  q = jnp.asarray(rng.randn(b, lq, h, d), jnp.float32)
  k = jnp.asarray(rng.randn(b, lk, h, d), jnp.float32)
  v = jnp.asarray(rng.randn(b, lk, h, d), jnp.float32)
  bias = None if lq != lk else jnp.asarray(rng.randn(1, h, lq, lk), jnp.float32)
  lengths = rng.randint(1, lk + 1, b)
  keys = np.arange(lk)[None, :] < lengths[:, None]  # [B, Lk]
  causal = np.tril(np.ones((lq, lk), bool))
  mask = {"keys": keys[:, None, None, :], "causal_keys": causal[None, None] & keys[:, None, None],
          "shared_causal": causal[None, None], None: None}[mask_kind]
  mask = None if mask is None else jnp.asarray(mask)
  blocked = lambda q, k, v: kernels.attend_blocked(q, k, v, bias, mask, jnp.float32, budget)

  def einsum_form(q, k, v):  # the batched form MultiHeadAttention runs off CPU
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k)
    logits = logits if bias is None else logits + bias
    logits = logits if mask is None else jnp.where(mask, logits, -1e10)
    return jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(logits, -1), v)

  np.testing.assert_allclose(jax.jit(blocked)(q, k, v), _numpy_attention(q, k, v, bias, mask),
                             rtol=1e-5, atol=1e-5)
  probe = jnp.asarray(rng.randn(b, lq, h, d), jnp.float32)
  grad = lambda f: jax.jit(jax.grad(lambda *a: jnp.sum(jnp.tanh(f(*a)) * probe), (0, 1, 2)))
  for got, want in zip(grad(blocked)(q, k, v), grad(einsum_form)(q, k, v)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_rows_per_block():
  rows = functools.partial(kernels.rows_per_block, budget=1 << 20)
  assert rows(128, 6 * 332 * 332 * 4) == 2  # 2.6 MB of logits a row: the floor of 2 rows
  assert rows(128, 6 * 76 * 76 * 4) == 4    # 139 kB a row: 7 fit in 1 MB, 4 divides 128
  assert rows(16, 6 * 32 * 32 * 4) == 16    # every row in one block
  assert rows(7, 10 ** 7) == 1              # no divisor of 7 between 2 and 6
  assert rows(8, 100, budget=300) == 2


@pytest.mark.parametrize("case", ["normal", "ties", "few_finite"])
def test_top_k_equals_lax_top_k(case):
  """The two-stage top-k (large vocabularies on CPU) keeps lax.top_k's values, ids and order.

  Vocabularies of T5's size and of a size that is no multiple of the chunk; ties (integer
  logits, lax.top_k keeps the lower id first) and rows with fewer finite logits than k.
  """
  rng = np.random.RandomState(0)
  for v, k in ((32128, 40), (10007, 7)):
    x = rng.randn(12, v).astype(np.float32) * 3
    if case == "ties":
      x = np.round(x)
    elif case == "few_finite":
      x[:, :] = -np.inf
      x[np.arange(12), rng.randint(0, v, 12)] = 1.0  # one finite id per row ...
      x[:6, v - 1] = 0.5  # ... and the last id (a padded chunk's at V = 10,007) in half
    assert -(-v // kernels.TOP_K_CHUNK) >= 4 * k  # the two-stage path runs
    vals, ids = jax.jit(kernels.top_k, static_argnums=1)(jnp.asarray(x), k)
    ref_vals, ref_ids = jax.lax.top_k(jnp.asarray(x), k)
    np.testing.assert_array_equal(np.asarray(vals), np.asarray(ref_vals))
    np.testing.assert_array_equal(np.asarray(ids), np.asarray(ref_ids))
    # ... and an independent oracle: a stable sort by value, descending, lower id first.
    order = np.argsort(-x, axis=-1, kind="stable")[:, :k]
    np.testing.assert_array_equal(np.asarray(ids), order)
  # Shard-local along the batch (the sampler's path under a mesh): the rows split over 4
  # devices, each searched in two stages.
  mesh = partitioning.create_mesh((2, 2, 2))
  xs = jax.device_put(jnp.asarray(x), partitioning.batch_sharding(mesh))
  with jax.set_mesh(mesh):
    vals, ids = jax.jit(kernels.batch_local_top_k, static_argnums=1)(xs, k)
  np.testing.assert_array_equal(np.asarray(vals), np.asarray(ref_vals))
  np.testing.assert_array_equal(np.asarray(ids), np.asarray(ref_ids))


def test_threefry_matches_jax():
  kd = jax.random.key_data(jax.random.key(123))
  x0 = jnp.arange(40, dtype=jnp.uint32).reshape(5, 8)
  x1 = x0 * jnp.uint32(2654435761)
  mine = kernels.threefry2x32(kd[0], kd[1], x0, x1)
  ref = threefry2x32_p.bind(kd[0], kd[1], x0, x1)
  for a, b in zip(mine, ref):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_bit_sets_equal_numpy():
  """pack / unpack, popcount, the r-th set bit and the through-masks against NumPy bit lists."""
  rng = np.random.RandomState(0)
  bits = rng.rand(6, 3, 32) < 0.3  # [B, W, 32]: candidate 32 w + l
  words = kernels.pack_bits(jnp.asarray(bits))  # [B, W]
  np.testing.assert_array_equal(np.asarray(kernels.unpack_bits(words)), bits)
  np.testing.assert_array_equal(np.asarray(kernels.popcount(words)), bits.sum(-1))
  flat = bits.reshape(6, 96)
  for r in range(0, 40, 3):
    got = np.asarray(kernels.nth_set_bit(words, jnp.full((6,), r, jnp.int32)))
    want = [np.flatnonzero(row)[r] if r < row.sum() else 96 for row in flat]
    np.testing.assert_array_equal(got, want)
  t = jnp.asarray([0, 31, 32, 50, 95, 95], jnp.int32)
  through = np.asarray(kernels.unpack_bits(kernels.bits_through(t, 3))).reshape(6, 96)
  np.testing.assert_array_equal(through, np.arange(96)[None, :] <= np.asarray(t)[:, None])
  np.testing.assert_array_equal(np.asarray(kernels.lowmask(jnp.arange(33))),
                                [(1 << n) - 1 for n in range(33)])


def test_end_fusion_is_an_identity():
  x = jnp.arange(24, dtype=jnp.float32).reshape(2, 3, 4)
  np.testing.assert_array_equal(kernels.end_fusion(x, jnp.asarray([[0, 5, 0], [1, 2, 3]])), x)
