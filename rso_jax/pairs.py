"""Preference pairs from selected candidates (RSO, arXiv 2309.06657, Sec. 3.3).

Input: the k selected candidates of each prompt, `indices[B, k]` (int, into
the N candidates) with `valid[B, k]` (bool), e.g. a `rejection.SelectionResult`.
Output: `Pairs(chosen[B, P], rejected[B, P], valid[B, P])`, index tensors
into N labeled by the reward model, where

  * first-round-rank: P = k // 2 disjoint pairs of slots (0, 1), (2, 3), ...
    (an odd k leaves the last slot unpaired);
  * tournament-rank: single elimination over the k slots, P = k - 1 pairs:
    each round pairs the surviving slots (0, 1), (2, 3), ... in order, the
    winners advance in order and, when the number of survivors is odd, the
    last one gets a bye (advances unplayed, placed last). Rounds are static
    (ceil(log2 k)) and each is one vectorized comparison over [B, P_round].

Labels come from a pointwise reward tensor `rewards[B, N]` (a beats b iff
r_a > r_b) or from a pairwise preference function
`preference_fn(idx_a[B, P], idx_b[B, P]) -> P(a ≻ b)[B, P]` (a beats b iff
P > 0.5, the paper's rule rho(x, y1, y2) > 0.5). Ties therefore go to b.

Slot order. A selector returns its k slots in its own order (rso: acceptance
order, so slots (0, 1) would be same-round neighbours; top-k: descending
reward). `make_pairs(..., key=key)` therefore first applies `shuffle_slots`: a
per-prompt uniformly random order of the valid slots, placed first, invalid
slots after. The pairs are then a uniformly random matching (first-round) or
a uniformly random bracket (tournament) of the selected valid set, so the data
settings differ only in *which* candidates are selected, never in how they
are paired. Without `key` the slots are paired in the order given.

A pair touching an invalid slot is invalid (valid=False). In a tournament
the valid player of such a pair advances unplayed, so a prompt with v valid
slots yields exactly v - 1 valid pairs. Entries of invalid pairs are in-range
indices with no meaning. `preference_fn` is called on all pairs, invalid
ones included, so it must accept any in-range index.

Pure jnp; imports no model, no seqio, no gin.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

Array = Any
PreferenceFn = Callable[[Array, Array], Array]

METHODS = ("first_round", "tournament")


class Pairs(NamedTuple):
  """Labeled preference pairs (a pytree).

  Attributes:
    chosen: [B, P] int32 index into N of the preferred candidate.
    rejected: [B, P] int32 index into N of the other candidate.
    valid: [B, P] bool, False for a pair touching an invalid slot.
  """
  chosen: Array
  rejected: Array
  valid: Array


def _is_concrete(x: Any) -> bool:
  return not isinstance(x, jax.core.Tracer)


def _check_inputs(indices: Array, valid: Array, rewards: Optional[Array],
                  preference_fn: Optional[PreferenceFn]):
  if np.ndim(indices) != 2:
    raise ValueError(f"indices must have shape [B, k], got "
                     f"{tuple(np.shape(indices))}.")
  if tuple(np.shape(valid)) != tuple(np.shape(indices)):
    raise ValueError(f"valid must have the shape of indices "
                     f"{tuple(np.shape(indices))}, got "
                     f"{tuple(np.shape(valid))}.")
  indices = jnp.asarray(indices)
  valid = jnp.asarray(valid)
  if not jnp.issubdtype(indices.dtype, jnp.integer):
    raise ValueError(f"indices must be integer, got dtype {indices.dtype}.")
  if valid.dtype != jnp.bool_:
    raise ValueError(f"valid must be bool, got dtype {valid.dtype}.")
  if (rewards is None) == (preference_fn is None):
    raise ValueError("pass exactly one of rewards ([B, N]) or preference_fn.")
  if rewards is not None:
    if np.ndim(rewards) != 2 or np.shape(rewards)[0] != indices.shape[0]:
      raise ValueError(f"rewards must have shape [B={indices.shape[0]}, N], "
                       f"got {tuple(np.shape(rewards))}.")
    rewards = jnp.asarray(rewards)
    n = rewards.shape[1]
    if _is_concrete(indices) and _is_concrete(valid):
      idx, v = np.asarray(indices), np.asarray(valid)
      bad = np.argwhere(v & ((idx < 0) | (idx >= n)))
      if len(bad):
        b, j = (int(t) for t in bad[0])
        raise ValueError(f"indices[{b}, {j}] = {idx[b, j]} is out of range "
                         f"for N={n} candidates.")
    if _is_concrete(rewards) and _is_concrete(indices) and _is_concrete(valid):
      r = np.take_along_axis(np.asarray(rewards),
                             np.clip(np.asarray(indices), 0, n - 1), axis=1)
      bad = np.argwhere(np.asarray(valid) & ~np.isfinite(r))
      if len(bad):
        b, j = (int(t) for t in bad[0])
        raise ValueError(f"reward of selected candidate indices[{b}, {j}] is "
                         f"{r[b, j]!r}, not finite.")
  return indices.astype(jnp.int32), valid, rewards


def _reward_beats(rewards: Array) -> Callable[[Array, Array, Array], Array]:
  n = rewards.shape[1]

  def beats(a, b, pair_valid):
    del pair_valid
    ra = jnp.take_along_axis(rewards, jnp.clip(a, 0, n - 1), axis=1)
    rb = jnp.take_along_axis(rewards, jnp.clip(b, 0, n - 1), axis=1)
    return ra > rb

  return beats


def _preference_beats(
    preference_fn: PreferenceFn) -> Callable[[Array, Array, Array], Array]:

  def beats(a, b, pair_valid):
    prob = jnp.asarray(preference_fn(a, b))
    if prob.shape != a.shape:
      raise ValueError(f"preference_fn must return P(a > b) of shape "
                       f"{a.shape}, got {prob.shape}.")
    if _is_concrete(prob) and _is_concrete(pair_valid):
      p, v = np.asarray(prob), np.asarray(pair_valid)
      bad = np.argwhere(v & ~((p >= 0) & (p <= 1)))
      if len(bad):
        i, j = (int(t) for t in bad[0])
        raise ValueError(f"preference_fn returned {float(p[i, j])} at "
                         f"[{i}, {j}], not a probability in [0, 1].")
    return prob > 0.5

  return beats


def _check_key(key: Any) -> Any:
  if key is None:
    raise ValueError("shuffle_slots needs a jax.random key.")
  key = jnp.asarray(key) if not isinstance(key, jax.Array) else key
  if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
    if key.shape != ():
      raise ValueError(f"key must be a single key, got shape {key.shape}.")
    return key
  if key.dtype != jnp.uint32 or key.ndim != 1:
    raise ValueError(f"key must be a jax.random key (typed, or raw uint32 key "
                     f"data), got dtype {key.dtype} shape {key.shape}.")
  return jax.random.wrap_key_data(key)


@jax.jit
def _shuffle(key, indices, valid):
  batch, k = indices.shape
  if k == 0:
    return indices, valid
  # Row b's order depends on (key, b) only, not on the batch it shares.
  perm = jax.vmap(lambda row: jax.random.permutation(
      jax.random.fold_in(key, row), k))(jnp.arange(batch, dtype=jnp.int32))
  # Valid slots first, in their (uniformly random) permuted order.
  first = jnp.argsort(~jnp.take_along_axis(valid, perm, axis=1), axis=1,
                      stable=True)
  perm = jnp.take_along_axis(perm, first, axis=1)
  return (jnp.take_along_axis(indices, perm, axis=1),
          jnp.take_along_axis(valid, perm, axis=1))


def shuffle_slots(key: Any, indices: Array, valid: Array) -> tuple[Array,
                                                                   Array]:
  """A per-prompt uniformly random order of the selected slots.

  Args:
    key: a jax.random key (typed, or raw uint32 key data); prompt b uses
      `fold_in(key, b)`, so its order does not depend on the other prompts.
    indices: [B, k] int candidate indices into N.
    valid: [B, k] bool.

  Returns:
    (indices, valid) [B, k], each row permuted: its valid slots first, in a
    uniformly random order (each of the v! orders equally likely), then its
    invalid slots. The set of (index, valid) entries of a row is unchanged.
    With these slots first-round-rank pairs a uniformly random matching of
    the valid candidates (one left out at random when v is odd) and
    tournament-rank plays a uniformly random bracket, v - 1 valid pairs.
  """
  if np.ndim(indices) != 2 or tuple(np.shape(valid)) != tuple(
      np.shape(indices)):
    raise ValueError(f"indices and valid must have one shape [B, k], got "
                     f"{tuple(np.shape(indices))} and "
                     f"{tuple(np.shape(valid))}.")
  valid = jnp.asarray(valid)
  if valid.dtype != jnp.bool_:
    raise ValueError(f"valid must be bool, got dtype {valid.dtype}.")
  return _shuffle(_check_key(key), jnp.asarray(indices), valid)


# Round helpers are jitted so that the eager preference_fn path costs one
# cached executable per round shape instead of one dispatch per jnp op.


@jax.jit
def _split(players: Array, alive: Array):
  """Slots (0, 1), (2, 3), ... of [B, m] -> a, b, valid_a, valid_b [B, m//2]."""
  h = players.shape[1] // 2
  return (players[:, 0:2 * h:2], players[:, 1:2 * h:2], alive[:, 0:2 * h:2],
          alive[:, 1:2 * h:2])


@jax.jit
def _play(players, alive, a, b, va, vb, a_wins):
  """Labels one round and advances winners (byes for the odd last slot)."""
  both = va & vb
  # A lone valid player advances unplayed; with none valid, a (invalid).
  a_adv = jnp.where(both, a_wins, va | ~vb)
  rest = 2 * a.shape[1]
  next_players = jnp.concatenate([jnp.where(a_adv, a, b), players[:, rest:]],
                                 1)
  next_alive = jnp.concatenate([va | vb, alive[:, rest:]], 1)
  return (Pairs(jnp.where(a_wins, a, b), jnp.where(a_wins, b, a), both),
          next_players, next_alive)


def _first_round(indices, valid, beats) -> Pairs:
  a, b, va, vb = _split(indices, valid)
  return _play(indices, valid, a, b, va, vb, beats(a, b, va & vb))[0]


def _tournament(indices, valid, beats) -> Pairs:
  batch = indices.shape[0]
  players, alive = indices, valid
  rounds = []
  while players.shape[1] > 1:
    a, b, va, vb = _split(players, alive)
    played, players, alive = _play(players, alive, a, b, va, vb,
                                   beats(a, b, va & vb))
    rounds.append(played)
  if not rounds:
    empty = jnp.zeros((batch, 0), jnp.int32)
    return Pairs(empty, empty, jnp.zeros((batch, 0), jnp.bool_))
  return Pairs(*(jnp.concatenate(parts, 1) for parts in zip(*rounds)))


_BUILDERS = {"first_round": _first_round, "tournament": _tournament}


@functools.partial(jax.jit, static_argnames=("method",))
def _pairs_from_rewards(indices, valid, rewards, method):
  return _BUILDERS[method](indices, valid, _reward_beats(rewards))


def make_pairs(method: str, indices: Array, valid: Array, *,
               rewards: Optional[Array] = None,
               preference_fn: Optional[PreferenceFn] = None,
               key: Any = None) -> Pairs:
  """Builds and labels pairs; method is "first_round" or "tournament".

  Args:
    method: "first_round" (P = k // 2) or "tournament" (P = max(k - 1, 0)).
    indices: [B, k] selected candidate indices into N (any order).
    valid: [B, k] bool.
    rewards: [B, N] pointwise rewards (jitted path), or
    preference_fn: (idx_a[B, P], idx_b[B, P]) -> P(a ≻ b)[B, P], called once
      per tournament round (once for first_round), eagerly unless the caller
      traces this function; its values are checked to lie in [0, 1] on valid
      pairs when concrete.
    key: a jax.random key: the slots are first put in a random order by
      `shuffle_slots(key, indices, valid)` (what the sampling stage does, so
      the pairing does not depend on the selector's order). None: the slots
      are paired in the order given (no randomness).

  Returns:
    Pairs(chosen[B, P], rejected[B, P], valid[B, P]).

  Raises:
    ValueError: unknown method, bad shapes/dtypes, not exactly one of
      rewards / preference_fn, a valid index outside [0, N), a non-finite
      reward of a selected valid candidate, or a preference outside [0, 1].
  """
  if method not in _BUILDERS:
    raise ValueError(f"method must be one of {METHODS}, got {method!r}.")
  indices, valid, rewards = _check_inputs(indices, valid, rewards,
                                          preference_fn)
  if key is not None:
    indices, valid = _shuffle(_check_key(key), indices, valid)
  if rewards is not None:
    return _pairs_from_rewards(indices, valid, rewards, method=method)
  return _BUILDERS[method](indices, valid, _preference_beats(preference_fn))


def first_round_pairs(indices: Array, valid: Array, *,
                      rewards: Optional[Array] = None,
                      preference_fn: Optional[PreferenceFn] = None,
                      key: Any = None) -> Pairs:
  """First-round-rank: slots (0, 1), (2, 3), ... -> P = k // 2 pairs.

  Args and errors as `make_pairs`.
  """
  return make_pairs("first_round", indices, valid, rewards=rewards,
                    preference_fn=preference_fn, key=key)


def tournament_pairs(indices: Array, valid: Array, *,
                     rewards: Optional[Array] = None,
                     preference_fn: Optional[PreferenceFn] = None,
                     key: Any = None) -> Pairs:
  """Tournament-rank: single elimination with byes -> P = k - 1 pairs.

  Pairs are ordered round by round, slot order within a round; the chosen
  candidate of the last valid pair is the tournament winner (the max reward
  with pointwise labels). Args and errors as `make_pairs`.
  """
  return make_pairs("tournament", indices, valid, rewards=rewards,
                    preference_fn=preference_fn, key=key)
