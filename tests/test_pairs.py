"""Tests for rso_jax.pairs: first-round-rank and tournament-rank pairs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rso_jax import pairs


def _np(p):
  return tuple(np.asarray(x) for x in p)


def reference_tournament(slots, valid, beats):
  """Plain-Python single elimination: pairs (0,1), (2,3)..., odd one a bye.

  A pair with an invalid player is not played: the valid one advances.
  Returns [(chosen, rejected, pair_valid)] in round order.
  """
  players = list(zip(slots, valid))
  out = []
  while len(players) > 1:
    nxt = []
    for i in range(0, len(players) - 1, 2):
      (a, va), (b, vb) = players[i], players[i + 1]
      if va and vb:
        w, l = (a, b) if beats(a, b) else (b, a)
        out.append((w, l, True))
        nxt.append((w, True))
      else:
        out.append((None, None, False))
        nxt.append((a, va) if (va or not vb) else (b, vb))
    if len(players) % 2:
      nxt.append(players[-1])
    players = nxt
  return out


REWARDS = np.array([[0.5, 2.0, -1.0, 3.0, 1.0, 0.0, 2.5, -2.0]], np.float32)


def test_first_round_pairs_pointwise():
  idx = np.array([[5, 1, 7, 3, 6, 2]])
  valid = np.ones_like(idx, bool)
  c, r, v = _np(pairs.first_round_pairs(idx, valid, rewards=REWARDS))
  np.testing.assert_array_equal(c, [[1, 3, 6]])   # 2.0>0.0, 3.0>-2, 2.5>-1
  np.testing.assert_array_equal(r, [[5, 7, 2]])
  np.testing.assert_array_equal(v, [[True] * 3])


def test_first_round_odd_k_invalid_slots_and_ties():
  idx = np.array([[1, 6, 3, 0, 4], [0, 5, 2, 3, 7]])
  valid = np.array([[1, 1, 1, 0, 1], [1, 1, 1, 1, 0]], bool)
  r = np.concatenate([REWARDS, np.zeros_like(REWARDS)])  # Row 1: all ties.
  c, rej, v = _np(pairs.first_round_pairs(idx, valid, rewards=r))
  assert c.shape == (2, 2)  # k = 5 -> 2 pairs, slot 4 unpaired.
  np.testing.assert_array_equal(v, [[True, False], [True, True]])
  np.testing.assert_array_equal(c[0, 0], 6)  # 2.5 > 2.0
  np.testing.assert_array_equal(c[1], [5, 3])  # Ties go to b.
  np.testing.assert_array_equal(rej[1], [0, 2])


def test_tournament_hand_written():
  # k = 4: (3, 0) -> 3; (6, 7) -> 6; final (3, 6) -> 3 (3.0 > 2.5).
  c, r, v = _np(pairs.tournament_pairs(np.array([[3, 0, 6, 7]]),
                                       np.ones((1, 4), bool),
                                       rewards=REWARDS))
  np.testing.assert_array_equal(c, [[3, 6, 3]])
  np.testing.assert_array_equal(r, [[0, 7, 6]])
  assert v.all()
  # k = 5 with a bye: round 1 (0,1)->1, (2,3)->3, 4 bye; round 2 (1,3)->3,
  # 4 bye; final (3, 4) -> 3.
  c, r, v = _np(pairs.tournament_pairs(np.arange(5)[None], np.ones((1, 5),
                                                                   bool),
                                       rewards=REWARDS))
  np.testing.assert_array_equal(c, [[1, 3, 3, 3]])
  np.testing.assert_array_equal(r, [[0, 2, 1, 4]])


@pytest.mark.parametrize("k", [1, 5, 8])
def test_tournament_matches_reference_on_random_batches(k):
  rng = np.random.default_rng(k)
  b, n = 64, 12
  rewards = rng.normal(size=(b, n)).astype(np.float32)
  idx = np.stack([rng.permutation(n)[:k] for _ in range(b)])
  valid = rng.random((b, k)) < 0.8
  c, r, v = _np(pairs.tournament_pairs(idx, valid, rewards=rewards))
  assert c.shape == (b, max(k - 1, 0))
  for row in range(b):
    ref = reference_tournament(list(idx[row]), list(valid[row]),
                               lambda x, y: rewards[row, x] > rewards[row, y])
    np.testing.assert_array_equal(v[row], [p[2] for p in ref])
    for j, (w, l, ok) in enumerate(ref):
      if ok:
        assert (c[row, j], r[row, j]) == (w, l)
    nv = int(valid[row].sum())
    assert v[row].sum() == max(nv - 1, 0)  # v valid slots -> v - 1 pairs.
    if nv >= 2:  # The overall winner is the best valid candidate, never lost.
      best = idx[row][valid[row]][np.argmax(rewards[row, idx[row][valid[row]]])]
      assert c[row, v[row]][-1] == best
      assert best not in r[row, v[row]]
      # Every other valid candidate loses exactly once.
      losers = sorted(r[row, v[row]].tolist())
      assert losers == sorted(set(idx[row][valid[row]].tolist()) - {best})


def test_pairwise_preference_function():
  b, n, k = 16, 10, 4
  rng = np.random.default_rng(0)
  rewards = rng.normal(size=(b, n)).astype(np.float32)
  idx = np.stack([rng.permutation(n)[:k] for _ in range(b)])
  valid = np.ones((b, k), bool)
  r_j = jnp.asarray(rewards)

  def bt(i, j):  # Bradley-Terry from the same rewards: same labels.
    ri = jnp.take_along_axis(r_j, i, axis=1)
    rj = jnp.take_along_axis(r_j, j, axis=1)
    return jax.nn.sigmoid(ri - rj)

  for fn in (pairs.first_round_pairs, pairs.tournament_pairs):
    a = _np(fn(idx, valid, rewards=rewards))
    p = _np(fn(idx, valid, preference_fn=bt))
    for x, y in zip(a, p):
      np.testing.assert_array_equal(x, y)

  # Orientation: P(a > b) = 0.7 for every call -> the first slot always wins.
  always_a = lambda i, j: jnp.full(i.shape, 0.7)
  c, r, _ = _np(pairs.first_round_pairs(idx, valid, preference_fn=always_a))
  np.testing.assert_array_equal(c, idx[:, 0::2])
  np.testing.assert_array_equal(r, idx[:, 1::2])
  c, _, _ = _np(pairs.tournament_pairs(idx, valid, preference_fn=always_a))
  np.testing.assert_array_equal(c[:, -1], idx[:, 0])


def test_jit_and_make_pairs_and_empty():
  idx = np.array([[3, 0, 6, 7, 1]])
  valid = np.ones((1, 5), bool)
  eager = _np(pairs.make_pairs("tournament", idx, valid, rewards=REWARDS))
  jitted = _np(jax.jit(lambda i, v, r: pairs.tournament_pairs(
      i, v, rewards=r))(idx, valid, REWARDS))
  for x, y in zip(eager, jitted):
    np.testing.assert_array_equal(x, y)
  one = pairs.make_pairs("first_round", idx[:, :1], valid[:, :1],
                         rewards=REWARDS)
  assert one.chosen.shape == (1, 0)
  assert pairs.tournament_pairs(idx[:, :1], valid[:, :1],
                                rewards=REWARDS).valid.shape == (1, 0)


def test_bad_input_raises():
  idx = np.array([[0, 1, 2, 3]])
  valid = np.ones((1, 4), bool)
  with pytest.raises(ValueError, match="exactly one"):
    pairs.first_round_pairs(idx, valid)
  with pytest.raises(ValueError, match="exactly one"):
    pairs.first_round_pairs(idx, valid, rewards=REWARDS,
                            preference_fn=lambda i, j: i * 0.0)
  with pytest.raises(ValueError, match="method"):
    pairs.make_pairs("swiss", idx, valid, rewards=REWARDS)
  with pytest.raises(ValueError, match=r"indices\[0, 2\] = 9"):
    pairs.first_round_pairs(np.array([[0, 1, 9, 3]]), valid, rewards=REWARDS)
  with pytest.raises(ValueError, match="shape"):
    pairs.first_round_pairs(idx, valid[:, :3], rewards=REWARDS)
  with pytest.raises(ValueError, match="not a probability"):
    pairs.tournament_pairs(idx, valid,
                           preference_fn=lambda i, j: jnp.full(i.shape, 1.5))
  with pytest.raises(ValueError, match="not a probability"):
    pairs.first_round_pairs(
        idx, valid, preference_fn=lambda i, j: jnp.full(i.shape, jnp.nan))
  with pytest.raises(ValueError, match="of shape"):
    pairs.first_round_pairs(idx, valid,
                            preference_fn=lambda i, j: jnp.zeros((1, 7)))
  bad = REWARDS.copy()
  bad[0, 1] = np.nan
  with pytest.raises(ValueError, match="not finite"):
    pairs.first_round_pairs(idx, valid, rewards=bad)
  # A NaN reward of an unselected or invalid candidate is fine.
  pairs.first_round_pairs(idx, np.array([[1, 0, 1, 1]], bool), rewards=bad)
