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


# ---------------------------------------------------------------------------
# Random slot order before pairing: the pairs are a uniformly random
# matching / bracket of the selected valid set, not the selector's order.
# ---------------------------------------------------------------------------

# Chi-square critical values at p = 1e-5 (df -> value); a correct sampler with
# fixed keys passes deterministically, order-based pairing fails by far.
CHI2_CRIT = {2: 23.0, 5: 32.0}


def _chi2_uniform(counts):
  counts = np.asarray(list(counts), np.float64)
  expected = counts.sum() / len(counts)
  return float(np.sum((counts - expected) ** 2 / expected))


def _matchings(c, r, v):
  """Per row: frozenset of the unordered valid pairs."""
  return [frozenset(frozenset((int(a), int(b)))
                    for a, b, ok in zip(c[i], r[i], v[i]) if ok)
          for i in range(c.shape[0])]


def test_shuffle_slots_valid_first_uniform_order():
  b = 1200
  idx = np.tile(np.array([[10, 11, 12, 13, 14]]), (b, 1))
  valid = np.tile(np.array([[True, False, True, True, False]]), (b, 1))
  si, sv = (np.asarray(x) for x in pairs.shuffle_slots(jax.random.key(0), idx,
                                                        valid))
  np.testing.assert_array_equal(sv, np.tile([[1, 1, 1, 0, 0]], (b, 1)) == 1)
  for row in range(b):  # Same entries, valid ones first.
    assert sorted(si[row, :3].tolist()) == [10, 12, 13]
    assert sorted(si[row, 3:].tolist()) == [11, 14]
  orders = {}
  for row in range(b):
    t = tuple(si[row, :3].tolist())
    orders[t] = orders.get(t, 0) + 1
  assert len(orders) == 6  # All 3! orders of the valid slots occur ...
  assert _chi2_uniform(orders.values()) < CHI2_CRIT[5]  # ... equally often.


def test_shuffle_slots_determinism_and_row_independence():
  rng = np.random.default_rng(0)
  idx = np.stack([rng.permutation(16)[:8] for _ in range(7)])
  valid = rng.random((7, 8)) < 0.7
  key = jax.random.key(3)
  a = _np(pairs.shuffle_slots(key, idx, valid))
  b = _np(pairs.shuffle_slots(key, idx, valid))
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)  # Same key, same order.
  # Row b's order depends on (key, b) only, not on the rest of the batch.
  head = _np(pairs.shuffle_slots(key, idx[:3], valid[:3]))
  for x, y in zip(a, head):
    np.testing.assert_array_equal(x[:3], y)
  # Raw uint32 key data gives the same as the typed key.
  raw = _np(pairs.shuffle_slots(jax.random.key_data(key), idx, valid))
  for x, y in zip(a, raw):
    np.testing.assert_array_equal(x, y)
  other = _np(pairs.shuffle_slots(jax.random.key(4), idx, valid))
  assert not np.array_equal(a[0], other[0])
  with pytest.raises(ValueError, match="key"):
    pairs.shuffle_slots(np.zeros(3, np.float32), idx, valid)


@pytest.mark.parametrize("method", ["first_round", "tournament"])
def test_keyed_pairs_are_a_uniform_random_matching(method):
  """Slots in the order rso's acceptance gives for rewards [5, 0, 5, 0]
  (round 1: 0, 2; round 2: 1, 3): without a key first-round always pairs
  (0, 2), (1, 3); with a key each of the 3 matchings is equally likely."""
  rewards = np.array([[5.0, 0.0, 5.0, 0.0]], np.float32)
  b = 300
  idx = np.tile(np.array([[0, 2, 1, 3]]), (b, 1))
  valid = np.ones((b, 4), bool)
  rw = np.tile(rewards, (b, 1))
  c, r, v = _np(pairs.make_pairs(method, idx, valid, rewards=rw))
  assert set(_matchings(c[:, :2], r[:, :2], v[:, :2])) == {
      frozenset({frozenset({0, 2}), frozenset({1, 3})})}  # Order-based.
  counts = {}
  for seed in range(4):
    c, r, v = _np(pairs.make_pairs(method, idx, valid, rewards=rw,
                                   key=jax.random.key(seed)))
    assert v.sum(1).tolist() == [2 if method == "first_round" else 3] * b
    # First-round pairs (tournament: its first round, slots 0 and 1).
    for m in _matchings(c[:, :2], r[:, :2], v[:, :2]):
      counts[m] = counts.get(m, 0) + 1
    if method == "tournament":  # The winner is still the best candidate.
      assert set(c[:, -1].tolist()) <= {0, 2}
  assert len(counts) == 3
  assert _chi2_uniform(counts.values()) < CHI2_CRIT[2], counts
  # Each of the 6 candidate pairs appears in 1/3 of the rows.
  per_pair = {}
  for m, n in counts.items():
    for p in m:
      per_pair[p] = per_pair.get(p, 0) + n
  assert len(per_pair) == 6
  for n in per_pair.values():
    assert abs(n / (4 * b) - 1 / 3) < 0.05


@pytest.mark.parametrize("method", ["first_round", "tournament"])
def test_keyed_pairs_never_touch_invalid_slots(method):
  # Selection padding: 3 valid slots (one holds index 0), padding slots also
  # hold index 0 and a stale index 4, interleaved with the valid ones.
  rewards = np.array([[1.0, 3.0, 2.0, 0.0, 9.0]], np.float32)
  b = 200
  idx = np.tile(np.array([[1, 0, 4, 2, 0, 0]]), (b, 1))
  # Valid: slot 0 (candidate 1), slot 3 (candidate 2), slot 4 (candidate 0).
  valid = np.tile(np.array([[True, False, False, True, True, False]]), (b, 1))
  rw = np.tile(rewards, (b, 1))
  c, r, v = _np(pairs.make_pairs(method, idx, valid, rewards=rw,
                                 key=jax.random.key(1)))
  want = 1 if method == "first_round" else 2  # floor(3 / 2) or 3 - 1.
  assert v.sum(1).tolist() == [want] * b
  used = set()
  for row in range(b):
    real = np.concatenate([c[row][v[row]], r[row][v[row]]]).tolist()
    assert set(real) <= {0, 1, 2}  # Never the stale 4.
    assert len(real) == len(set(real)) or method == "tournament"
    used.update(real)
    if method == "tournament":  # 0, 1, 2 each play; 1 (best) never loses.
      assert sorted(r[row][v[row]].tolist()) == [0, 2]
  assert used == {0, 1, 2}  # Which valid one sits out varies (first round).


def test_keyed_pairs_jit_and_preference_path_agree():
  rng = np.random.default_rng(1)
  b, n, k = 8, 10, 6
  rewards = rng.normal(size=(b, n)).astype(np.float32)
  idx = np.stack([rng.permutation(n)[:k] for _ in range(b)])
  valid = rng.random((b, k)) < 0.8
  key = jax.random.key(7)
  r_j = jnp.asarray(rewards)

  def bt(i, j):
    return jax.nn.sigmoid(jnp.take_along_axis(r_j, i, axis=1) -
                          jnp.take_along_axis(r_j, j, axis=1))

  for method in pairs.METHODS:
    eager = _np(pairs.make_pairs(method, idx, valid, rewards=rewards, key=key))
    jitted = _np(jax.jit(lambda i, v, r, kk, m=method: pairs.make_pairs(
        m, i, v, rewards=r, key=kk))(idx, valid, rewards, key))
    pref = _np(pairs.make_pairs(method, idx, valid, preference_fn=bt, key=key))
    for x, y, z in zip(eager, jitted, pref):
      np.testing.assert_array_equal(x, y)
      np.testing.assert_array_equal(x, z)
