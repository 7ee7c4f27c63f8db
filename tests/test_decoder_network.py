"""The decoder-only network behind the T5 calls: the prefix / response split equals the plain
causal forward, the cached decode equals the uncached forward at every step, N candidates on
one prefill equal N independent decodes, and training, sampling and reward scoring do not
depend on the mesh. (Parity with HF transformers: tests/test_hf_decoder.py.)"""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import (BYTES, fit, init_params, losses_on_meshes, manifest, one_device_mesh,
                     seq2seq_batch, word_texts)
from rso_jax import checkpoints, decoder_network, decoding, inference, models, networks
from rso_jax import partitioning
from rso_jax import reward_models, trainer

DCFG = decoder_network.DecoderConfig(vocab_size=384, emb_dim=32, num_heads=4, num_kv_heads=2,
                                     head_dim=8, mlp_dim=64, num_layers=2)
LENGTHS = {"inputs": 32, "targets": 16}
EOS = 1


def _prompts(rng, lengths, width):
  """Right-padded prompts `[B, width]`: random tokens, then EOS."""
  out = np.zeros((len(lengths), width), np.int32)
  for b, n in enumerate(lengths):
    out[b, :n] = rng.randint(3, 259, n)
    out[b, n] = EOS
  return out


@pytest.fixture(scope="module")
def params():
  p = init_params(models.Seq2SeqModel(DCFG), LENGTHS)
  # Sharper than the initialization, so samples are not uniform noise.
  return jax.tree.map(lambda x: x * 2.0 if x.ndim > 1 else x, p)


def test_prefix_and_response_split_is_the_causal_forward(params):
  """Ragged prompts: each row's response logits equal the causal LM's on its unpadded
  prompt (without EOS) + response, at the positions that predict the response."""
  module = decoder_network.DecoderTransformer(DCFG)
  rng = np.random.RandomState(0)
  lens = [5, 1, 9, 0]  # 0: a prompt of EOS only
  enc = _prompts(rng, lens, 12)
  tgt = rng.randint(3, 259, (4, 6)).astype(np.int32)
  logits = module.apply({"params": params}, enc, decoding.shift_right(jnp.asarray(tgt)), tgt,
                        enable_dropout=False)
  for b, n in enumerate(lens):
    seq = np.concatenate([enc[b, :n], tgt[b]]) if n else np.concatenate([[EOS], tgt[b]])
    full = module.apply({"params": params}, seq[None], method="causal_logits")[0]
    start = max(n - 1, 0)
    np.testing.assert_allclose(logits[b], full[start:start + 6], atol=2e-5)
  assert float(jnp.max(logits[..., 0])) < -1e9  # the padding id never has mass


def test_cached_decode_equals_the_uncached_forward_at_every_step(params):
  module = decoder_network.DecoderTransformer(DCFG)
  rng = np.random.RandomState(1)
  enc = _prompts(rng, [7, 3], 10)
  n, length = 3, 9
  tgt = rng.randint(3, 259, (2 * n, length)).astype(np.int32)
  dec_in = np.asarray(decoding.shift_right(jnp.asarray(tgt)))
  full = module.apply({"params": params}, enc, dec_in, tgt, enable_dropout=False)
  prefix = module.apply({"params": params}, enc, method="encode")
  step = lambda cache, tok: module.apply(
      {"params": params, "cache": cache}, prefix, enc, tok, decode=True,
      max_decode_length=length, mutable=["cache"], method="decode")
  _, laid = jax.eval_shape(lambda: module.apply(
      {"params": params}, prefix, enc, jnp.zeros((2 * n, length), jnp.int32), decode=True,
      max_decode_length=length, mutable=["cache"], method="decode"))
  cache = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), laid["cache"])
  for t in range(length):
    logits, mutated = step(cache, dec_in[:, t:t + 1])
    cache = mutated["cache"]
    np.testing.assert_allclose(logits[:, 0], full[:, t], atol=2e-5, err_msg=f"step {t}")


def test_n_candidates_on_one_prefill_equal_n_independent_decodes(params):
  module = decoder_network.DecoderTransformer(DCFG)
  enc = _prompts(np.random.RandomState(2), [4, 11, 2], 14)
  kw = dict(max_decode_length=12, temperature=1.0, top_k=None, top_p=None, vocab_size=259)
  shared = decoding.sample(module, params, jnp.asarray(enc), jax.random.key(5), num_decodes=4,
                           **kw)
  alone = decoding.sample(module, params, jnp.asarray(np.repeat(enc, 4, axis=0)),
                          jax.random.key(5), num_decodes=1, **kw)
  np.testing.assert_array_equal(np.asarray(shared.tokens).reshape(12, 12),
                                np.asarray(alone.tokens)[:, 0])
  np.testing.assert_allclose(np.asarray(shared.model_logps).reshape(-1),
                             np.asarray(alone.model_logps)[:, 0], atol=1e-4)
  assert len({tuple(r) for r in np.asarray(shared.tokens).reshape(12, 12)}) > 6  # not degenerate
  # log π of the samples is the teacher-forced score of the same tokens.
  scored = decoding.score(module, params, jnp.asarray(enc),
                          decoding.tokens_to_decoder_targets(shared.tokens))
  np.testing.assert_allclose(np.asarray(scored).reshape(3, 4), shared.model_logps, atol=1e-4)


def test_generation_and_scores_do_not_depend_on_the_mesh(params):
  prompts = word_texts(6, seed=3)
  outs = []
  for mesh in (one_device_mesh(), partitioning.create_mesh((2, 2, 2))):
    g = inference.load(None, manifest=manifest("seq2seq", LENGTHS, config=DCFG), params=params,
                       mesh=mesh, batch_size=8)
    out = g.generate(prompts, key=jax.random.key(1), num_decodes=4, max_decode_length=12)
    outs.append((out, g.score(prompts, out.tokens)))
  (a, sa), (b, sb) = outs
  np.testing.assert_array_equal(a.tokens, b.tokens)
  np.testing.assert_allclose(a.model_logps, b.model_logps, atol=1e-4)
  np.testing.assert_allclose(sa, a.model_logps, atol=1e-4)
  np.testing.assert_allclose(sb, sa, atol=1e-4)


def _pair_batch(rng, b):
  enc = _prompts(rng, rng.randint(1, 20, b), LENGTHS["inputs"])
  out = {"encoder_input_tokens": enc}
  for side in ("chosen", "rejected"):
    tgt = np.zeros((b, LENGTHS["targets"]), np.int32)
    for i in range(b):
      n = rng.randint(1, 12)
      tgt[i, :n] = rng.randint(3, 259, n)
      tgt[i, n] = EOS
    s = seq2seq_batch(enc, tgt)
    out[f"{side}_decoder_input_tokens"] = s["decoder_input_tokens"]
    out[f"{side}_decoder_target_tokens"] = tgt
    out[f"{side}_loss_weights"] = s["decoder_loss_weights"]
  return out


@pytest.mark.parametrize("kind", ["sft", "bt"])
def test_training_steps_do_not_depend_on_the_mesh(kind):
  rng = np.random.RandomState(4)
  if kind == "sft":
    model = models.Seq2SeqModel(DCFG)
    enc = _prompts(rng, rng.randint(1, 20, 16), LENGTHS["inputs"])
    tgt = np.where(np.arange(16)[None] < rng.randint(2, 16, (16, 1)),
                   rng.randint(3, 259, (16, 16)), 0).astype(np.int32)
    batches = [seq2seq_batch(enc, tgt)] * 2
  else:
    model = reward_models.BradleyTerryRewardModel(DCFG, architecture="decoder", pooling="last")
    batches = [_pair_batch(rng, 16) for _ in range(2)]
  losses = losses_on_meshes(model, batches, LENGTHS, 16, trainer.make_optimizer("adamw", 1e-3))
  np.testing.assert_allclose(losses[(2, 2, 2)], losses[(1, 1, 1)], rtol=1e-5, atol=1e-5)


def test_bt_reward_model_reads_each_prompt_once_and_starts_from_the_policy(params):
  model = reward_models.BradleyTerryRewardModel(DCFG, architecture="decoder", pooling="last")
  rm_params = init_params(model, LENGTHS)
  policy_names = set(flax.traverse_util.flatten_dict(params, sep="/"))
  rm_names = set(flax.traverse_util.flatten_dict(rm_params, sep="/"))
  # Every parameter but the head has the policy's name (and so its shape: one network).
  assert rm_names - policy_names == {"reward_head/kernel"}
  assert policy_names - rm_names == {"logits_dense/kernel"}
  rng = np.random.RandomState(6)
  enc = _prompts(rng, [3, 8], LENGTHS["inputs"])
  resp = np.zeros((6, LENGTHS["targets"]), np.int32)
  for i in range(6):
    n = rng.randint(1, 10)
    resp[i, :n] = rng.randint(3, 259, n)
    resp[i, n] = EOS
  together = model.rewards(rm_params, jnp.asarray(enc), jnp.asarray(resp))  # 3 per prompt
  alone = model.rewards(rm_params, jnp.asarray(np.repeat(enc, 3, axis=0)), jnp.asarray(resp))
  np.testing.assert_allclose(together, alone, atol=1e-5)
  assert len(set(np.round(np.asarray(together), 5))) == 6


def test_configs_are_checked_and_round_trip():
  with pytest.raises(ValueError, match="num_kv_heads=3"):
    decoder_network.DecoderConfig(num_heads=4, num_kv_heads=3)
  with pytest.raises(ValueError, match="architecture='GPT2'"):
    decoder_network.DecoderConfig(architecture="GPT2")
  assert networks.from_json(networks.to_json(DCFG)) == DCFG
  assert networks.to_json(DCFG)["family"] == "decoder"
  with pytest.raises(ValueError, match="architecture='encoder'"):
    reward_models.BradleyTerryRewardModel(DCFG, architecture="encoder")
  with pytest.raises(TypeError, match="DecoderConfig"):
    models.Seq2SeqModel({"vocab_size": 3})
  m = manifest("seq2seq", LENGTHS, config=DCFG, vocabulary=BYTES)
  assert checkpoints.Manifest.from_json(m.to_json()) == m


def test_pairwise_ranking_model_is_text_to_text_on_a_decoder():
  """ρ on a decoder: the prompt (the ranking input) is the prefix, "A" / "B" the response; one
  decode step gives the teacher-forced first logit, and the model learns a fixed batch."""
  model = reward_models.PairwiseRankingModel(DCFG)
  rng = np.random.RandomState(7)
  enc = _prompts(rng, rng.randint(2, 20, 8), LENGTHS["inputs"])
  a, b = ord("A") + 3, ord("B") + 3
  first = np.where(rng.rand(8) < 0.5, a, b)
  tgt = np.stack([first, np.full(8, EOS)] + [np.zeros(8)] * 6, 1).astype(np.int32)
  batch = seq2seq_batch(enc, tgt)
  p = init_params(model, {"inputs": LENGTHS["inputs"], "targets": 8})
  p = fit(model, batch, p, 40, 3e-3)
  _, metrics = jax.jit(model.loss_fn)(p, batch, None)
  assert float(metrics["pairwise_accuracy"]) == 1.0
  logits = model.logits(p, batch["encoder_input_tokens"], batch["decoder_input_tokens"],
                        batch["decoder_target_tokens"])
  np.testing.assert_allclose(model.preference_logits(p, jnp.asarray(enc)),
                             logits[:, 0, a] - logits[:, 0, b], atol=1e-4)
