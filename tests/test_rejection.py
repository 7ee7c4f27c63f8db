"""Tests for rso_jax.rejection against a plain-Python Algorithm 1 oracle."""

import math
import random

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rso_jax import kernels
from rso_jax import rejection

NUM_DRAWS = 20_000  # Per side: 20k jax rows (one batch) and 20k oracle runs.


def reference_algorithm1(rewards, num_samples, beta, rng, mask=None,
                         single_pass=False):
  """Algorithm 1 of arXiv 2309.06657 (Appendix A.1), written from the paper.

  Candidates live in an insertion-ordered dict (visited in index order); each
  round takes M over the candidates not yet accepted, visits them in order,
  accepts when u < exp((r - M)/beta) and stops the moment num_samples are
  accepted. beta = 0 means ratio 1 at the max, 0 elsewhere (top-k).

  Returns (accepted indices in acceptance order, rounds, visits).
  """
  candidates = {i: float(r) for i, r in enumerate(rewards)
                if mask is None or mask[i]}
  accepted, rounds, visits = [], 0, 0
  while len(accepted) < num_samples and candidates:
    if single_pass and rounds == 1:
      break
    rounds += 1
    max_reward = max(candidates.values())
    to_remove = []
    for c, r in candidates.items():
      visits += 1
      if beta == 0:
        ratio = 1.0 if r == max_reward else 0.0
      else:
        ratio = math.exp((r - max_reward) / beta)
      if rng.random() >= ratio:
        continue
      accepted.append(c)
      to_remove.append(c)
      if len(accepted) == num_samples:
        break
    for c in to_remove:
      candidates.pop(c)
  return accepted, rounds, visits


def _oracle_stats(rewards, k, beta, seed, mask=None, single_pass=False):
  n = len(rewards)
  rng = random.Random(seed)
  slot = np.zeros((k, n))  # slot[j, i]: frequency of candidate i at slot j.
  rounds = np.zeros(k + 1)
  counts = np.zeros(k + 1)
  visits = np.zeros(NUM_DRAWS)
  for t in range(NUM_DRAWS):
    acc, rnd, vis = reference_algorithm1(rewards, k, beta, rng, mask,
                                         single_pass)
    for j, i in enumerate(acc):
      slot[j, i] += 1
    rounds[rnd] += 1
    counts[len(acc)] += 1
    visits[t] = vis
  return slot / NUM_DRAWS, rounds / NUM_DRAWS, counts / NUM_DRAWS, visits


def _jax_stats(rewards, k, beta, seed, mask=None, **kwargs):
  """One batch of NUM_DRAWS identical rows (a mask is always passed, so all
  cases with the same k share one compilation)."""
  n = len(rewards)
  r = np.tile(np.asarray(rewards, np.float32), (NUM_DRAWS, 1))
  m = np.ones(n, bool) if mask is None else np.asarray(mask, bool)
  res = rejection.statistical_rejection_sampling(
      jax.random.key(seed), r, k, beta, np.tile(m, (NUM_DRAWS, 1)), **kwargs)
  idx, valid = np.asarray(res.indices), np.asarray(res.valid)
  slot = np.stack([np.bincount(idx[valid[:, j], j], minlength=n)
                   for j in range(k)]) / NUM_DRAWS
  rounds = np.bincount(np.asarray(res.rounds), minlength=k + 1) / NUM_DRAWS
  counts = np.bincount(np.asarray(res.num_accepted),
                       minlength=k + 1) / NUM_DRAWS
  np.testing.assert_array_equal(valid.sum(1), np.asarray(res.num_accepted))
  return slot, rounds, counts, np.asarray(res.num_visited), res


def _agree(p1, p2, n1=NUM_DRAWS, n2=NUM_DRAWS):
  """True iff every frequency pair is within 5 sigma of the binomial noise.

  Bound per cell: |p1 - p2| < 5 * sqrt(p(1-p) (1/n1 + 1/n2)) + 1/n1, with p
  the pooled frequency (the 1/n1 term covers cells whose p is ~0 or ~1, where
  the normal approximation breaks down). With ~50 cells per check a false
  alarm has probability < 1e-4; the seeds are fixed anyway.
  """
  p1, p2 = np.asarray(p1, np.float64), np.asarray(p2, np.float64)
  p = (p1 * n1 + p2 * n2) / (n1 + n2)
  bound = 5 * np.sqrt(p * (1 - p) * (1 / n1 + 1 / n2)) + 1 / n1
  return bool(np.all(np.abs(p1 - p2) < bound)), np.max(np.abs(p1 - p2) / bound)


R8 = [0.0, 1.0, -0.5, 2.0, 0.3, 0.3, -1.0, 1.5]
# All cases use N = 8, k = 3 and a mask, so they share one compilation
# (beta and the mode are traced arguments).
CASES = {
    # name: (rewards, beta, mask, kwargs for jax, oracle single_pass)
    "paper_beta0.5": (R8, 0.5, None, {}, False),
    "beta2": (R8, 2.0, None, {}, False),
    "many_rounds": (list(np.linspace(0.0, 1.4, 8)), 0.15, None, {}, False),
    "masked": (R8, 1.0, np.array([1, 1, 0, 1, 1, 0, 1, 1], bool), {}, False),
    "fewer_valid": (R8, 0.5, np.array([0, 1, 0, 0, 0, 0, 1, 0], bool), {},
                    False),
    "single_pass": (R8, 0.5, None, {"mode": "single_pass"}, True),
}
K = 3


@pytest.mark.parametrize("name", list(CASES))
def test_matches_algorithm1_in_law(name):
  rewards, beta, mask, kwargs, single = CASES[name]
  k = K
  o_slot, o_rounds, o_counts, o_visits = _oracle_stats(
      rewards, k, beta, seed=1, mask=mask, single_pass=single)
  j_slot, j_rounds, j_counts, j_visits, res = _jax_stats(
      rewards, k, beta, seed=2, mask=mask, **kwargs)
  # Per-candidate inclusion, candidate per acceptance slot, rounds, counts.
  for what, a, b in [("inclusion", j_slot.sum(0), o_slot.sum(0)),
                     ("slot", j_slot, o_slot), ("rounds", j_rounds, o_rounds),
                     ("num_accepted", j_counts, o_counts)]:
    ok, worst = _agree(a, b)
    assert ok, f"{name}: {what} differs ({worst:.2f} of the bound)\n{a}\n{b}"
  # Mean visits (acceptance-rate denominator): 5 standard errors.
  se = math.sqrt(j_visits.var() / NUM_DRAWS + o_visits.var() / NUM_DRAWS)
  assert abs(j_visits.mean() - o_visits.mean()) < 5 * se + 1e-9
  rate = np.asarray(res.num_accepted) / np.asarray(res.num_visited)
  np.testing.assert_allclose(np.asarray(res.acceptance_rate), rate, rtol=1e-6)
  if mask is not None:
    assert not np.any(np.asarray(res.valid) &
                      ~np.asarray(mask, bool)[np.asarray(res.indices)])


def test_proposal_correction_matches_oracle_on_shifted_scores():
  """Acceptance exp((r/b + lp_sft - lp_q) - max) = Algorithm 1 on r + b*c."""
  beta = 0.5
  sft = np.log(np.array([0.1, 0.2, 0.05, 0.15, 0.1, 0.2, 0.1, 0.1]))
  prop = np.log(np.array([0.2, 0.1, 0.1, 0.1, 0.2, 0.1, 0.1, 0.1]))
  shifted = [r + beta * (s - q) for r, s, q in zip(R8, sft, prop)]
  o_slot, o_rounds, _, _ = _oracle_stats(shifted, 3, beta, seed=3)
  n = NUM_DRAWS
  corr = rejection.ProposalCorrection(np.tile(sft, (n, 1)),
                                      np.tile(prop, (n, 1)))
  j_slot, j_rounds, _, _, _ = _jax_stats(R8, 3, beta, seed=4,
                                         log_prob_correction=corr)
  assert _agree(j_slot, o_slot)[0]
  assert _agree(j_rounds, o_rounds)[0]
  # And the correction matters: without it the law is detectably different.
  plain, _, _, _, _ = _jax_stats(R8, 3, beta, seed=4)
  assert not _agree(plain, o_slot)[0]


def test_statistical_check_detects_a_global_max_bug():
  """The comparison has power: M over *all* candidates is caught."""
  rewards, beta = CASES["paper_beta0.5"][:2]
  k = K

  def buggy(rng):
    cands = dict(enumerate(rewards))
    m = max(rewards)  # Bug: never re-estimated over the remaining ones.
    acc = []
    while len(acc) < k:
      for c, r in list(cands.items()):
        if rng.random() < math.exp((r - m) / beta):
          acc.append(c)
          cands.pop(c)
          if len(acc) == k:
            break
    return acc

  rng = random.Random(5)
  n_bug = NUM_DRAWS // 10
  freq = np.zeros(len(rewards))
  for _ in range(n_bug):
    freq[buggy(rng)] += 1
  j_slot = _jax_stats(rewards, k, beta, seed=6)[0]
  assert not _agree(j_slot.sum(0), freq / n_bug, NUM_DRAWS, n_bug)[0]


def test_jit_keys_and_padding_do_not_change_results():
  r = jax.random.normal(jax.random.key(0), (50, 70)) * 2  # N pads to 128.
  mask = jax.random.uniform(jax.random.key(1), (50, 70)) < 0.8
  key = jax.random.key(7)
  base = rejection.statistical_rejection_sampling(key, r, 6, 0.3, mask)
  jitted = jax.jit(lambda k, r, b, m: rejection.statistical_rejection_sampling(
      k, r, 6, b, m))(key, r, 0.3, mask)
  for a, b in zip(base, jitted):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  idx, valid = np.asarray(base.indices), np.asarray(base.valid)
  assert valid.all() and np.all(np.asarray(mask)[np.arange(50)[:, None], idx])
  assert np.all(np.sort(idx, 1)[:, 1:] > np.sort(idx, 1)[:, :-1])
  # A different key gives different draws; raw uint32 keys work too.
  other = rejection.statistical_rejection_sampling(jax.random.key(8), r, 6,
                                                   0.3, mask)
  assert not np.array_equal(idx, np.asarray(other.indices))
  raw = rejection.statistical_rejection_sampling(jax.random.key_data(key), r,
                                                 6, 0.3, mask)
  np.testing.assert_array_equal(np.asarray(raw.indices), idx)
  # beta = 0 over 4 packed words (ties, mask): exactly top-k, in order.
  ties = np.round(np.asarray(r)).astype(np.float32)
  top = rejection.statistical_rejection_sampling(key, ties, 6, 0.0, mask)
  np.testing.assert_array_equal(np.asarray(top.indices),
                                _top_k_numpy(ties, np.asarray(mask), 6))


def test_non_threefry_key():
  r = jax.random.normal(jax.random.key(0), (64, 12))
  rbg = rejection.statistical_rejection_sampling(
      jax.random.key(3, impl="rbg"), r, 4, 0.5)
  idx = np.sort(np.asarray(rbg.indices), 1)
  assert np.all(np.asarray(rbg.num_accepted) == 4)
  assert np.all(idx[:, 1:] > idx[:, :-1])  # No repeats.


def test_compacted_steps_match_full_batch_rows():
  """Draws depend on (key, row, round, candidate) only, so the first rows of
  a big batch, whose late rounds run compacted (see
  kernels.step_capacities), equal the same rows run alone (no
  compaction). The big batch has the statistical tests' shape and k."""
  capacities = kernels.step_capacities
  assert len(capacities(NUM_DRAWS)) > 1 and len(capacities(EB)) == 1
  rng = np.random.default_rng(5)
  r = rng.normal(size=(NUM_DRAWS, 8)).astype(np.float32)
  mask = rng.random((NUM_DRAWS, 8)) < 0.9
  big = rejection.statistical_rejection_sampling(jax.random.key(0), r, K,
                                                 0.5, mask)
  small = rejection.statistical_rejection_sampling(jax.random.key(0), r[:EB],
                                                   K, 0.5, mask[:EB])
  rounds = np.asarray(big.rounds)
  assert 0 < np.sum(rounds >= 3) < NUM_DRAWS // 4  # Compacted steps ran.
  for x, y in zip(big, small):
    np.testing.assert_array_equal(np.asarray(x)[:EB], np.asarray(y))


@pytest.mark.parametrize("axis_type", ["Explicit", "Auto"])
def test_sharded_batch_gives_the_same_result(axis_type):
  rng = np.random.default_rng(5)
  r = rng.normal(size=(EB, EN)).astype(np.float32) * 3
  mask = rng.random((EB, EN)) < 0.9
  mesh = jax.make_mesh((jax.device_count(),), ("data",),
                       axis_types=(getattr(jax.sharding.AxisType,
                                           axis_type),))
  spec = jax.NamedSharding(mesh, jax.sharding.PartitionSpec("data", None))
  a = _edge(r, 0.5, mask)
  b = rejection.statistical_rejection_sampling(
      jax.random.key(0), jax.device_put(r, spec), EK, 0.5,
      jax.device_put(mask, spec))
  assert np.asarray(a.rounds).max() >= 2
  for x, y in zip(a, b):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# ---------------------------------------------------------------- limits ----
# Edge cases share one shape [EB, EN], k = EK and always pass a mask, so they
# reuse a single compilation (beta is a traced argument).
EB, EN, EK = 256, 16, 4


def _edge(r, beta, mask=None, key=0, **kwargs):
  r = np.broadcast_to(np.asarray(r, np.float32), (EB, EN))
  mask = np.ones((EB, EN), bool) if mask is None else np.broadcast_to(
      np.asarray(mask, bool), (EB, EN))
  return rejection.statistical_rejection_sampling(
      jax.random.key(key), r, EK, beta, mask, **kwargs)


def _top_k_numpy(r, mask, k):
  keyed = np.where(mask, -r, np.inf)
  return np.argsort(keyed, axis=1, kind="stable")[:, :k]


def test_beta_zero_is_exactly_top_k_with_ties_and_mask():
  rng = np.random.default_rng(0)
  r = rng.integers(0, 5, size=(EB, EN)).astype(np.float32)  # Many ties.
  mask = rng.random((EB, EN)) < 0.8
  mask[:, :EK] = True
  res = _edge(r, 0.0, mask)
  np.testing.assert_array_equal(np.asarray(res.indices),
                                _top_k_numpy(r, mask, EK))
  assert np.all(np.asarray(res.valid))
  top = rejection.select("top_k_over_n", None, r, EK, mask=mask)
  np.testing.assert_array_equal(np.asarray(top.indices),
                                np.asarray(res.indices))


def test_tiny_beta_behaves_like_top_k():
  rng = np.random.default_rng(1)
  r = np.stack([rng.permutation(EN) for _ in range(EB)]).astype(
      np.float32) * 1e-2  # Distinct, gaps 1e-2 >> beta.
  res = _edge(r, 1e-5)
  np.testing.assert_array_equal(np.asarray(res.indices),
                                _top_k_numpy(r, np.ones_like(r, bool), EK))


def test_huge_beta_accepts_first_k_valid():
  """beta -> inf: every ratio ~ 1, so Algorithm 1 takes the first k valid.

  The N candidates are i.i.d. pi_sft draws, so that is a uniform subsample in
  law (sft-sample-rank); per-index inclusion is NOT k/N (see "random").
  """
  r = np.random.default_rng(2).normal(size=(EB, EN)).astype(np.float32)
  mask = np.ones_like(r, bool)
  mask[:, 1] = False
  res = _edge(r, 1e6, mask)
  # P(any rejection) <= EB * EK * max|r - M| / beta ~ 256 * 4 * 1e-5.
  np.testing.assert_array_equal(np.asarray(res.indices),
                                np.tile([0, 2, 3, 4], (EB, 1)))
  np.testing.assert_array_equal(np.asarray(res.rounds), 1)
  np.testing.assert_allclose(np.asarray(res.acceptance_rate), 1.0)


def test_equal_rewards_stop_at_k_within_the_round():
  res = _edge(np.zeros(EN), 0.5)
  np.testing.assert_array_equal(np.asarray(res.indices), [[0, 1, 2, 3]] * EB)
  np.testing.assert_array_equal(np.asarray(res.num_accepted), EK)
  np.testing.assert_array_equal(np.asarray(res.rounds), 1)
  np.testing.assert_array_equal(np.asarray(res.num_visited), EK)  # Not EN.


def test_tied_maxima_are_all_accepted_in_round_one():
  r = np.full(EN, -9.0)
  r[[0, 1, 3, 5, 6]] = [0.0, 3.0, 3.0, 3.0, 3.0]
  res = _edge(r, 0.1)  # Non-max ratios <= exp(-30).
  np.testing.assert_array_equal(np.asarray(res.indices), [[1, 3, 5, 6]] * EB)
  np.testing.assert_array_equal(np.asarray(res.rounds), 1)


def test_fewer_valid_than_k_and_no_valid_rows():
  r = np.tile(np.arange(EN, dtype=np.float32), (EB, 1))
  mask = np.zeros((EB, EN), bool)
  mask[::2, [1, 3, 4]] = True  # Even rows: 3 valid < k; odd rows: none.
  r[:, 0] = np.nan  # Invalid entries may hold anything.
  res = _edge(r, 0.5, mask)
  idx, valid = np.asarray(res.indices), np.asarray(res.valid)
  assert all(set(row[:3]) == {1, 3, 4} for row in idx[::2])
  np.testing.assert_array_equal(valid[::2], [[1, 1, 1, 0]] * (EB // 2))
  np.testing.assert_array_equal(valid[1::2], False)
  np.testing.assert_array_equal(idx[:, 3], 0)  # Padding index.
  np.testing.assert_array_equal(np.asarray(res.num_accepted)[::2], 3)
  np.testing.assert_array_equal(np.asarray(res.num_accepted)[1::2], 0)
  np.testing.assert_array_equal(np.asarray(res.rounds)[1::2], 0)
  np.testing.assert_array_equal(np.asarray(res.acceptance_rate)[1::2], 0.0)


# ----------------------------------------------------------- bad input ----


@pytest.mark.parametrize("bad, match", [
    (np.nan, r"rewards\[1, 2\] = nan"), (np.inf, r"rewards\[1, 2\] = inf"),
    (-np.inf, "not finite")])
def test_non_finite_reward_raises(bad, match):
  r = np.zeros((EB, EN), np.float32)
  r[1, 2] = bad
  with pytest.raises(ValueError, match=match):
    _edge(r, 0.5)
  with pytest.raises(ValueError, match=match):
    rejection.select("top_k_over_n", None, r, EK, mask=np.ones_like(r, bool))


def test_non_finite_log_prob_raises():
  r = np.zeros((EB, EN), np.float32)
  lp = np.zeros((EB, EN), np.float32)
  lp[0, 3] = -np.inf
  with pytest.raises(ValueError, match=r"proposal_logps\[0, 3\]"):
    _edge(r, 0.5, log_prob_correction=(np.zeros_like(lp), lp))


@pytest.mark.parametrize("beta", [-0.1, float("nan"), float("inf")])
def test_bad_beta_raises(beta):
  with pytest.raises(ValueError, match="beta"):
    rejection.statistical_rejection_sampling(jax.random.key(0),
                                             np.zeros((2, 4)), 2, beta)


@pytest.mark.parametrize("k, match", [(5, "exceeds"), (0, ">= 1"),
                                      (-1, ">= 1"), (2.0, "int")])
def test_bad_num_samples_raises(k, match):
  with pytest.raises(ValueError, match=match):
    rejection.statistical_rejection_sampling(jax.random.key(0),
                                             np.zeros((2, 4)), k, 0.5)
  with pytest.raises(ValueError, match=match):
    rejection.select("random", jax.random.key(0), np.zeros((2, 4)), k)


def test_bad_shapes_modes_strategies_raise():
  key = jax.random.key(0)
  with pytest.raises(ValueError, match="shape"):
    rejection.statistical_rejection_sampling(key, np.zeros(4), 2, 0.5)
  with pytest.raises(ValueError, match="mask"):
    rejection.statistical_rejection_sampling(key, np.zeros((2, 4)), 2, 0.5,
                                             np.ones((2, 3), bool))
  with pytest.raises(ValueError, match="bool"):
    rejection.statistical_rejection_sampling(key, np.zeros((2, 4)), 2, 0.5,
                                             np.ones((2, 4), int))
  with pytest.raises(ValueError, match="dtype"):
    rejection.statistical_rejection_sampling(key, np.zeros((2, 4), bool), 2,
                                             0.5)
  with pytest.raises(ValueError, match="mode"):
    rejection.statistical_rejection_sampling(key, np.zeros((2, 4)), 2, 0.5,
                                             mode="fast")
  with pytest.raises(ValueError, match="strategy"):
    rejection.select("best", key, np.zeros((2, 4)), 2)
  with pytest.raises(ValueError, match="beta is required"):
    rejection.select("rso", key, np.zeros((2, 4)), 2)


def test_traced_values_skip_validation_but_shapes_are_checked():
  f = jax.jit(lambda r, b: rejection.statistical_rejection_sampling(
      jax.random.key(0), r, 2, b).indices)
  out = f(jnp.array([[0.0, jnp.nan, 1.0]]), 0.5)  # Cannot raise: traced.
  assert out.shape == (1, 2)
  with pytest.raises(ValueError, match="exceeds"):
    f(jnp.zeros((1, 1)), 0.5)


# ------------------------------------------------------------ baselines ----


def test_random_is_uniform_without_replacement_over_valid():
  n_rows, n, k = NUM_DRAWS, 8, 3
  mask = np.tile(np.array([1, 1, 0, 1, 1, 1, 0, 1], bool), (n_rows, 1))
  r = np.tile(np.asarray(R8, np.float32), (n_rows, 1))
  res = rejection.select("random", jax.random.key(0), r, k, mask=mask)
  idx = np.asarray(res.indices)
  assert np.all(np.asarray(res.valid))
  assert np.all(mask[0][idx])
  assert np.all(np.sort(idx, 1)[:, 1:] > np.sort(idx, 1)[:, :-1])
  for j in range(k):  # Every slot is uniform over the 6 valid candidates.
    freq = np.bincount(idx[:, j], minlength=n)[mask[0]] / n_rows
    assert _agree(freq, np.full(6, 1 / 6), n_rows, 10**9)[0]


def test_best_of_n():
  r = np.array([[0.0, 5.0, 1.0, 7.0, 2.0, 2.0, 9.0]], np.float32)
  one = rejection.select("best_of_n", None, r, 1)
  np.testing.assert_array_equal(np.asarray(one.indices), [[6]])
  # k = 3: groups [0, 1], [2, 3], [4, 5]; candidate 6 unused; ties -> first.
  three = rejection.select("best_of_n", None, r, 3)
  np.testing.assert_array_equal(np.asarray(three.indices), [[1, 3, 4]])
  masked = rejection.select("best_of_n", None, r, 3,
                            mask=np.array([[1, 1, 0, 0, 1, 0, 1]], bool))
  np.testing.assert_array_equal(np.asarray(masked.indices), [[1, 4, 0]])
  np.testing.assert_array_equal(np.asarray(masked.valid), [[1, 1, 0]])
  np.testing.assert_array_equal(np.asarray(masked.num_visited), [4])


def _rest_oracle(rewards, mask, k, threshold):
  """ReST's filter from its definition, one prompt at a time, in plain Python."""
  out = []
  for row, m in zip(rewards, mask):
    valid = [(float(r), i) for i, (r, ok) in enumerate(zip(row, m)) if ok]
    if not valid:
      out.append([])
      continue
    lo, hi = min(r for r, _ in valid), max(r for r, _ in valid)
    scaled = {i: (1.0 if hi == lo else (r - lo) / (hi - lo)) for r, i in valid}
    top = sorted(valid, key=lambda t: (-t[0], t[1]))[:k]
    out.append([i for _, i in top if scaled[i] >= threshold])
  return out


@pytest.mark.parametrize("threshold", [0.0, 0.7, 1.0])
def test_rest_keeps_the_top_k_above_the_rescaled_threshold(threshold):
  rng = np.random.default_rng(3)
  r = rng.normal(size=(6, 9)).astype(np.float32)
  r[1] = 2.0  # all equal: keeps its top k
  r[2, :4] = r[2, 0]  # ties: lower index first
  mask = rng.random((6, 9)) < 0.8
  mask[3] = False  # no valid candidate
  for k in (1, 4, 9):
    sel = rejection.select("rest", None, r, k, mask=mask, threshold=threshold)
    idx, valid = np.asarray(sel.indices), np.asarray(sel.valid)
    got = [[int(i) for i, v in zip(row, vr) if v] for row, vr in zip(idx, valid)]
    assert got == _rest_oracle(r, mask, k, threshold)
    assert all(list(vr) == sorted(vr, reverse=True) for vr in valid)  # valid slots first
    np.testing.assert_array_equal(np.asarray(sel.num_accepted), valid.sum(1))
  with pytest.raises(ValueError, match="threshold must be a number in"):
    rejection.select("rest", None, r, 2, threshold=1.5)
