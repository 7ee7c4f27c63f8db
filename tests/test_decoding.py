"""Tests for rso_jax/decoding.py: sampling law, log-probs, cache, shared encoder, EOS, sharding.

Oracles are independent of the sampler: NumPy (float64) recomputations of the proposal law
from full (uncached, teacher-forced) forward logits, and uncached step-by-step argmax.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from rso_jax import decoding
from rso_jax import network
from rso_jax import partitioning

# Chi-square goodness-of-fit: reject the sampler when the p-value is below this (fixed keys,
# so the outcome is deterministic; a correct sampler fails with probability 1e-3 per key).
CHI2_MIN_PVALUE = 1e-3


def _init(cfg: network.T5Config, logits_scale: float = 1.0):
  module = network.Transformer(cfg)
  enc = jnp.ones((2, 5), jnp.int32)
  boxed = jax.jit(lambda k: module.init(k, enc, enc, enc, enable_dropout=False))(
      jax.random.key(0))["params"]
  params = nn.unbox(boxed)
  # A larger output scale makes the next-token laws peaked, so truncation bites.
  params["decoder"]["logits_dense"]["kernel"] = (
      params["decoder"]["logits_dense"]["kernel"] * logits_scale)
  return module, params, boxed


@pytest.fixture(scope="module")
def tiny():
  return _init(network.T5Config(), logits_scale=3.0)


@pytest.fixture(scope="module")
def prompts():
  enc = np.random.RandomState(0).randint(3, 300, (4, 7)).astype(np.int32)
  enc[1, 4:] = 0  # padded prompts
  enc[3, 2:] = 0
  return jnp.asarray(enc)


@functools.partial(jax.jit, static_argnums=0)
def _full_logits(module, params, enc, targets):
  """Uncached teacher-forced logits `[R, L, V]` (decoder inputs = targets shifted right)."""
  dec_in = jnp.concatenate([jnp.zeros_like(targets[:, :1]), targets[:, :-1]], axis=1)
  return module.apply({"params": params}, enc, dec_in, targets, enable_dropout=False)


def _np_log_softmax(x):
  x = np.asarray(x, np.float64)
  m = np.max(x[np.isfinite(x)])
  return x - (m + np.log(np.sum(np.exp(x - m))))


def _np_proposal(logits, temperature, top_k, top_p):
  """NumPy law q of one step: pad removed, / T, top-k, then top-p on the top-k law.

  Returns log q `[V]` (-inf outside the support).
  """
  x = np.asarray(logits, np.float64).copy()
  x[0] = -np.inf
  x = x / temperature
  order = np.argsort(-x, kind="stable")
  order = order[np.isfinite(x[order])]
  if top_k is not None:
    order = order[:top_k]
  if top_p is not None:
    probs = np.exp(_np_log_softmax(x[order]))
    before = np.cumsum(probs) - probs
    order = order[before < top_p]
  out = np.full_like(x, -np.inf)
  out[order] = _np_log_softmax(x[order])
  return out


def _check_structure(out, length, eos_id=1):
  """EOS handling: 0 after EOS, no pad before it, lengths and finished consistent."""
  tokens = np.asarray(out.tokens)
  lengths = np.asarray(out.lengths)
  finished = np.asarray(out.finished)
  for b in range(tokens.shape[0]):
    for n in range(tokens.shape[1]):
      row = tokens[b, n]
      eos = np.flatnonzero(row == eos_id) if eos_id is not None else np.array([], int)
      want_len = int(eos[0]) + 1 if eos.size else length
      assert lengths[b, n] == want_len, (b, n, row)
      assert finished[b, n] == bool(eos.size), (b, n, row)
      assert np.all(row[:want_len] != 0), (b, n, row)
      assert np.all(row[want_len:] == 0), (b, n, row)


# Sampler configurations share compilations: (N=8, L=8, top_k=40, no top-p, EOS on) is reused
# by the greedy, EOS and sharding tests (temperature and eos_id are traced, not static).
_N, _L = 8, 8


def _paper_sample(module, params, prompts, key=1, **kwargs):
  kw = dict(num_decodes=_N, max_decode_length=_L, temperature=0.7, top_k=40, top_p=None)
  kw.update(kwargs)
  return decoding.sample(module, params, prompts, jax.random.key(key), **kw)


@pytest.mark.parametrize("temperature,top_k,top_p,eos_id", [(0.7, 40, None, 1),
                                                             (1.3, None, 0.8, None)])
def test_logps_match_score_and_numpy_oracle(tiny, prompts, temperature, top_k, top_p, eos_id):
  module, params, _ = tiny
  b, n, length = prompts.shape[0], _N, _L
  out = _paper_sample(module, params, prompts, temperature=temperature, top_k=top_k,
                      top_p=top_p, eos_id=eos_id)
  assert out.tokens.shape == (b, n, length) and out.tokens.dtype == jnp.int32
  assert out.lengths.shape == out.proposal_logps.shape == out.model_logps.shape == (b, n)
  _check_structure(out, length, eos_id)
  if eos_id is None:
    assert np.all(np.asarray(out.lengths) == length) and not np.asarray(out.finished).any()

  targets = decoding.tokens_to_decoder_targets(out.tokens)
  np.testing.assert_array_equal(decoding.decoder_targets_to_tokens(targets, n), out.tokens)
  scored = decoding.score(module, params, prompts, targets)
  np.testing.assert_allclose(np.asarray(scored).reshape(b, n), out.model_logps, atol=1e-4)

  # Independent oracle from full-forward logits.
  logits = np.asarray(_full_logits(module, params, prompts, targets))
  tokens, lengths = np.asarray(targets), np.asarray(out.lengths).reshape(-1)
  want_q, want_pi = np.zeros(b * n), np.zeros(b * n)
  for r in range(b * n):
    for t in range(lengths[r]):
      tok = tokens[r, t]
      log_q = _np_proposal(logits[r, t], temperature, top_k, top_p)
      assert np.isfinite(log_q[tok]), f"row {r} step {t}: token {tok} is outside q's support"
      want_q[r] += log_q[tok]
      want_pi[r] += _np_log_softmax(logits[r, t])[tok]
  np.testing.assert_allclose(np.asarray(out.proposal_logps).reshape(-1), want_q, rtol=1e-5,
                             atol=1e-4)
  np.testing.assert_allclose(np.asarray(out.model_logps).reshape(-1), want_pi, rtol=1e-5,
                             atol=1e-4)
  np.testing.assert_allclose(np.asarray(decoding.score_tokens(module, params, prompts,
                                                              targets)).sum(-1),
                             want_pi, rtol=1e-5, atol=1e-4)
  # Candidates of one prompt differ (the per-row draws are not shared).
  assert len({tuple(r) for r in np.asarray(out.tokens[0])}) > 1


def _chi2_pvalue(counts, probs, num):
  expected = num * probs
  big = expected >= 5
  obs = np.append(counts[big], counts[~big].sum())
  exp = np.append(expected[big], expected[~big].sum())
  if exp[-1] < 5:  # merge the small remainder into the smallest large bin
    j = np.argmin(exp[:-1])
    obs[j] += obs[-1]
    exp[j] += exp[-1]
    obs, exp = obs[:-1], exp[:-1]
  stat = np.sum((obs - exp) ** 2 / exp)
  return stats.chi2.sf(stat, len(exp) - 1), len(exp)


def _nucleus_between_orders(logits, temperature, top_k):
  """A top-p at which "top-k then top-p" and "top-p then top-k" keep different token sets.

  With sorted tempered probabilities, the top-k law's cumulative mass at rank i is the full
  law's divided by the top-k mass M < 1; any p strictly between the two drops rank i + 1 in the
  documented order and keeps it in the reversed one.
  """
  x = np.asarray(logits, np.float64).copy()
  x[0] = -np.inf
  full = np.sort(np.exp(_np_log_softmax(x / temperature)))[::-1]
  cum_full = np.cumsum(full)[:top_k]
  cum_k = cum_full / cum_full[-1]
  i = 2 + int(np.argmax((cum_k - cum_full)[2:top_k - 1]))  # keep >= 3 tokens
  return float((cum_full[i] + cum_k[i]) / 2)


@pytest.mark.parametrize("temperature,top_k,top_p", [(0.7, 40, None), (0.7, 5, "between")])
def test_first_token_distribution(tiny, prompts, temperature, top_k, top_p):
  module, params, _ = tiny
  num = 4096
  enc = prompts[:1]
  # Position 0 sees only the start token: reuse the [B * N, L] full forward of the other tests.
  logits = np.asarray(_full_logits(module, params, prompts,
                                   jnp.ones((prompts.shape[0] * _N, _L), jnp.int32)))[0, 0]
  if top_p == "between":
    top_p = _nucleus_between_orders(logits, temperature, top_k)
    reversed_q = _np_proposal(logits, temperature, None, top_p)  # top-p first ...
    reversed_q[np.argsort(-reversed_q)[top_k:]] = -np.inf  # ... then top-k
    assert np.isfinite(reversed_q).sum() != np.isfinite(
        _np_proposal(logits, temperature, top_k, top_p)).sum()
  out = decoding.sample(module, params, enc, jax.random.key(7), num_decodes=num,
                        max_decode_length=1, temperature=temperature, top_k=top_k, top_p=top_p)
  first = np.asarray(out.tokens[0, :, 0])
  log_q = _np_proposal(logits, temperature, top_k, top_p)
  support = np.isfinite(log_q)
  counts = np.bincount(first, minlength=logits.shape[-1])
  outside = np.flatnonzero(counts * ~support)
  assert outside.size == 0, f"truncated tokens sampled: {outside}"
  assert 3 <= support.sum() and np.exp(log_q).max() < 0.9, "law too trivial to test"
  pvalue, bins = _chi2_pvalue(counts[support], np.exp(log_q[support]), num)
  assert bins >= 3
  assert pvalue > CHI2_MIN_PVALUE, f"chi2 p-value {pvalue:.2e} over {bins} bins"
  # Power: the same counts reject the untruncated, untempered law.
  pi = np.exp(_np_log_softmax(logits))
  pvalue_pi, _ = _chi2_pvalue(counts, pi, num)
  assert pvalue_pi < 1e-6
  # The sequence log-probs of a one-token sample are the one-step laws.
  np.testing.assert_allclose(out.proposal_logps[0], log_q[first], atol=1e-4)
  np.testing.assert_allclose(out.model_logps[0], _np_log_softmax(logits)[first], atol=1e-4)


def test_decode_windows():
  assert decoding.decode_windows(1) == (1,)
  assert decoding.decode_windows(8) == (8,)
  assert decoding.decode_windows(32) == (32,)
  assert decoding.decode_windows(33) == (32, 33)
  assert decoding.decode_windows(256) == (32, 64, 128, 256)
  assert decoding.decode_windows(300) == (32, 64, 128, 256, 300)


def test_long_decode_across_windows(tiny, prompts):
  """A decode longer than the first window (L = 70: windows 32, 64, 70) keeps log pi exact.

  Every step after the first window attends over a wider prefix of the cache; the sampled
  sequences' log pi equal their teacher-forced scores (full forward, no cache), which fails if a
  step misses a cached position or reads a stale one.
  """
  module, params, _ = tiny
  length, n = 70, 2
  out = decoding.sample(module, params, prompts, jax.random.key(5), num_decodes=n,
                        max_decode_length=length, temperature=1.0, top_k=None, eos_id=None)
  assert np.all(np.asarray(out.lengths) == length)
  targets = decoding.tokens_to_decoder_targets(out.tokens)
  steps = np.asarray(decoding.score_tokens(module, params, prompts, targets))  # [B*N, L]
  np.testing.assert_allclose(steps.sum(-1), np.asarray(out.model_logps).reshape(-1),
                             rtol=1e-5, atol=1e-3)


def test_greedy_equals_uncached_argmax(tiny, prompts):
  module, params, _ = tiny
  b, length = prompts.shape[0], _L
  out = decoding.greedy(module, params, prompts, max_decode_length=length)
  assert out.tokens.shape == (b, 1, length)
  _check_structure(out, length)
  np.testing.assert_array_equal(out.proposal_logps, 0.0)
  # Uncached decode: one full forward per step, argmax over non-pad tokens.
  ref = np.zeros((b, length), np.int32)
  ref_logp = np.zeros(b)
  done = np.zeros(b, bool)
  for t in range(length):
    # Rows repeated N times to reuse the compiled [B * N, L] forward.
    logits = np.asarray(_full_logits(module, params, prompts,
                                      jnp.asarray(np.repeat(ref, _N, axis=0))))[::_N, t]
    tok = np.argmax(logits[:, 1:], axis=-1) + 1
    ref[:, t] = np.where(done, 0, tok)
    ref_logp += np.where(done, 0.0, [_np_log_softmax(l)[k] for l, k in zip(logits, tok)])
    done |= tok == 1
  np.testing.assert_array_equal(out.tokens[:, 0], ref)
  np.testing.assert_allclose(out.model_logps[:, 0], ref_logp, rtol=1e-5, atol=1e-4)
  # Temperature 0 in `sample` is greedy for every candidate, whatever the key.
  s = _paper_sample(module, params, prompts, key=3, temperature=0.0)
  np.testing.assert_array_equal(s.tokens, np.repeat(ref[:, None], _N, axis=1))
  np.testing.assert_array_equal(s.proposal_logps, 0.0)


def test_encoder_runs_once_per_prompt(tiny):
  module, params, _ = tiny
  b, n, le, length = 2, 64, 13, 6
  cfg = module.config
  enc = jnp.asarray(np.random.RandomState(1).randint(3, 300, (b, le)), jnp.int32)
  seen = []

  def record(next_fun, args, kwargs, context):
    mod = context.module
    if isinstance(mod, network.Encoder):
      seen.append(("encoder", args[0].shape))
    if isinstance(mod, network.MultiHeadAttention) and kwargs.get("cross"):
      seen.append(("cross_kv", args[1].shape))
    return next_fun(*args, **kwargs)

  # Trace the un-jitted sampler (a jit cache hit would skip the Python methods).
  fn = functools.partial(decoding._sample_jit.__wrapped__, module, num_decodes=n,
                         max_decode_length=length, top_k=40, use_top_p=False, use_eos=True,
                         greedy=False)
  with nn.intercept_methods(record):
    jaxpr = jax.make_jaxpr(fn)(params, enc, jax.random.key(0), 0.7, 1.0, 1)
  assert ("encoder", (b, le)) in seen
  assert all(s == (b, le) for k, s in seen if k == "encoder"), seen
  assert all(s == (b, le, cfg.emb_dim) for k, s in seen if k == "cross_kv"), seen

  # No array in the whole program holds an N-fold copy of per-prompt encoder data: anything
  # with an Le axis stays below B * N * Le * head_dim elements (cross-attention logits
  # [B, N, H, 1, Le] are the largest legitimate ones).
  def avals(jx):
    for eqn in jx.eqns:
      for v in eqn.outvars:
        yield v.aval
      for p in eqn.params.values():
        for sub in (p if isinstance(p, (list, tuple)) else [p]):
          if isinstance(sub, jax.extend.core.ClosedJaxpr):
            yield from avals(sub.jaxpr)
          elif isinstance(sub, jax.extend.core.Jaxpr):
            yield from avals(sub)

  limit = b * n * le * cfg.head_dim
  big = [a.shape for a in avals(jaxpr.jaxpr)
         if hasattr(a, "shape") and le in a.shape and np.prod(a.shape) >= limit]
  assert not big, f"N-fold encoder-sized arrays: {big}"
  cache_shapes = [a.shape for a in avals(jaxpr.jaxpr) if hasattr(a, "shape")
                  and a.shape == (b, le, cfg.num_heads, cfg.head_dim)]
  assert cache_shapes, "cross-attention K/V [B, Le, H, D] not found"


def test_eos_handling(tiny, prompts):
  module, params, _ = tiny
  # The tiny model rarely emits token 1, so end on the token it samples most often instead:
  # eos_id is a traced argument, this is the same compiled sampler.
  first = _paper_sample(module, params, prompts, key=5)
  eos = int(np.argmax(np.bincount(np.asarray(first.tokens).ravel(), minlength=2)[2:])) + 2
  out = _paper_sample(module, params, prompts, key=5, eos_id=eos)
  _check_structure(out, _L, eos)
  lengths, finished = np.asarray(out.lengths), np.asarray(out.finished)
  assert finished.sum() >= 4 and (lengths < _L).sum() >= 4, (eos, lengths)
  # Same key: identical up to and including the first EOS, zero after it.
  for b, n in zip(*np.nonzero(finished)):
    k = lengths[b, n]
    if first.lengths[b, n] >= k:
      np.testing.assert_array_equal(out.tokens[b, n, :k], first.tokens[b, n, :k])
  scored = decoding.score(module, params, prompts, decoding.tokens_to_decoder_targets(out.tokens))
  np.testing.assert_allclose(np.asarray(scored).reshape(lengths.shape), out.model_logps,
                             atol=1e-4)


def test_sharded_equals_unsharded(tiny, prompts):
  module, params, boxed = tiny
  want = _paper_sample(module, params, prompts, key=11)
  want_scores = decoding.score(module, params, prompts,
                               decoding.tokens_to_decoder_targets(want.tokens))

  mesh = partitioning.create_mesh((2, 2, 2))  # batch over data x fsdp, heads/vocab over tensor
  shardings = nn.unbox(partitioning.logical_shardings(jax.eval_shape(lambda: boxed), mesh))
  sharded_params = jax.tree.map(jax.device_put, params, shardings)
  encs = jax.device_put(prompts, partitioning.batch_sharding(mesh))
  with jax.set_mesh(mesh), nn.logical_axis_rules(partitioning.LOGICAL_RULES):
    # Inside the caller's own jit, as the sampling stage runs it.
    got = jax.jit(lambda p, e: _paper_sample(module, p, e, key=11))(sharded_params, encs)
    targets = jax.device_put(decoding.tokens_to_decoder_targets(got.tokens),
                             partitioning.batch_sharding(mesh))
    got_scores = decoding.score(module, sharded_params, encs, targets)
  assert got.tokens.sharding.spec[0] is not None, "output lost its batch sharding"
  np.testing.assert_array_equal(got.tokens, want.tokens)
  np.testing.assert_array_equal(got.lengths, want.lengths)
  np.testing.assert_allclose(got.model_logps, want.model_logps, atol=1e-4)
  np.testing.assert_allclose(got.proposal_logps, want.proposal_logps, atol=1e-4)
  np.testing.assert_allclose(got_scores, want_scores, atol=1e-4)


def test_bad_input_errors(tiny, prompts):
  module, params, _ = tiny
  key = jax.random.key(0)
  bad = [
      (dict(num_decodes=0), "num_decodes"),
      (dict(max_decode_length=0), "max_decode_length"),
      (dict(temperature=-1.0), "temperature"),
      (dict(temperature=float("nan")), "temperature"),
      (dict(top_k=0), "top_k"),
      (dict(top_p=0.0), "top_p"),
      (dict(top_p=1.5), "top_p"),
      (dict(eos_id=0), "eos_id"),
  ]
  for override, name in bad:
    kwargs = dict(num_decodes=2, max_decode_length=4)
    kwargs.update(override)
    with pytest.raises(ValueError, match=name):
      decoding.sample(module, params, prompts, key, **kwargs)
  with pytest.raises(ValueError, match="encoder_input_tokens"):
    decoding.sample(module, params, prompts[0], key, max_decode_length=4)
  with pytest.raises(ValueError, match="encoder_input_tokens"):
    decoding.sample(module, params, prompts.astype(jnp.float32), key, max_decode_length=4)
  with pytest.raises(ValueError, match="not a multiple"):
    decoding.score(module, params, prompts, jnp.ones((3, 4), jnp.int32))
  with pytest.raises(ValueError, match=r"\[B, N, L\]"):
    decoding.tokens_to_decoder_targets(jnp.ones((3, 4), jnp.int32))
