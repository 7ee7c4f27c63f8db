"""Policy model: cached vs recomputed reference, learning per loss, degenerate pairs, dropout."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rso_jax import losses, models, network, partitioning, trainer

CFG = network.T5Config(vocab_size=384, emb_dim=64, num_heads=4, head_dim=16, mlp_dim=128,
                       num_encoder_layers=1, num_decoder_layers=1)
LI, LT = 12, 10


def _encode(text, length):
  ids = [b + 3 for b in text.encode()] + [1]  # ByteVocabulary: bytes offset by 3, EOS = 1
  assert len(ids) <= length
  return np.array(ids + [0] * (length - len(ids)), np.int32)


def _pair_batch(n=16, seed=0):
  """Prompt 'w: xyz', chosen = the word reversed, rejected = a random other word."""
  rng = np.random.RandomState(seed)
  letters = np.array(list("abcdef"))
  enc, ch, rj = [], [], []
  for _ in range(n):
    w = "".join(rng.choice(letters, rng.randint(3, 7)))
    o = "".join(rng.choice(letters, rng.randint(3, 7)))
    enc.append(_encode("w: " + w, LI))
    ch.append(_encode(w[::-1], LT))
    rj.append(_encode(o, LT))
  batch = {"encoder_input_tokens": np.stack(enc)}
  for name, tgt in (("chosen", np.stack(ch)), ("rejected", np.stack(rj))):
    batch[f"{name}_decoder_target_tokens"] = tgt
    batch[f"{name}_decoder_input_tokens"] = np.concatenate(
        [np.zeros((n, 1), np.int32), tgt[:, :-1]], 1)
    batch[f"{name}_loss_weights"] = (tgt > 0).astype(np.int32)
  return batch


def _params(seed=0):
  m = models.PolicyModel(CFG)
  v = m.get_initial_variables(jax.random.key(seed), m.input_shapes(2, {"inputs": LI,
                                                                       "targets": LT}))
  return trainer.unbox(v["params"])


def test_cached_and_recomputed_reference_agree():
  p_ref, p_pol = _params(0), _params(1)
  batch = _pair_batch()
  recompute = models.PolicyModel(CFG, loss="sigmoid_norm", use_cached_reference=False,
                                 reference_params=p_ref)
  cached = models.PolicyModel(CFG, loss="sigmoid_norm")
  ref = np.asarray(recompute.score_batch(p_ref, batch))
  cached_batch = dict(batch, ref_chosen_logps=ref[:, 0], ref_rejected_logps=ref[:, 1])
  l1, m1 = recompute.loss_fn(p_pol, batch, None)
  l2, m2 = cached.loss_fn(p_pol, cached_batch, None)
  np.testing.assert_allclose(l1, l2, rtol=1e-6)
  np.testing.assert_allclose(m1["rewards/margins"], m2["rewards/margins"], rtol=1e-5, atol=1e-6)
  # At the reference itself Δ = 0: sigmoid-norm is log 2 exactly.
  l0, _ = cached.loss_fn(p_ref, cached_batch, None)
  np.testing.assert_allclose(l0, np.log(2.0), rtol=1e-5)


def test_pair_logps_match_separate_forward_passes():
  p = _params(0)
  batch = _pair_batch(4)
  m = models.PolicyModel(CFG)
  pc, pr = m.pair_logps(p, batch)
  seq = models.Seq2SeqModel(CFG)
  for name, got in (("chosen", pc), ("rejected", pr)):
    b = {"encoder_input_tokens": batch["encoder_input_tokens"],
         "decoder_input_tokens": batch[f"{name}_decoder_input_tokens"],
         "decoder_target_tokens": batch[f"{name}_decoder_target_tokens"],
         "decoder_loss_weights": batch[f"{name}_loss_weights"]}
    np.testing.assert_allclose(got, seq.score_batch(p, b), rtol=1e-5, atol=1e-4)


def test_degenerate_and_nonfinite_pairs_are_skipped_and_counted():
  p_ref = _params(0)
  batch = _pair_batch(8)
  for s in ("decoder_input_tokens", "decoder_target_tokens", "loss_weights"):
    batch[f"rejected_{s}"][0] = batch[f"chosen_{s}"][0]  # identical pair
  batch["rejected_decoder_target_tokens"][1] = 0  # empty rejected response
  batch["rejected_loss_weights"][1] = 0
  batch["rejected_decoder_input_tokens"][1] = 0
  m = models.PolicyModel(CFG, loss="hinge_norm")
  ref = np.array(m.score_batch(p_ref, batch))
  ref[2, 0] = np.nan  # a NaN reference log-prob
  cb = dict(batch, ref_chosen_logps=ref[:, 0], ref_rejected_logps=ref[:, 1])
  loss, metrics = m.loss_fn(p_ref, cb, None)
  assert np.isfinite(loss)
  assert float(metrics["pairs/skipped_degenerate"]) == 2
  assert int(metrics["loss/nonfinite_pairs"]) == 1
  grads = jax.grad(lambda q: m.loss_fn(q, cb, None)[0])(p_ref)
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))


def test_unknown_loss_and_missing_reference_errors():
  with pytest.raises(ValueError, match="unknown loss"):
    models.PolicyModel(CFG, loss="nope")
  with pytest.raises(ValueError, match="reference"):
    models.PolicyModel(CFG, loss="sigmoid_norm", use_cached_reference=False)


@pytest.mark.parametrize("loss,kw", [("hinge_norm", {"gamma": 0.5}),
                                     ("sigmoid_norm", {"gamma": 0.5}),
                                     ("slic_hinge", {"gamma": 0.5}),
                                     ("hinge", {"gamma": 0.5})])
def test_training_raises_accuracy_and_margin(loss, kw):
  p_ref = _params(0)
  model = models.PolicyModel(CFG, loss=loss, **kw)
  mesh = partitioning.create_mesh((2, 1, 1), devices=jax.devices()[:2])
  tr = trainer.Trainer(model, trainer.make_optimizer("adamw", 3e-3), mesh, batch_size=16,
                       feature_lengths={"inputs": LI, "targets": LT})
  state = tr.init_state(p_ref)
  batches = []
  for s in range(4):
    b = _pair_batch(16, seed=s)
    ref = np.asarray(model.score_batch(p_ref, b))
    batches.append(dict(b, ref_chosen_logps=ref[:, 0], ref_rejected_logps=ref[:, 1]))
  first = last = None
  for step in range(24):
    state, m = tr.train_step(state, batches[step % 4])
    m = jax.device_get(m)
    first = first or m
    last = m
  assert last["rewards/accuracies"] > max(first["rewards/accuracies"], 0.8), (first, last)
  assert last["rewards/margins"] > first["rewards/margins"] + 0.1, (first, last)
  assert last["loss"] < first["loss"]


DROPOUT_CFG = dataclasses.replace(CFG, dropout_rate=0.1)


@functools.lru_cache(maxsize=None)
def _sft_and_cached_batch(n=8):
  """π_sft's params and a pair batch carrying its own log-probs as the cached reference."""
  p_sft = _params(0)
  batch = _pair_batch(n)
  ref = np.asarray(models.PolicyModel(CFG).score_batch(p_sft, batch))  # no dropout
  return p_sft, dict(batch, ref_chosen_logps=ref[:, 0], ref_rejected_logps=ref[:, 1])


@pytest.mark.parametrize("loss", losses.LOSS_NAMES)
def test_step_zero_on_pi_sft_with_dropout_config(loss):
  """A dropout-0.1 network at π_θ = π_sft, through the trainer's step (which passes a dropout
  key): the step's loss and metrics are the objective's at log π_θ = log π_sft exactly, so the
  margins are 0 and hinge-norm is 1, sigmoid-norm log 2."""
  model = models.PolicyModel(DROPOUT_CFG, loss=loss,
                             loss_kwargs={"tau": 0.1} if loss == "ipo" else None)
  p_sft, batch = _sft_and_cached_batch()
  mesh = partitioning.create_mesh((2, 1, 1), devices=jax.devices()[:2])
  tr = trainer.Trainer(model, trainer.make_optimizer("adamw", 1e-3), mesh, batch_size=8,
                       feature_lengths={"inputs": LI, "targets": LT})
  _, m = tr.train_step(tr.init_state(p_sft), batch)
  m = jax.device_get(m)
  at_sft, m0 = model.objective(batch, batch["ref_chosen_logps"], batch["ref_rejected_logps"])
  np.testing.assert_allclose(m["loss"], at_sft, rtol=1e-5, atol=1e-6)
  for name in ("rewards/chosen", "rewards/margins", "logps/chosen", "logps/rejected"):
    np.testing.assert_allclose(m[name], m0[name], rtol=1e-5, atol=1e-5, err_msg=name)
  if model.loss.uses_reference:
    np.testing.assert_allclose(m["rewards/margins"], 0.0, atol=1e-5)
    np.testing.assert_allclose(m["rewards/chosen"], 0.0, atol=1e-5)
  at_zero = {"hinge_norm": 1.0, "sigmoid_norm": np.log(2.0)}
  if loss in at_zero:
    np.testing.assert_allclose(m["loss"], at_zero[loss], rtol=1e-6)
  assert model.first_step_note(m) is None  # what the training loop checks after step 1


def test_policy_dropout_switch_keeps_dropout_noise_in_the_margin():
  model = models.PolicyModel(DROPOUT_CFG, loss="hinge_norm", policy_dropout=True)
  p_sft, batch = _sft_and_cached_batch()
  loss, m = jax.jit(model.loss_fn)(p_sft, batch, jax.random.key(3))
  # Dropout 0.1 on a 1-layer network moves the sequence log-probs by far more than rounding.
  assert abs(float(m["rewards/chosen"])) > 1e-3, m
  assert abs(float(loss) - 1.0) > 1e-4
  note = model.first_step_note(jax.device_get(m), tolerance=1e-3)
  assert note and "policy_dropout=True" in note, note
  # Pairs scored by another model than the one training starts from.
  shifted = dict(batch, ref_chosen_logps=batch["ref_chosen_logps"] + 3.0)
  _, m2 = jax.jit(models.PolicyModel(CFG).loss_fn)(p_sft, shifted, None)
  note = models.PolicyModel(CFG).first_step_note(jax.device_get(m2))
  assert note and "-3.000 nats (chosen)" in note and "another model" in note, note
  with pytest.raises(ValueError, match="policy_dropout='yes'"):
    models.PolicyModel(CFG, policy_dropout="yes")
