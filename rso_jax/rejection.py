"""Statistical rejection sampling (RSO, arXiv 2309.06657, Alg. 1), baselines.

Pure array code over a reward tensor `rewards[B, N]` (B prompts, N candidate
responses per prompt, sampled from the SFT policy) with an optional validity
mask `mask[B, N]`. Imports no model, no seqio, no gin.

Algorithm 1 (Appendix A.1), per prompt, with `k = num_samples`:

  accepted = []
  while len(accepted) < k:
    M = max reward over the candidates not yet accepted
    for each remaining candidate i, in index order:
      draw u_i ~ U[0, 1)
      if u_i < exp((r_i - M) / beta): accept i
      if len(accepted) == k: stop              # per candidate, not per round
    remove this round's accepted candidates

`statistical_rejection_sampling` reproduces this law exactly and vectorized:
each round draws one float32 uniform per (prompt, remaining candidate),
computes all accept decisions of the round at once, and keeps only the first
`k - accepted` of them (a prefix count along the candidate axis, done on
bit-packed words), which is the same as stopping the visit at the k-th
acceptance. The best remaining candidate has ratio exp(0) = 1 > u, so every
round accepts at least one candidate and at most k rounds are ever needed;
rounds run in a `lax.while_loop` until every prompt is done. The loop is
batched over B with no cross-row coupling except its stopping test, so B may
be sharded across devices (results do not depend on the sharding).

Limits: beta = 0 exactly is defined as top-k-over-N (ties accepted in index
order, in the same order as `top_k_over_n`); tiny beta behaves like it. Huge
beta makes every ratio ~1, so Algorithm 1 accepts the *first* k valid
candidates: since the N candidates are i.i.d. draws from pi_sft that is, in
law, a uniform random subsample (the paper's sft-sample-rank), but the
per-index inclusion frequencies are not k/N; use strategy "random" for an
index-uniform subsample.
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from rso_jax import kernels

Array = Any  # jax.Array or np.ndarray
PRNGKey = Any

MODES = ("paper", "single_pass")
STRATEGIES = ("rso", "random", "best_of_n", "top_k_over_n", "rest")
REST_THRESHOLD = 0.7  # ReST's filter on rewards rescaled to [0, 1] (the RSO paper's baseline)


class SelectionResult(NamedTuple):
  """The candidates a selector kept (a pytree).

  Attributes:
    indices: [B, k] int32 candidate indices into N, in acceptance order (for
      "rso": round by round, index order within a round). Padding slots hold 0
      (always in range); use `valid`.
    valid: [B, k] bool, True for a real selection. A prompt with fewer valid
      candidates than k gets all of them followed by valid=False padding; in
      "single_pass" mode the count also varies with the draws.
    rounds: [B] int32, rounds of Algorithm 1 started (0 for a prompt with no
      valid candidate; 1 for the non-RSO baselines).
    num_accepted: [B] int32, number of valid slots (= sum(valid, -1)).
    num_visited: [B] int32, candidate visits, i.e. uniforms actually consumed
      by Algorithm 1: in each round every remaining candidate up to and
      including the one whose acceptance reached k (candidates after it in
      that round are never visited). Baselines count every valid candidate.
    acceptance_rate: [B] float32, num_accepted / num_visited (0 when no
      candidate was visited). For "rso" this estimates Theorem 1's
      E_{y~pi_sft}[exp((r - r_max)/beta)] pooled over rounds; aggregate over
      prompts as sum(num_accepted) / sum(num_visited).
  """
  indices: Array
  valid: Array
  rounds: Array
  num_accepted: Array
  num_visited: Array
  acceptance_rate: Array


class ProposalCorrection(NamedTuple):
  """Log-probabilities of each candidate under pi_sft and the proposal q.

  Attributes:
    sft_logps: [B, N] log pi_sft(y_i | x), untempered (T=1, no top-k), nats.
    proposal_logps: [B, N] log q(y_i | x) of the distribution the candidates
      were actually drawn from (tempered / top-k / top-p), nats.
  """
  sft_logps: Array
  proposal_logps: Array


# ----------------------------------------------------------------------------
# Validation. Shapes, dtypes, num_samples, beta and mode are checked on the
# host before jit. Reward values are checked inside the jitted call (a count
# of non-finite scores among valid candidates comes back with the result)
# and raised on the host, which only works where values are concrete.
# ----------------------------------------------------------------------------


def _is_concrete(x: Any) -> bool:
  return not isinstance(x, jax.core.Tracer)


def _check_num_samples(num_samples: Any, num_candidates: int) -> int:
  if isinstance(num_samples, (bool, np.bool_)) or not isinstance(
      num_samples, (int, np.integer)):
    raise ValueError(
        f"num_samples must be a Python int (static), got {num_samples!r} "
        f"of type {type(num_samples).__name__}.")
  num_samples = int(num_samples)
  if num_samples < 1:
    raise ValueError(f"num_samples must be >= 1, got {num_samples}.")
  if num_samples > num_candidates:
    raise ValueError(
        f"num_samples={num_samples} exceeds the number of candidates "
        f"N={num_candidates} (rewards has shape [B, {num_candidates}]).")
  return num_samples


def _check_beta(beta: Any) -> Array:
  if beta is None:
    raise ValueError("beta is required for strategy 'rso' (paper: 0.5).")
  if np.ndim(beta) != 0:
    raise ValueError(f"beta must be a scalar, got shape {np.shape(beta)}.")
  if not _is_concrete(beta):
    return jnp.asarray(beta, jnp.float32)
  b = float(np.asarray(beta))
  if not math.isfinite(b) or b < 0:
    raise ValueError(f"beta must be finite and >= 0, got {b!r}.")
  return np.float32(b)


def _check_real(name: str, x: Array, shape: Sequence[int]) -> Array:
  if tuple(np.shape(x)) != tuple(shape):
    raise ValueError(f"{name} must have shape {tuple(shape)}, got "
                     f"{tuple(np.shape(x))}.")
  x = x if isinstance(x, (jax.Array, np.ndarray)) else np.asarray(x)
  dtype = np.dtype(x.dtype)
  if dtype == np.bool_ or not (np.issubdtype(dtype, np.floating) or
                               np.issubdtype(dtype, np.integer) or
                               dtype == jnp.bfloat16):
    raise ValueError(f"{name} must be a real numeric array, got dtype {dtype}.")
  return x


def _check_inputs(rewards: Array, num_samples: Any, mask: Optional[Array]):
  """Shape/dtype checks shared by all strategies; returns (r, mask, k)."""
  if np.ndim(rewards) != 2:
    raise ValueError(f"rewards must have shape [B, N], got shape "
                     f"{tuple(np.shape(rewards))}.")
  shape = tuple(np.shape(rewards))
  rewards = _check_real("rewards", rewards, shape)
  k = _check_num_samples(num_samples, shape[1])
  if mask is not None:
    if tuple(np.shape(mask)) != shape:
      raise ValueError(f"mask must have shape {shape} like rewards, got "
                       f"{tuple(np.shape(mask))}.")
    mask = mask if isinstance(mask, (jax.Array, np.ndarray)) else np.asarray(
        mask)
    if mask.dtype != np.bool_:
      raise ValueError(f"mask must be bool, got dtype {mask.dtype}.")
  return rewards, mask, k


def _to_float(x: Array) -> Array:
  """Upcasts ints and < 32-bit floats to float32 (never computes in bf16)."""
  x = jnp.asarray(x)
  if not jnp.issubdtype(x.dtype, jnp.floating) or jnp.finfo(x.dtype).bits < 32:
    x = x.astype(jnp.float32)
  return x


def _valid_or_all(mask: Optional[Array], shape: Sequence[int]) -> Array:
  return jnp.ones(shape, jnp.bool_) if mask is None else mask


def _raise_if_nonfinite(num_bad: Array, mask: Optional[Array],
                        named: Sequence[tuple[str, Array]]) -> None:
  """Raises ValueError naming the first non-finite valid entry, if any."""
  if not (_is_concrete(num_bad) and int(num_bad)):
    return
  arrays = [(name, np.asarray(x, np.float64)) for name, x in named]
  valid = (np.ones(arrays[0][1].shape, bool) if mask is None else
           np.asarray(mask))
  for name, x in arrays:
    bad = np.argwhere(valid & ~np.isfinite(x))
    if len(bad):
      b, n = (int(v) for v in bad[0])
      raise ValueError(
          f"{name}[{b}, {n}] = {float(x[b, n])} is not finite ({len(bad)} "
          f"non-finite value(s) among valid candidates); mask them out.")
  raise ValueError(  # Finite inputs whose combination overflowed.
      f"{int(num_bad)} score(s) r + beta*(sft_logps - proposal_logps) "
      f"overflow to a non-finite value.")


# ----------------------------------------------------------------------------
# Algorithm 1 on candidate sets packed 32 per uint32 word (`kernels.pack_bits`:
# bit l of word w is candidate 32·w + l), so bookkeeping costs [B, N/32].
# ----------------------------------------------------------------------------

_U32 = jnp.uint32


def _one_round(key, rows, rnd, s, rem, m, need, beta):
  """One round of Algorithm 1 for C prompts.

  Args: rows/rnd [C] prompt ids and their round numbers; s [C, 2, h, 32]
  scores; rem [C, 2, h] packed remaining candidates; m [C] max score over
  them; need [C] acceptances still wanted (0: the prompt sits this out).
  Returns (keep [C, W] packed accepted, rem' [C, 2, h], M' [C], n_kept,
  n_seen [C]).
  """
  c, _, h, _ = s.shape
  num_words = 2 * h
  neg_inf = jnp.array(-jnp.inf, s.dtype)
  active = need > 0
  u0, u1 = kernels.round_uniforms(key, rows, rnd, h)
  mb = m[:, None, None]
  remb = kernels.unpack_bits(rem)  # [C, 2, h, 32]

  def decide(u, sv, rb):
    # u < exp((r - M)/beta); exactly 1 at the max, so beta = 0 is top-k.
    ratio = jnp.exp(jnp.where(sv >= mb, 0, (sv - mb) / beta))
    return rb & active[:, None, None] & (u < ratio)

  acc0 = decide(u0, s[:, 0], remb[:, 0])
  acc1 = decide(u1, s[:, 1], remb[:, 1])
  # One variadic reduction over the 32 lanes, so that each hash is computed
  # once: packed accepts of both halves and the max score over the
  # candidates left after the round (the next M; a prompt that goes on to
  # another round had nothing truncated, so this is Algorithm 1's M).
  lane = _U32(1) << jax.lax.broadcasted_iota(_U32, acc0.shape, 2)
  left = jnp.maximum(jnp.where(remb[:, 0] & ~acc0, s[:, 0], neg_inf),
                     jnp.where(remb[:, 1] & ~acc1, s[:, 1], neg_inf))
  w0, w1, m_word = jax.lax.reduce(
      (jnp.where(acc0, lane, _U32(0)), jnp.where(acc1, lane, _U32(0)), left),
      (_U32(0), _U32(0), neg_inf),
      lambda a, b: (a[0] | b[0], a[1] | b[1], jnp.maximum(a[2], b[2])), (2,))
  acc_words = jnp.concatenate([w0, w1], axis=1)  # [C, W]
  rem = rem.reshape(c, num_words)
  # Stop at the need-th acceptance: later candidates are not visited.
  n_round = jnp.sum(kernels.popcount(acc_words), axis=1)
  stop = active & (n_round >= need)
  last = kernels.nth_set_bit(acc_words, jnp.maximum(need - 1, 0))
  upto = jnp.where(stop[:, None], kernels.bits_through(last, num_words),
                   _U32(kernels.ALL_BITS))
  keep = acc_words & upto
  seen = jnp.where(active[:, None], rem & upto, _U32(0))
  return (keep, (rem & ~keep).reshape(c, 2, h), jnp.max(m_word, axis=1),
          jnp.minimum(n_round, need), jnp.sum(kernels.popcount(seen), axis=1))


@functools.partial(jax.jit, static_argnames=("num_samples",))
def _rejection_core(
    key: PRNGKey, rewards: Array, mask: Optional[Array], beta: Array,
    sft_logps: Optional[Array], proposal_logps: Optional[Array],
    max_rounds: Array, num_samples: int) -> tuple[SelectionResult, Array]:
  """Algorithm 1 on scores[B, N] (finite where mask); see module docstring.

  Per round one fused pass over [B, N] computes every accept decision of the
  round and the next round's M; the rest (count, truncation at the k-th
  acceptance, visits, history) runs on packed [B, N/32] words. max_rounds
  (traced) is k for the paper's mode and 1 for single pass.
  """
  scores = _to_float(rewards)
  beta = jnp.asarray(beta).astype(scores.dtype)
  if sft_logps is not None:
    scores = scores + beta * (_to_float(sft_logps) - _to_float(proposal_logps))
  batch, n = scores.shape
  mask = _valid_or_all(mask, (batch, n))
  num_bad = jnp.sum(mask & ~jnp.isfinite(scores))
  h = -(-n // 64)
  if 64 * h != n:  # Pad to whole words with invalid candidates.
    scores = jnp.pad(scores, ((0, 0), (0, 64 * h - n)))
    mask = jnp.pad(mask, ((0, 0), (0, 64 * h - n)))
  s = scores.reshape(batch, 2, h, 32)
  valid = mask.reshape(batch, 2, h, 32)
  rem0 = kernels.pack_bits(valid)  # [B, 2, h]
  target = jnp.minimum(jnp.sum(kernels.popcount(rem0), axis=(1, 2)),
                       num_samples)
  m0 = jnp.max(jnp.where(valid, s, -jnp.inf), axis=(1, 2, 3))
  n_acc, rounds, visited, hist = _run_rounds(
      key, s, rem0, m0, target, beta, max_rounds, num_samples,
      sharded=kernels.explicitly_sharded(scores))
  indices, out_valid = _acceptance_order(hist, n_acc, num_samples)
  rate = jnp.where(visited > 0, n_acc / jnp.maximum(visited, 1), 0.0)
  return SelectionResult(indices.astype(jnp.int32), out_valid, rounds, n_acc,
                         visited, rate.astype(jnp.float32)), num_bad


def _run_rounds(key, s, rem0, m0, target, beta, max_rounds, num_samples,
                sharded):
  """Rounds of Algorithm 1 until every prompt has its target (or max_rounds):
  s [B, 2, h, 32] scores, rem0 [B, 2, h] packed valid candidates, m0 [B] max
  valid score, target [B] -> (n_acc, rounds, visited [B], hist [B, k, W]).

  Few prompts need the late rounds (B=4096, N=64, k=8, beta=0.5, N(0,1)
  rewards: 100/90/28/2% in rounds 1-4), so once at most a quarter are left a
  step gathers only the unfinished ones (`kernels.step_capacities`).
  """
  batch, _, h, _ = s.shape
  num_words = 2 * h
  num_rounds = num_samples  # Static bound: every round accepts >= 1.

  def need_of(state):
    n_acc, rounds = state[2], state[3]
    return jnp.where(rounds < max_rounds, target - n_acc, 0)

  def full_step(state):
    rem, m, n_acc, rounds, visited, hist = state
    need = need_of(state)
    keep, rem, m, n_kept, n_seen = _one_round(
        key, jnp.arange(batch, dtype=jnp.int32), rounds, s, rem, m, need,
        beta)
    now = jnp.arange(num_rounds)[None, :, None] == rounds[:, None, None]
    hist = jnp.where(now, keep[:, None, :], hist)
    return (rem, m, n_acc + n_kept, rounds + (need > 0), visited + n_seen,
            hist)

  def compact_step(capacity):
    def step(state):
      rem, m, n_acc, rounds, visited, hist = state
      need = need_of(state)
      (rows,) = jnp.nonzero(need > 0, size=capacity, fill_value=batch)
      safe = jnp.minimum(rows, batch - 1)  # Padding rows: need 0, dropped.
      rnd = rounds[safe]
      need_c = jnp.where(rows < batch, need[safe], 0)
      keep, rem_c, m_c, n_kept, n_seen = _one_round(
          key, safe, rnd, s[safe], rem[safe], m[safe], need_c, beta)
      drop = dict(mode="drop", unique_indices=True)
      return (rem.at[rows].set(rem_c, **drop), m.at[rows].set(m_c, **drop),
              n_acc.at[rows].add(n_kept, **drop),
              rounds.at[rows].add((need_c > 0).astype(jnp.int32), **drop),
              visited.at[rows].add(n_seen, **drop),
              hist.at[rows, rnd].set(keep, **drop))
    return step

  zeros = jnp.zeros((batch,), jnp.int32)
  state = (rem0, m0, zeros, zeros, zeros,
           jnp.zeros((batch, num_rounds, num_words), _U32))
  capacities = kernels.step_capacities(batch, sharded)
  for level, capacity in enumerate(capacities):
    # Run steps of this size while more prompts are unfinished than the
    # next (smaller) size holds; the last size runs until all are done.
    limit = capacities[level + 1] if level + 1 < len(capacities) else 0
    step = full_step if capacity == batch else compact_step(capacity)
    state = jax.lax.while_loop(
        lambda st, limit=limit: jnp.sum(need_of(st) > 0) > limit, step, state)
  _, _, n_acc, rounds, visited, hist = state
  return n_acc, rounds, visited, hist


def _acceptance_order(hist, n_acc, num_samples):
  """hist [B, R, W] packed acceptances per round, n_acc [B] -> (indices, valid)
  [B, k] in acceptance order. Slot j was filled in round t(j) = #rounds whose
  cumulative count is <= j, as the (j - before[t])-th kept bit of that round.
  """
  num_rounds = hist.shape[1]
  count = jnp.sum(kernels.popcount(hist), axis=2)  # [B, R]
  after = jnp.cumsum(count, axis=1)
  slots = jnp.arange(num_samples, dtype=jnp.int32)
  t = jnp.sum(after[:, None, :] <= slots[None, :, None], axis=2)  # [B, k]
  onehot = t[:, :, None] == jnp.arange(num_rounds)[None, None, :]
  before = jnp.sum(jnp.where(onehot, (after - count)[:, None, :], 0), axis=2)
  words = jnp.sum(jnp.where(onehot[..., None], hist[:, None], _U32(0)),
                  axis=2, dtype=_U32)  # [B, k, W]
  out_valid = slots[None, :] < n_acc[:, None]
  indices = jnp.where(out_valid, kernels.nth_set_bit(words, slots - before), 0)
  return indices, out_valid


def _baseline_stats(indices, valid, mask, rewards):
  num_valid = jnp.sum(mask, axis=1, dtype=jnp.int32)
  n_acc = jnp.sum(valid, axis=1, dtype=jnp.int32)
  rate = jnp.where(num_valid > 0, n_acc / jnp.maximum(num_valid, 1), 0.0)
  indices = jnp.where(valid, indices, 0).astype(jnp.int32)
  num_bad = jnp.sum(mask & ~jnp.isfinite(rewards))
  return SelectionResult(indices, valid, (num_valid > 0).astype(jnp.int32),
                         n_acc, num_valid, rate.astype(jnp.float32)), num_bad


def _descending(rewards, mask, num_samples):
  """[B, k] indices of the k highest rewards, ties by lower index (stable sort), invalid last."""
  keyed = jnp.where(mask, -rewards, jnp.inf)
  return jnp.argsort(keyed, axis=1, stable=True)[:, :num_samples]


@functools.partial(jax.jit, static_argnames=("num_samples",))
def _top_k_core(key, rewards, mask, num_samples):
  del key  # Deterministic.
  rewards = _to_float(rewards)
  mask = _valid_or_all(mask, rewards.shape)
  order = _descending(rewards, mask, num_samples)
  num_valid = jnp.sum(mask, axis=1, keepdims=True)
  valid = jnp.arange(num_samples)[None, :] < num_valid
  return _baseline_stats(order, valid, mask, rewards)


@functools.partial(jax.jit, static_argnames=("num_samples",))
def _rest_core(key, rewards, mask, num_samples, threshold):
  """ReST's filter: the top k whose reward, min-max rescaled over the prompt's valid candidates,
  is >= threshold (a prompt whose valid rewards are all equal keeps its top k)."""
  del key  # Deterministic.
  rewards = _to_float(rewards)
  mask = _valid_or_all(mask, rewards.shape)
  order = _descending(rewards, mask, num_samples)  # [B, k]
  lo = jnp.min(jnp.where(mask, rewards, jnp.inf), axis=1, keepdims=True)  # [B, 1]
  hi = jnp.max(jnp.where(mask, rewards, -jnp.inf), axis=1, keepdims=True)
  span = hi - lo
  scaled = jnp.where(span > 0, (rewards - lo) / jnp.where(span > 0, span, 1.0), 1.0)  # [B, N]
  keep = mask & (scaled >= threshold)
  valid = jnp.take_along_axis(keep, order, axis=1)  # a prefix: order is descending
  return _baseline_stats(order, valid, mask, rewards)


@functools.partial(jax.jit, static_argnames=("num_samples",))
def _random_core(key, rewards, mask, num_samples):
  rewards = _to_float(rewards)
  mask = _valid_or_all(mask, rewards.shape)
  u = jax.random.uniform(key, rewards.shape, jnp.float32)
  order = jnp.argsort(jnp.where(mask, u, 2.0), axis=1,
                      stable=True)[:, :num_samples]
  num_valid = jnp.sum(mask, axis=1, keepdims=True)
  valid = jnp.arange(num_samples)[None, :] < num_valid
  return _baseline_stats(order, valid, mask, rewards)


@functools.partial(jax.jit, static_argnames=("num_samples",))
def _best_of_n_core(key, rewards, mask, num_samples):
  del key  # Deterministic.
  rewards = _to_float(rewards)
  mask = _valid_or_all(mask, rewards.shape)
  batch, n = rewards.shape
  size = n // num_samples
  r = jnp.where(mask, rewards, -jnp.inf)[:, :size * num_samples]
  r = r.reshape(batch, num_samples, size)
  m = mask[:, :size * num_samples].reshape(batch, num_samples, size)
  best = jnp.argmax(r, axis=2).astype(jnp.int32)  # First max in the group.
  indices = best + size * jnp.arange(num_samples, dtype=jnp.int32)[None, :]
  valid = jnp.any(m, axis=2)
  # Valid groups first, keeping group order.
  order = jnp.argsort(~valid, axis=1, stable=True)
  indices = jnp.take_along_axis(indices, order, axis=1)
  valid = jnp.take_along_axis(valid, order, axis=1)
  return _baseline_stats(indices, valid, mask, rewards)


# ----------------------------------------------------------------------------
# Public API.
# ----------------------------------------------------------------------------


def statistical_rejection_sampling(
    key: PRNGKey,
    rewards: Array,
    num_samples: int,
    beta: Union[float, Array],
    mask: Optional[Array] = None,
    *,
    log_prob_correction: Optional[Union[ProposalCorrection,
                                        tuple[Array, Array]]] = None,
    mode: str = "paper",
) -> SelectionResult:
  """Samples `num_samples` of N candidates per prompt by Algorithm 1.

  Args:
    key: a jax.random key (typed or raw uint32). Candidate i of prompt b in
      round t gets one float32 U[0, 1) draw from threefry2x32 of the counter
      (b, t, i) (other key types: `bits(fold_in(fold_in(key, b), t))`).
    rewards: [B, N] real rewards r(x, y_i) (upcast to float32 at least).
    num_samples: k, a static Python int with 1 <= k <= N.
    beta: scalar >= 0, the KL coefficient of pi* ∝ pi_sft·exp(r/beta)
      (paper: 0.5); 0 means top-k-over-N.
    mask: optional [B, N] bool, True for valid candidates. Invalid ones are
      never visited, never accepted and do not enter M (may hold NaN).
    log_prob_correction: optional `ProposalCorrection(sft_logps,
      proposal_logps)` ([B, N] each, nats) for candidates drawn from a
      proposal q != pi_sft (not in the paper): the acceptance ratio becomes
      exp((r_i/beta + log pi_sft_i - log q_i) - max_remaining(...)), i.e.
      Algorithm 1 on the score s_i = r_i + beta·(log pi_sft_i - log q_i).
      At beta = 0 the correction vanishes (top-k over r).
    mode: "paper" (default): Algorithm 1, rounds until k are accepted.
      "single_pass" (not in the paper): only the first round, with M the
      max over all valid candidates; each candidate is accepted
      independently with prob. exp((r_i - M)/beta), and the first k accepted
      (in index order) are kept, so `num_accepted` varies in [1, k].

  Returns:
    A SelectionResult (see its docstring for shapes and the definitions of
    rounds / num_visited / acceptance_rate).

  Raises:
    ValueError: on a wrong shape or dtype, num_samples not an int in [1, N],
      beta < 0 or non-finite, a NaN/inf reward (or log-prob) among the valid
      candidates, or an unknown mode. When this function is itself traced
      (called inside jax.jit) values are abstract: only shapes, dtypes,
      num_samples and mode are checked, and non-finite rewards silently give
      fewer (possibly zero) valid samples. Fewer valid candidates than k is
      not an error: all valid ones are returned, then valid=False padding.
  """
  if mode not in MODES:
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}.")
  rewards, mask, k = _check_inputs(rewards, num_samples, mask)
  beta = _check_beta(beta)
  sft = prop = None
  if log_prob_correction is not None:
    if len(log_prob_correction) != 2:
      raise ValueError("log_prob_correction must be (sft_logps, "
                       "proposal_logps).")
    sft, prop = log_prob_correction
    sft = _check_real("sft_logps", sft, rewards.shape)
    prop = _check_real("proposal_logps", prop, rewards.shape)
  if not jax.dtypes.issubdtype(jnp.asarray(key).dtype, jax.dtypes.prng_key):
    key = jax.random.wrap_key_data(key)  # Raw uint32 key data.
  max_rounds = np.int32(1 if mode == "single_pass" else k)
  result, num_bad = _rejection_core(key, rewards, mask, beta, sft, prop,
                                    max_rounds, num_samples=k)
  named = [("rewards", rewards)]
  if sft is not None:
    named += [("sft_logps", sft), ("proposal_logps", prop)]
  _raise_if_nonfinite(num_bad, mask, named)
  return result


def select(
    strategy: str,
    key: PRNGKey,
    rewards: Array,
    num_samples: int,
    beta: Optional[Union[float, Array]] = None,
    mask: Optional[Array] = None,
    *,
    log_prob_correction: Optional[Union[ProposalCorrection,
                                        tuple[Array, Array]]] = None,
    mode: str = "paper",
    threshold: float = REST_THRESHOLD,
) -> SelectionResult:
  """One interface over the paper's selection strategies.

  Strategies (all over rewards[B, N], mask[B, N] -> SelectionResult):
    "rso": `statistical_rejection_sampling` (needs beta; rso-sample-rank).
    "random": uniform subsample of k valid candidates without replacement,
      in random order (the paper's sft-sample-rank); reward values are only
      checked, not used.
    "best_of_n": k = 1 is the best valid candidate (first one on ties).
      For k > 1 the candidates are split into k contiguous groups of
      N // k (the last N % k candidates are unused) and the best of each
      group is kept, i.e. k independent best-of-(N//k) draws; a group with
      no valid candidate yields a valid=False slot (padding moved to the end).
    "top_k_over_n": the k highest rewards, descending, ties by lower index
      (what "rso" gives at beta = 0).
    "rest": ReST's filter (Gulcehre et al. 2023, as the RSO paper runs it):
      of the k highest, those whose reward rescaled to [0, 1] by the
      prompt's valid min and max is >= `threshold` (default 0.7); all k
      when the valid rewards are equal. A variable count in [1, k].
  For the baselines rounds = 1 (0 without valid candidates), num_visited =
  number of valid candidates and acceptance_rate = num_accepted/num_visited.
  `beta`, `log_prob_correction` and `mode` apply to "rso" only, `threshold`
  to "rest" only; `key` is unused by the deterministic baselines.

  Raises:
    ValueError: for an unknown strategy, or as `statistical_rejection_sampling`.
  """
  if strategy == "rso":
    return statistical_rejection_sampling(
        key, rewards, num_samples, beta, mask,
        log_prob_correction=log_prob_correction, mode=mode)
  if strategy not in STRATEGIES:
    raise ValueError(
        f"strategy must be one of {STRATEGIES}, got {strategy!r}.")
  if log_prob_correction is not None:
    raise ValueError(f"log_prob_correction only applies to 'rso', not "
                     f"{strategy!r}.")
  rewards, mask, k = _check_inputs(rewards, num_samples, mask)
  if strategy == "rest":
    if not (isinstance(threshold, (int, float)) and 0.0 <= threshold <= 1.0):
      raise ValueError(f"threshold must be a number in [0, 1], got {threshold!r}.")
    result, num_bad = _rest_core(key, rewards, mask, num_samples=k,
                                 threshold=jnp.float32(threshold))
  else:
    core = {"random": _random_core, "best_of_n": _best_of_n_core,
            "top_k_over_n": _top_k_core}[strategy]
    result, num_bad = core(key, rewards, mask, num_samples=k)
  _raise_if_nonfinite(num_bad, mask, [("rewards", rewards)])
  return result
