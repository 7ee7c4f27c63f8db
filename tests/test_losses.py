"""Tests of rso_jax.losses against NumPy formulas written from the paper's equations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rso_jax import losses

GAMMAS = (0.005, 0.05, 0.5, 2.0)


# ---- NumPy oracles (float64), written from arXiv 2309.06657 Eqs. 8-10, SLiC Eq. 1, IPO. ----


def np_log_sigmoid(x):
  return -np.logaddexp(0.0, -x)


def np_delta(pw, pl, rw, rl):
  return (pw - rw) - (pl - rl)


def np_sigmoid_norm(pw, pl, rw, rl, g, eps=0.0):  # Eq. 8 (+ conservative DPO)
  z = g * np_delta(pw, pl, rw, rl)
  return -(1 - eps) * np_log_sigmoid(z) - eps * np_log_sigmoid(-z)


def np_hinge_norm(pw, pl, rw, rl, g):  # Eq. 10
  return np.maximum(0.0, 1.0 - g * np_delta(pw, pl, rw, rl))


def np_eq9_hinge(pw, pl, g):  # Eq. 9
  return np.maximum(0.0, 1.0 - g * (pw - pl))


def np_ipo(pw, pl, rw, rl, tau):
  return (np_delta(pw, pl, rw, rl) - 1.0 / (2.0 * tau)) ** 2


def np_log_softmax(x):
  x = x.astype(np.float64)
  m = x.max(-1, keepdims=True)
  return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def random_logps(seed, b=16, scale=20.0):
  rng = np.random.default_rng(seed)
  return [(-rng.uniform(1.0, scale, size=b)).astype(np.float32) for _ in range(4)]


def grads(fn, pw, pl, rw, rl, **kw):
  return jax.grad(lambda a, b: jnp.sum(fn(a, b, rw, rl, **kw)), argnums=(0, 1))(pw, pl)


# ---- Loss values. ----


@pytest.mark.parametrize("gamma", GAMMAS)
def test_sigmoid_and_hinge_norm_match_paper_equations(gamma):
  pw, pl, rw, rl = random_logps(int(gamma * 1000))
  args = [x.astype(np.float64) for x in (pw, pl, rw, rl)]
  got = losses.sigmoid_norm(pw, pl, rw, rl, gamma)
  assert got.dtype == jnp.float32 and got.shape == (16,)
  np.testing.assert_allclose(got, np_sigmoid_norm(*args, gamma), rtol=1e-5, atol=1e-6)
  got = losses.hinge_norm(pw, pl, rw, rl, gamma)
  np.testing.assert_allclose(got, np_hinge_norm(*args, gamma), rtol=1e-5, atol=1e-5)
  # The same values under jit, and through the registry's uniform signature.
  jitted = jax.jit(lambda *a: losses.get_loss_fn("hinge-norm")(*a, gamma=gamma))
  np.testing.assert_allclose(jitted(pw, pl, rw, rl), got, rtol=1e-6)


@pytest.mark.parametrize("gamma", GAMMAS)
def test_slic_hinge_margin_form_times_gamma_is_eq9(gamma):
  pw, pl, _, _ = random_logps(7)
  got = losses.slic_hinge(pw, pl, gamma=gamma)
  np.testing.assert_allclose(gamma * np.asarray(got), np_eq9_hinge(pw, pl, gamma),
                             rtol=1e-5, atol=1e-5)
  # `hinge` is Eq. 9 itself (no 1/γ factor), through the registry's uniform signature too.
  np.testing.assert_allclose(losses.hinge(pw, pl, gamma), np_eq9_hinge(pw, pl, gamma),
                             rtol=1e-5, atol=1e-5)
  spec = losses.get_loss_fn("hinge")
  assert not spec.uses_reference
  np.testing.assert_allclose(spec(pw, pl, None, None, gamma=gamma),
                             np_eq9_hinge(pw, pl, gamma), rtol=1e-5, atol=1e-5)
  # SLiC Eq. 1 margin form, δ given directly.
  np.testing.assert_allclose(losses.slic_hinge(pw, pl, delta=3.0),
                             np.maximum(0.0, 3.0 - (pw - pl)), rtol=1e-6, atol=1e-6)


def test_slic_hinge_sft_regularizer_and_argument_errors():
  pw, pl, sft, _ = random_logps(3)
  got = losses.slic_hinge(pw, pl, delta=1.0, sft_logps=sft, sft_weight=0.3)
  np.testing.assert_allclose(got, np.maximum(0.0, 1.0 - (pw - pl)) - 0.3 * sft, rtol=1e-5)
  # Registry ignores reference log-probs for SLiC.
  spec = losses.get_loss_fn("slic_hinge")
  assert not spec.uses_reference
  np.testing.assert_allclose(spec(pw, pl, None, None, delta=1.0, sft_logps=sft,
                                  sft_weight=0.3), got)
  with pytest.raises(ValueError, match="exactly one of gamma"):
    losses.slic_hinge(pw, pl)
  with pytest.raises(ValueError, match="exactly one of gamma"):
    losses.slic_hinge(pw, pl, gamma=0.1, delta=10.0)
  with pytest.raises(ValueError, match="needs sft_logps"):
    losses.slic_hinge(pw, pl, gamma=0.1, sft_weight=0.5)


def test_label_smoothing_and_ipo_formulas():
  pw, pl, rw, rl = random_logps(11)
  args = [x.astype(np.float64) for x in (pw, pl, rw, rl)]
  plain = losses.sigmoid_norm(pw, pl, rw, rl, 0.5)
  np.testing.assert_array_equal(losses.sigmoid_norm(pw, pl, rw, rl, 0.5, label_smoothing=0.0),
                                plain)
  for eps in (0.1, 0.3):
    np.testing.assert_allclose(
        losses.sigmoid_norm(pw, pl, rw, rl, 0.5, label_smoothing=eps),
        np_sigmoid_norm(*args, 0.5, eps), rtol=1e-5, atol=1e-6)
  for tau in (0.1, 1.0):
    np.testing.assert_allclose(losses.ipo(pw, pl, rw, rl, tau), np_ipo(*args, tau),
                               rtol=1e-5, atol=1e-4)


def test_bradley_terry():
  rw, rl, _, _ = random_logps(5, scale=3.0)
  np.testing.assert_allclose(losses.bradley_terry(rw, rl), -np_log_sigmoid(rw - rl),
                             rtol=1e-5, atol=1e-6)


# ---- Gradients, zero region, limits. ----


@pytest.mark.parametrize("name,kw", [("sigmoid_norm", {"gamma": 0.5}),
                                     ("sigmoid_norm", {"gamma": 0.05, "label_smoothing": 0.2}),
                                     ("hinge_norm", {"gamma": 0.05}),
                                     ("slic_hinge", {"gamma": 0.5}),
                                     ("hinge", {"gamma": 0.5})])
def test_gradient_signs(name, kw):
  pw, pl, rw, rl = random_logps(13, b=64)
  spec = losses.get_loss_fn(name)
  g_w, g_l = grads(spec, pw, pl, rw, rl, **kw)
  assert np.all(np.asarray(g_w) <= 0) and np.all(np.asarray(g_l) >= 0)
  assert np.any(np.asarray(g_w) < 0)  # the loss does push somewhere
  # Antisymmetric in the pair: the push on the chosen equals the pull on the rejected.
  np.testing.assert_allclose(g_w, -np.asarray(g_l), rtol=1e-6)
  if name == "sigmoid_norm" and "label_smoothing" not in kw:
    np.testing.assert_allclose(  # d/dπ_w −log σ(γΔ) = −γ σ(−γΔ)
        g_w, -kw["gamma"] / (1 + np.exp(kw["gamma"] * np_delta(pw, pl, rw, rl))), rtol=1e-4)


def test_hinge_norm_zero_region_has_exact_zero_loss_and_gradient():
  gamma = 0.05
  rng = np.random.default_rng(0)
  rw, rl = (-rng.uniform(5, 30, size=32)).astype(np.float32), np.full(32, -20.0, np.float32)
  target = np.where(np.arange(32) % 2 == 0, 1.5, 0.5) / gamma  # γΔ = 1.5 or 0.5
  pw, pl = rw + target.astype(np.float32), rl
  loss = np.asarray(losses.hinge_norm(pw, pl, rw, rl, gamma))
  g_w, g_l = grads(losses.hinge_norm, pw, pl, rw, rl, gamma=gamma)
  zero = np.arange(32) % 2 == 0
  assert np.all(loss[zero] == 0.0) and np.all(np.asarray(g_w)[zero] == 0.0)
  assert np.all(np.asarray(g_l)[zero] == 0.0)
  np.testing.assert_allclose(loss[~zero], 0.5, rtol=1e-4)
  np.testing.assert_allclose(np.asarray(g_w)[~zero], -gamma, rtol=1e-6)


def test_sigmoid_norm_limits():
  pw, pl, rw, rl = random_logps(17)
  # γ → 0: −log σ(0) = log 2 whatever the log-probs (the "stuck at 0.6931" signature).
  np.testing.assert_allclose(losses.sigmoid_norm(pw, pl, rw, rl, 1e-9), np.log(2.0),
                             rtol=1e-6)
  # Large γ with Δ > 0: loss → 0; with Δ < 0: loss ≈ γ|Δ| (linear, no overflow).
  d = np_delta(pw, pl, rw, rl)
  pw_pos = pw + np.float32(1.0) - d.astype(np.float32).clip(max=0) * 2  # make Δ ≥ 1 > 0
  assert np.all(np_delta(pw_pos, pl, rw, rl) > 0)
  assert np.all(np.asarray(losses.sigmoid_norm(pw_pos, pl, rw, rl, 1e4)) < 1e-6)
  neg = losses.sigmoid_norm(pl, pw_pos, rl, rw, 1e4)
  np.testing.assert_allclose(neg, 1e4 * np_delta(pw_pos, pl, rw, rl), rtol=1e-4)
  assert np.all(np.isfinite(neg))


def test_hyperparameter_errors():
  pw, pl, rw, rl = random_logps(1)
  for bad in (0.0, -0.1, float("nan"), float("inf")):
    with pytest.raises(ValueError, match="gamma must be a finite number > 0"):
      losses.sigmoid_norm(pw, pl, rw, rl, bad)
  with pytest.raises(ValueError, match="tau"):
    losses.ipo(pw, pl, rw, rl, 0.0)
  with pytest.raises(ValueError, match="label_smoothing"):
    losses.sigmoid_norm(pw, pl, rw, rl, 0.1, label_smoothing=0.5)
  with pytest.raises(ValueError, match="share one shape"):
    losses.hinge_norm(pw, pl[:3], rw, rl, 0.1)
  with pytest.raises(ValueError, match="needs ref_chosen_logps"):
    losses.get_loss_fn("sigmoid_norm")(pw, pl, gamma=0.1)


def test_unknown_loss_name_lists_valid_names():
  with pytest.raises(ValueError, match="unknown loss name 'dpo_v2'.*hinge_norm, ipo, "
                     "sigmoid_norm, slic_hinge"):
    losses.get_loss_fn("dpo_v2")
  assert losses.get_loss_fn("Sigmoid-Norm").name == "sigmoid_norm"


# ---- Metrics and masks. ----


def np_metrics(pw, pl, rw, rl, g, w):
  c, r = g * (pw - rw), g * (pl - rl)
  m = lambda x: float(np.sum(x * w) / np.sum(w))
  return {"rewards/chosen": m(c), "rewards/rejected": m(r),
          "rewards/accuracies": m((c > r).astype(float)), "rewards/margins": m(c - r),
          "logps/chosen": m(pw), "logps/rejected": m(pl)}


def test_preference_metrics_match_numpy_with_weight_mask():
  pw, pl, rw, rl = [x.astype(np.float64) for x in random_logps(23, b=32)]
  w = np.random.default_rng(0).uniform(0.5, 2.0, size=32)  # non-uniform example weights
  w[27:] = 0.0  # 5 padding examples
  pl[27:] = np.nan  # garbage in padding must not leak
  got = losses.preference_metrics(pw, pl, rw, rl, 0.05, weights=w)
  want = np_metrics(pw[:27], pl[:27], rw[:27], rl[:27], 0.05, w[:27])
  assert set(got) == set(want)
  for k, v in want.items():
    np.testing.assert_allclose(float(got[k]), v, rtol=1e-5, atol=1e-6, err_msg=k)
  acc = float(got["rewards/accuracies"])
  assert 0.0 < acc < 1.0  # random data: a mix of right and wrong orderings


def test_masked_mean():
  v = jnp.array([1.0, 2.0, jnp.nan, 4.0])
  w = jnp.array([1.0, 3.0, 0.0, 0.0])
  assert float(losses.masked_mean(v, w)) == pytest.approx(7.0 / 4.0)
  assert float(losses.masked_mean(v, jnp.zeros(4))) == 0.0
  g = jax.grad(lambda x: losses.masked_mean(x, w))(v)
  np.testing.assert_allclose(g, [0.25, 0.75, 0.0, 0.0])


@pytest.mark.parametrize("name,kw", [("sigmoid_norm", {"gamma": 0.1}),
                                     ("hinge_norm", {"gamma": 0.05}),
                                     ("ipo", {"tau": 0.5}),
                                     ("slic_hinge", {"gamma": 0.5})])
def test_nonfinite_inputs_are_masked_counted_and_gradients_finite(name, kw):
  pw, pl, rw, rl = random_logps(29, b=8)
  pw[1], pl[3], rw[5] = np.nan, -np.inf, np.inf
  weights = np.ones(8, np.float32)
  weights[7] = 0.0
  pl[7] = np.nan  # padding example: not counted
  ok = np.array([1, 0, 1, 0, 1, 0, 1, 0], bool)
  if name == "slic_hinge":  # references unused: example 5 stays valid
    ok[5] = True

  @jax.jit
  def f(a, b):
    return losses.pair_loss_and_metrics(name, a, b, rw, rl, weights=weights, **kw)

  loss, per_example, metrics = f(pw, pl)
  spec = losses.get_loss_fn(name)
  clean = spec(*(np.where(ok, x, -1.0) for x in (pw, pl, rw, rl)), **kw)
  np.testing.assert_allclose(loss, np.mean(np.asarray(clean)[ok]), rtol=1e-5)
  assert np.all(np.asarray(per_example)[~ok] == 0.0)
  assert int(metrics["loss/nonfinite_pairs"]) == (2 if name == "slic_hinge" else 3)
  assert all(np.isfinite(float(v)) for v in metrics.values())
  g_w, g_l = jax.grad(lambda a, b: f(a, b)[0], argnums=(0, 1))(pw, pl)
  assert np.all(np.isfinite(g_w)) and np.all(np.isfinite(g_l))
  assert np.all(np.asarray(g_w)[~ok] == 0.0) and np.all(np.asarray(g_l)[~ok] == 0.0)


def test_sanitize_and_sft_logps_nan():
  a = np.array([-1.0, np.nan, -3.0], np.float32)
  b = np.array([-1.0, -2.0, np.inf], np.float32)
  ca, none, cb, valid = losses.sanitize(a, None, b)
  assert none is None
  np.testing.assert_array_equal(valid, [True, False, False])
  np.testing.assert_array_equal(ca, [-1.0, 0.0, -3.0])
  np.testing.assert_array_equal(cb, [-1.0, -2.0, 0.0])
  sft = np.array([-1.0, -1.0, np.nan], np.float32)
  pw, pl = np.array([-1.0, -2.0, -3.0], np.float32), np.array([-2.0, -2.0, -2.0], np.float32)
  loss, _, m = losses.pair_loss_and_metrics("slic_hinge", pw, pl, delta=1.0, sft_logps=sft,
                                            sft_weight=0.5)
  want = np.mean([max(0, 1 - 1.0) + 0.5, max(0, 1 - 0.0) + 0.5])
  np.testing.assert_allclose(loss, want, rtol=1e-6)
  assert int(m["loss/nonfinite_pairs"]) == 1


def test_check_pair_logps_names_tensor_and_index():
  pw, pl, rw, rl = random_logps(31, b=6)
  losses.check_pair_logps(pw, pl, rw, rl)  # clean input passes
  rl[4] = np.nan
  with pytest.raises(ValueError, match=r"ref_rejected_logps has non-finite.*index \[4\]"):
    losses.check_pair_logps(pw, pl, rw, rl)
  losses.check_pair_logps(pw, pl, rw, rl, weights=[1, 1, 1, 1, 0, 1])  # padding: ignored
  pl[2] = 5.0
  with pytest.raises(ValueError, match=r"policy_rejected_logps has positive.*index \[2\]"):
    losses.check_pair_logps(pw, pl, rw, weights=[1, 1, 1, 1, 0, 1])
  with pytest.raises(ValueError, match=r"sft_logps has non-finite.*index \[0\]"):
    losses.check_pair_logps(pw, sft_logps=[np.inf, -1, -1, -1, -1, -1])
  with pytest.raises(ValueError, match="share one shape"):
    losses.check_pair_logps(pw, pl[:2])


def test_pair_token_flags():
  ct = np.array([[5, 6, 7, 0], [5, 6, 0, 0], [0, 0, 0, 0], [5, 6, 9, 0]])
  cw = (ct > 0).astype(np.float32)
  rt = np.array([[5, 6, 7, 0, 0], [5, 6, 8, 0, 0], [3, 0, 0, 0, 0], [5, 6, 9, 0, 0]])
  rw = (rt > 0).astype(np.float32)
  rt[3, 4] = 99  # padding token, weight 0: still identical
  flags = losses.pair_token_flags(ct, cw, rt, rw)
  np.testing.assert_array_equal(flags["identical"], [True, False, False, True])
  np.testing.assert_array_equal(flags["empty_chosen"], [False, False, True, False])
  np.testing.assert_array_equal(flags["empty_rejected"], [False] * 4)


# ---- Token cross-entropy and sequence log-probs. ----


def _token_fixture(seed=0, b=3, length=5, vocab=11):
  rng = np.random.default_rng(seed)
  logits = (rng.normal(size=(b, length, vocab)) * 3).astype(np.float32)
  targets = rng.integers(0, vocab, size=(b, length))
  lengths = np.array([5, 3, 1])[:b]
  weights = (np.arange(length)[None, :] < lengths[:, None]).astype(np.float32)
  return logits, targets, weights


def test_sequence_logps_match_numpy_with_padding():
  logits, targets, weights = _token_fixture()
  logits[1, 4] = np.nan  # padding position: must not leak
  lp = np.take_along_axis(np_log_softmax(np.nan_to_num(logits)), targets[..., None], -1)[..., 0]
  want = np.sum(lp * weights, -1)
  got = losses.sequence_logps(logits, targets, weights)
  assert got.dtype == jnp.float32 and got.shape == (3,)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  # bfloat16 logits are upcast before log_softmax: same as the float32 of the bf16 values.
  bf = jnp.asarray(np.nan_to_num(logits), jnp.bfloat16)
  np.testing.assert_allclose(losses.sequence_logps(bf, targets, weights),
                             losses.sequence_logps(np.asarray(bf.astype(jnp.float32)), targets,
                                                   weights), rtol=1e-6)


@pytest.mark.parametrize("z_loss,eps", [(0.0, 0.0), (1e-4, 0.0), (1e-2, 0.1)])
def test_token_cross_entropy_matches_t5x_formula(z_loss, eps):
  logits, targets, weights = _token_fixture(1)
  vocab = logits.shape[-1]
  logp = np_log_softmax(logits)
  conf, low = 1.0 - eps, eps / (vocab - 1)
  soft = np.full(logp.shape, low)
  np.put_along_axis(soft, targets[..., None], conf, -1)
  const = -(conf * np.log(conf) + (vocab - 1) * low * np.log(low + 1e-20))
  log_z = np.log(np.exp(logits.astype(np.float64)).sum(-1))
  z_term = z_loss * log_z ** 2
  want = (-(soft * logp).sum(-1) - const + z_term) * weights
  loss, z = losses.token_cross_entropy(logits, targets, weights, z_loss=z_loss,
                                       label_smoothing=eps)
  np.testing.assert_allclose(loss, want, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(z, z_term * weights, rtol=1e-5, atol=1e-8)
  assert np.all(np.asarray(loss)[weights == 0] == 0.0)
  if z_loss == 0.0 and eps == 0.0:  # plain CE is minus the sequence log-prob, token by token
    np.testing.assert_allclose(np.sum(loss, -1),
                               -np.asarray(losses.sequence_logps(logits, targets, weights)),
                               rtol=1e-5)


def test_token_shape_errors():
  logits, targets, weights = _token_fixture()
  with pytest.raises(ValueError, match=r"logits must be \[B, L, V\]"):
    losses.sequence_logps(logits[:, :4], targets, weights)
  with pytest.raises(ValueError, match="weights shape"):
    losses.token_cross_entropy(logits, targets, weights[:, :2])


def test_bt_loss_and_metrics_match_numpy():
  rng = np.random.default_rng(0)
  rw, rl = rng.normal(size=9).astype(np.float32), rng.normal(size=9).astype(np.float32)
  rl[2] = rw[2]
  w = np.ones(9, np.float32)
  w[4] = 0.0
  loss, m = losses.bt_loss_and_metrics(rw, rl, w, margin=0.3, center_weight=0.05)
  keep = w > 0
  bt = np.log1p(np.exp(-(rw - rl - 0.3)))
  np.testing.assert_allclose(loss, np.mean((bt + 0.05 * (rw + rl) ** 2)[keep]), rtol=1e-5)
  np.testing.assert_allclose(m["bt_loss"], np.mean(bt[keep]), rtol=1e-5)
  acc = np.where(rw > rl, 1.0, np.where(rw == rl, 0.5, 0.0))
  np.testing.assert_allclose(m["accuracy"], np.mean(acc[keep]), rtol=1e-6)
  np.testing.assert_allclose(m["margin"], np.mean((rw - rl)[keep]), rtol=1e-5)
  np.testing.assert_allclose(m["mean_reward"], np.mean(((rw + rl) / 2)[keep]), rtol=1e-5, atol=1e-7)
  assert float(m["pairs/skipped_identical"]) == 1.0
