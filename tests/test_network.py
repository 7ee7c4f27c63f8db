"""network.py: cached decoding vs. full forward, shared encoder, padding, dropout, config, gin."""

import dataclasses
import os

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rso_jax import kernels
from rso_jax import network

CFG = network.T5Config()  # tiny
SHALLOW = dataclasses.replace(CFG, num_encoder_layers=1, num_decoder_layers=1)
# Tests check numerics, not speed: skip XLA's backend optimizations to cut compile time.
FAST_COMPILE = {"xla_backend_optimization_level": 0}
GIN_DIR = os.path.join(os.path.dirname(__file__), os.pardir, "gin", "models")


def random_params(cfg: network.T5Config, seed: int = 0):
  """Params with the tree and shapes of `init` (from `jax.eval_shape`), drawn in NumPy.

  Kernels ~ N(0, 1/fan_in) (queries also / sqrt(head_dim), as T5 folds the attention scale into
  them), embeddings ~ N(0, 1), norm scales ~ 1 + N(0, 0.1^2). Skips compiling `init`, which
  costs ~10 s of XLA compile time on a loaded 2-core machine.
  """
  z = jnp.zeros((1, 1), jnp.int32)
  abstract = nn.unbox(jax.eval_shape(
      lambda: network.Transformer(cfg).init(jax.random.key(0), z, z, z,
                                            enable_dropout=False))["params"])
  rng = np.random.RandomState(seed)

  def draw(path, leaf):
    names = [getattr(k, "key", "") for k in path]
    shape = leaf.shape
    if names[-1] == "scale":
      return (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
    if names[-1] in ("embedding", "rel_embedding"):
      return rng.standard_normal(shape).astype(np.float32)
    fan_in = shape[0] if names[-2] in ("query", "key", "value") else int(np.prod(shape[:-1]))
    std = fan_in ** -0.5 / (np.sqrt(cfg.head_dim) if names[-2] == "query" else 1.0)
    return (std * rng.standard_normal(shape)).astype(np.float32)

  return jax.tree_util.tree_map_with_path(draw, abstract)


def _init(cfg: network.T5Config = CFG, seed: int = 0):
  return network.Transformer(cfg), random_params(cfg, seed)


@pytest.fixture(scope="module")
def tiny():
  return _init()


def _forward(cfg: network.T5Config = CFG, enable_dropout: bool = False):
  """Jitted full forward `(params, enc [B, Le], dec [B*N, Ld], tgt|None, rng) -> [B*N, Ld, V]`."""
  model = network.Transformer(cfg)

  def fwd(params, enc, dec, tgt, rng):
    return model.apply({"params": params}, enc, dec, tgt, enable_dropout=enable_dropout,
                       rngs={"dropout": rng})
  return jax.jit(fwd, compiler_options=FAST_COMPILE)


def _encode(model):
  return jax.jit(lambda p, e: model.apply({"params": p}, e, method=network.Transformer.encode),
                 compiler_options=FAST_COMPILE)


def _tokens(rng: np.random.RandomState, shape, lengths):
  x = rng.randint(2, CFG.vocab_size, shape)
  for row, n in enumerate(lengths):
    x[row, n:] = 0
  return x


@pytest.mark.parametrize("num_decodes,windows", [(1, None), (3, None), (3, (2, 4, 7))])
def test_cached_decoding_matches_full_forward(tiny, num_decodes, windows):
  """Step-by-step cached logits `[B*N, 1, V]` equal the full causal forward, position by position.

  The N candidates of a prompt differ; the oracle runs each candidate with its own copy of the
  prompt (no sharing), the cached path encodes each prompt once. With `windows`, the
  self-attention caches start at the first window and are grown (`grow_decode_cache`) so that
  step t runs with caches of the smallest window > t, as the sampler does.
  """
  model, params = tiny
  b, n, length = 2, num_decodes, 7
  rng = np.random.RandomState(num_decodes)
  enc = _tokens(rng, (b, 9), (9, 5))                      # [B, Le], prompt 1 padded
  dec = rng.randint(2, CFG.vocab_size, (b * n, length))   # [B*N, Ld] candidates, prompt-major
  dec[:, 0] = 0                                           # BOS
  enc_rep = np.repeat(enc, n, axis=0)                     # [B*N, Le] oracle: no sharing
  fwd = _forward()
  full = fwd(params, enc_rep, dec, None, jax.random.key(0))

  encoded = _encode(model)(params, enc)
  assert encoded.shape == (b, 9, CFG.emb_dim)  # the encoder ran on B rows, not B*N

  def step(params, cache, tok, prefill, window):
    return model.apply({"params": params, "cache": cache}, encoded, enc, tok, decode=True,
                       max_decode_length=length, prefill_cross_cache=prefill,
                       decode_window=window, mutable=["cache"],
                       method=network.Transformer.decode)

  first = length if windows is None else windows[0]
  cache_shapes = jax.eval_shape(
      lambda: model.apply({"params": params}, encoded, enc, jnp.zeros((b * n, first), jnp.int32),
                          decode=True, max_decode_length=length, mutable=["cache"],
                          method=network.Transformer.decode))[1]["cache"]
  cache = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), cache_shapes)
  # Cross-attention keys/values are cached once per prompt, in the cache layout [B, H, D, Le]
  # (not [B*N, ...]); the self-attention cache is [B*N, H, D, Ld].
  cross = cache["decoder"]["layers_0"]["encoder_decoder_attention"]["cached_key"]
  assert cross.shape == (b, CFG.num_heads, CFG.head_dim, 9)
  own = cache["decoder"]["layers_0"]["self_attention"]["cached_key"]
  assert own.shape == (b * n, CFG.num_heads, CFG.head_dim, first)
  step_jit = jax.jit(step, static_argnums=(3, 4), compiler_options=FAST_COMPILE)
  for t in range(length):
    window = None if windows is None else min(w for w in windows if w > t)
    if window is not None and window > cache["decoder"]["layers_0"]["self_attention"][
        "cached_key"].shape[-1]:
      cache = network.grow_decode_cache(cache, window)
      # grown: the self-attention caches only, zero columns appended
      assert cache["decoder"]["layers_1"]["self_attention"]["cached_value"].shape[-1] == window
      assert cache["decoder"]["layers_0"]["encoder_decoder_attention"]["cached_key"].shape == (
          cross.shape)
    logits, mutated = step_jit(params, cache, dec[:, t:t + 1], t == 0, window)
    cache = mutated["cache"]
    np.testing.assert_allclose(np.asarray(logits[:, 0]), np.asarray(full[:, t]),
                               atol=2e-5, rtol=1e-5, err_msg=f"step {t}")

  # The shared-encoder full forward (decoder batch B*N, encoder batch B) agrees too.
  shared = fwd(params, enc, dec, None, jax.random.key(0))
  np.testing.assert_allclose(np.asarray(shared), np.asarray(full), atol=2e-5, rtol=1e-5)


def test_encoder_padding_is_masked(tiny):
  """Extra padding (id 0) changes neither the encoder output at real positions nor the logits."""
  model, params = tiny
  rng = np.random.RandomState(0)
  enc = _tokens(rng, (2, 6), (6, 4))
  enc_long = np.concatenate([enc, np.zeros((2, 5), enc.dtype)], axis=1)
  tgt = _tokens(rng, (2, 5), (5, 3))
  dec = np.concatenate([np.zeros((2, 1), tgt.dtype), tgt[:, :-1]], axis=1)
  encode = _encode(model)
  short, long = np.asarray(encode(params, enc)), np.asarray(encode(params, enc_long))
  np.testing.assert_allclose(long[0, :6], short[0], atol=1e-5)
  np.testing.assert_allclose(long[1, :4], short[1, :4], atol=1e-5)
  fwd = _forward()
  logits = lambda e: fwd(params, e, dec, tgt, jax.random.key(0))
  np.testing.assert_allclose(np.asarray(logits(enc_long)), np.asarray(logits(enc)), atol=1e-5)
  # Padding really is masked: the same token ids unmasked (id 1 instead of 0) change row 1.
  enc_unmasked = np.where(enc_long == 0, 1, enc_long)
  assert np.abs(np.asarray(logits(enc_unmasked)) - np.asarray(logits(enc)))[1].max() > 1e-3


def test_decoder_target_padding_does_not_leak(tiny):
  """With `decoder_target_tokens`, logits at real positions ignore what follows (causality)."""
  model, params = tiny
  rng = np.random.RandomState(1)
  enc = _tokens(rng, (2, 6), (6, 6))
  tgt = _tokens(rng, (2, 6), (6, 3))
  dec = np.concatenate([np.zeros((2, 1), tgt.dtype), tgt[:, :-1]], axis=1)
  fwd = _forward()
  base = np.asarray(fwd(params, enc, dec, tgt, jax.random.key(0)))
  dec2 = dec.copy()
  dec2[1, 4:] = 7  # garbage after the end of row 1
  other = np.asarray(fwd(params, enc, dec2, tgt, jax.random.key(0)))
  np.testing.assert_allclose(other[1, :3], base[1, :3], atol=1e-5)
  np.testing.assert_allclose(other[0], base[0], atol=1e-5)


def test_dropout():
  """Dropout off is deterministic; on, it follows the `dropout` key."""
  cfg = dataclasses.replace(SHALLOW, dropout_rate=0.3)
  params = random_params(cfg, seed=1)
  rng = np.random.RandomState(2)
  enc = _tokens(rng, (2, 6), (6, 6))
  dec = _tokens(rng, (2, 5), (5, 5))
  fwds = {on: _forward(cfg, on) for on in (False, True)}
  run = lambda on, seed: np.asarray(fwds[on](params, enc, dec, dec, jax.random.key(seed)))
  off0, off1 = run(False, 0), run(False, 1)
  np.testing.assert_array_equal(off0, off1)  # dropout off: deterministic, rng unused
  np.testing.assert_array_equal(run(True, 5), run(True, 5))  # same key, same mask
  assert np.abs(run(True, 5) - run(True, 6)).max() > 1e-3  # dropout on really drops
  assert np.abs(run(True, 5) - off0).max() > 1e-3


def test_remat_and_bfloat16():
  """remat=True gives the same loss gradients; bfloat16 activations stay close, logits f32."""
  params = random_params(SHALLOW, seed=2)
  rng = np.random.RandomState(3)
  enc = _tokens(rng, (2, 6), (6, 4))
  tgt = _tokens(rng, (2, 5), (5, 3))
  dec = np.concatenate([np.zeros((2, 1), tgt.dtype), tgt[:, :-1]], axis=1)

  def loss(cfg, p):
    logits = network.Transformer(cfg).apply({"params": p}, enc, dec, tgt, enable_dropout=False)
    logp = jax.nn.log_softmax(logits)
    nll = -jnp.take_along_axis(logp, tgt[..., None], -1)[..., 0]
    return jnp.sum(nll * (tgt > 0)) / jnp.sum(tgt > 0)

  grad = lambda cfg: jax.jit(jax.grad(lambda p: loss(cfg, p)), compiler_options=FAST_COMPILE)
  g0 = grad(SHALLOW)(params)
  g1 = grad(dataclasses.replace(SHALLOW, remat=True))(params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5), g0, g1)
  bf = dataclasses.replace(SHALLOW, dtype="bfloat16")
  logits32 = _forward(SHALLOW)(params, enc, dec, tgt, jax.random.key(0))
  logits16 = _forward(bf)(params, enc, dec, tgt, jax.random.key(0))
  assert logits16.dtype == jnp.float32
  scale = float(jnp.abs(logits32).max())
  assert float(jnp.abs(logits16 - logits32).max()) < 0.05 * scale


@pytest.mark.parametrize("field,value", [
    ("vocab_size", 0), ("num_heads", -1), ("num_decoder_layers", 0),
    ("mlp_activations", ("gelu", "bogus")), ("dropout_rate", 1.0), ("dropout_rate", -0.1),
    ("dtype", "float33"), ("param_dtype", "f32x"),
])
def test_config_validation(field, value):
  with pytest.raises(ValueError, match=f"T5Config.{field}"):
    network.T5Config(**{field: value})


def test_decode_errors(tiny):
  model, params = tiny
  enc = np.ones((1, 3), np.int32)
  with pytest.raises(ValueError, match="max_decode_length"):
    jax.eval_shape(lambda: model.apply({"params": params}, enc, enc, decode=True,
                                       enable_dropout=False, mutable=["cache"]))
  with pytest.raises(ValueError, match="multiple"):  # 3 candidates for 2 prompts
    jax.eval_shape(lambda: model.apply({"params": params}, np.ones((2, 3), np.int32),
                                       np.ones((3, 2), np.int32), enable_dropout=False))


# (emb, heads, head_dim, mlp, layers, vocab) of T5 v1.1 (T5X t5_1_1/*.gin).
GIN_SIZES = {
    "tiny": (128, 4, 32, 256, 2, 384),
    "small": (512, 6, 64, 1024, 8, 32128),
    "base": (768, 12, 64, 2048, 12, 32128),
    "large": (1024, 16, 64, 2816, 24, 32128),
    "xl": (2048, 32, 64, 5120, 24, 32128),
    "xxl": (4096, 64, 64, 10240, 24, 32128),
}


@pytest.mark.parametrize("name", list(GIN_SIZES))
def test_gin_model_sizes(name):
  gin.clear_config()
  try:
    gin.parse_config_files_and_bindings([os.path.join(GIN_DIR, f"{name}.gin")], [])
    cfg = gin.query_parameter("%MODEL_CONFIG").scoped_configurable_fn()
  finally:
    gin.clear_config()
  assert isinstance(cfg, network.T5Config)
  emb, heads, head_dim, mlp, layers, vocab = GIN_SIZES[name]
  assert (cfg.emb_dim, cfg.num_heads, cfg.head_dim, cfg.mlp_dim) == (emb, heads, head_dim, mlp)
  assert (cfg.num_encoder_layers, cfg.num_decoder_layers, cfg.vocab_size) == (layers, layers,
                                                                                vocab)
  assert cfg.mlp_activations == ("gelu", "linear") and not cfg.logits_via_embedding
  assert cfg.dropout_rate == 0.0 and cfg.param_dtype == "float32"
  assert cfg.dtype == ("float32" if name == "tiny" else "bfloat16")
  assert cfg.remat == (name in ("xl", "xxl"))


def test_relative_position_bias_row_of_a_decode_step_equals_the_full_matrix_row():
  """A decode step computes only its own row of the decoder's bias (O(L), not O(L^2)): equal to
  row p of the full [1, H, L, L] matrix at every position, log-spaced buckets included."""
  rel = network.RelativePositionBiases(num_buckets=32, max_distance=128, num_heads=3,
                                       bidirectional=False)
  length = 200  # beyond max_distance: exact, log-spaced and clipped buckets all occur
  params = rel.init(jax.random.key(0), length, length)
  full = np.asarray(rel.apply(params, length, length))  # [1, H, L, L]
  row = jax.jit(lambda p: rel.apply(params, 1, length, query_position=p))
  for p in (0, 1, 15, 16, 17, 63, 127, 128, 150, 199):
    np.testing.assert_array_equal(np.asarray(row(jnp.int32(p))), full[:, :, p:p + 1], err_msg=p)
  with pytest.raises(ValueError, match="q_len = 1"):
    rel.apply(params, 2, length, query_position=jnp.int32(0))


@pytest.mark.parametrize("mesh_shape", [(2, 2, 2), (1, 1, 8)])
def test_blocked_attention_under_a_mesh_equals_the_einsum_path(tiny, monkeypatch, mesh_shape):
  """The tiny Transformer's logits (encoder padding, causal + target padding, cross attention
  shared by N = 2 candidates) with CPU's blocked attention, sharded over a mesh, equal those of
  the batched einsum path on one device."""
  from rso_jax import partitioning  # pylint: disable=g-import-not-at-top
  model, params = tiny
  rng = np.random.RandomState(3)
  enc = _tokens(rng, (16, 9), rng.randint(1, 10, 16))
  dec = _tokens(rng, (32, 6), rng.randint(1, 7, 32))
  fwd = lambda p, e, y: model.apply({"params": p}, e, y, y, enable_dropout=False)
  monkeypatch.setattr(kernels, "use_blocked_attention", lambda logit_bytes: False)
  want = jax.jit(fwd, compiler_options=FAST_COMPILE)(params, enc, dec)
  monkeypatch.undo()
  # Blocks of 2 rows (the floor): several steps per shard (4 rows of the encoder a shard on
  # (2, 2, 2), 16 on (1, 1, 8)).
  monkeypatch.setattr(kernels, "BLOCK_BYTES", 1)
  mesh = partitioning.create_mesh(mesh_shape)
  with partitioning.MeshRules(mesh):
    sharded = jax.device_put((enc, dec), partitioning.batch_sharding(mesh, 2))
    got = jax.jit(fwd, compiler_options=FAST_COMPILE)(params, *sharded)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
