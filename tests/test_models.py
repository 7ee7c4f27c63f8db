"""Policy model: cached vs recomputed reference, learning per loss, degenerate pairs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rso_jax import models, network, partitioning, trainer

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
