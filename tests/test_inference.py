"""The inference layer: one loader for every checkpoint kind, generate / score / reward / prefer,
the over-length rule, padded fixed-shape batches, sharding invariance."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import seqio

from helpers import (CFG, fit, init_params, manifest, one_device_mesh, save, seq2seq_batch,
                     tokens, train_spm, word_texts)
from rso_jax import errors
from rso_jax import checkpoints, decoding, inference, models, partitioning
from rso_jax import reward_models as rm
from rso_jax.tasks import synthetic

VOCAB = seqio.ByteVocabulary()
RANK_LEN = 96
BT_LENGTHS = {"inputs": 32, "targets": 32}
SEQ_LENGTHS = {"inputs": 32, "targets": 16}


_tok = tokens


@pytest.fixture(scope="module")
def pw_params():
  return init_params(rm.PairwiseRankingModel(CFG), {"inputs": RANK_LEN, "targets": 8})


@pytest.fixture(scope="module")
def bt_params():
  return init_params(rm.BradleyTerryRewardModel(CFG), BT_LENGTHS)


@pytest.fixture(scope="module")
def seq_params():
  return init_params(models.Seq2SeqModel(CFG), SEQ_LENGTHS)


def _reward(kind, params, lengths, batch_size=4, mesh=None, **kw):
  settings = {"pooling": "mean", "separator": rm.BT_SEPARATOR} if kind == "bt_rm" else {}
  return inference.load(None, manifest=manifest(kind, lengths, settings=settings), params=params,
                        mesh=mesh or one_device_mesh(), batch_size=batch_size, **kw)


def _pw(params, length=RANK_LEN, **kw):
  return _reward("pairwise_rm", params, {"inputs": length, "targets": 8}, **kw)


def _bt(params, lengths=BT_LENGTHS, **kw):
  return _reward("bt_rm", params, lengths, **kw)


# ------------------------------------------------------------------------------ the loader
def test_loader_opens_every_kind_without_a_kind_argument(tmp_path, seq_params):
  dirs = {
      "seq2seq": save(tmp_path / "sft", models.Seq2SeqModel(CFG), SEQ_LENGTHS, seq_params),
      "policy": save(tmp_path / "policy", models.PolicyModel(CFG), SEQ_LENGTHS, seq_params),
      "pairwise_rm": save(tmp_path / "pw", rm.PairwiseRankingModel(CFG),
                          {"inputs": RANK_LEN, "targets": 8}),
      "bt_rm": save(tmp_path / "bt", rm.BradleyTerryRewardModel(CFG, pooling="last"),
                    BT_LENGTHS),
  }
  for kind, path in dirs.items():
    loaded = inference.load(path, mesh=one_device_mesh())
    assert loaded.kind == kind and loaded.config == CFG
    want = inference.Generator if kind in checkpoints.GENERATIVE_KINDS else inference.RewardModel
    assert isinstance(loaded, want)
  assert inference.load(dirs["bt_rm"], mesh=one_device_mesh()).model.pooling == "last"
  # A converted checkpoint records no lengths: they must be given.
  conv = tmp_path / "conv"
  checkpoints.save_params(str(conv), seq_params, manifest("seq2seq", None, source="convert"))
  with pytest.raises(errors.CheckpointError, match="no 'inputs' feature length"):
    inference.load(str(conv), mesh=one_device_mesh())
  g = inference.load(str(conv), mesh=one_device_mesh(), feature_lengths=SEQ_LENGTHS)
  assert g.feature_lengths == SEQ_LENGTHS


def test_wrong_kind_and_missing_manifest_are_one_line_errors(tmp_path, seq_params):
  sft = save(tmp_path / "sft", models.Seq2SeqModel(CFG), SEQ_LENGTHS, seq_params)
  bt = save(tmp_path / "bt", rm.BradleyTerryRewardModel(CFG), BT_LENGTHS)
  with pytest.raises(errors.CheckpointError) as e:
    inference.load(sft, expect=checkpoints.REWARD_KINDS, role="reward model")
  assert "is a seq2seq (SFT) policy" in str(e.value) and "\n" not in str(e.value)
  with pytest.raises(errors.CheckpointError, match="policy needs a seq2seq"):
    inference.load(bt, expect=checkpoints.GENERATIVE_KINDS, role="policy")
  # A checkpoint from before manifests: the error names the command that adds one.
  old = tmp_path / "old"
  checkpoints.save_params(str(old), seq_params)
  with pytest.raises(errors.CheckpointError, match="add-manifest"):
    inference.load(str(old))
  with open(old / checkpoints.LEGACY_CONFIG_FILE, "w") as f:
    json.dump(dict(CFG.__dict__, mlp_activations=list(CFG.mlp_activations)), f)
  assert checkpoints.main(["add-manifest", str(old), "--kind=seq2seq", "--inputs_length=32",
                           "--targets_length=16"]) == 0
  assert inference.load(str(old), mesh=one_device_mesh()).kind == "seq2seq"
  with pytest.raises(errors.CheckpointError, match="not found"):
    inference.load(str(tmp_path / "nope"))


def test_params_that_do_not_match_the_manifest_are_refused(tmp_path):
  path = save(tmp_path / "bt", rm.BradleyTerryRewardModel(CFG), BT_LENGTHS)
  wrong = manifest("seq2seq", SEQ_LENGTHS)  # a BT tree read as a seq2seq network
  checkpoints.write_manifest(path, wrong)
  with pytest.raises(errors.CheckpointError, match="do not match its manifest"):
    inference.load(path, mesh=one_device_mesh())


# ------------------------------------------------------------------------------ generator
def test_generate_equals_the_sampler_and_score_equals_log_pi(seq_params):
  mesh = one_device_mesh()
  g = inference.load(None, manifest=manifest("seq2seq", SEQ_LENGTHS), params=seq_params,
                     mesh=mesh, batch_size=3)
  prompts = ["owl cat ram", "dog", "eel ewe yak fox", "bee"]
  key = jax.random.key(7)
  out = g.generate(prompts, key=key, num_decodes=5, temperature=0.9, top_k=20)
  assert out.tokens.shape == (4, 5, 16) and len(out.texts) == 4 and len(out.texts[0]) == 5
  # Oracle: the sampler on hand-tokenized prompts, chunk by chunk (3 rows, the last padded).
  tok = _tok(prompts, 32)
  first = decoding.sample(g.model.module, seq_params, jnp.asarray(tok[:3]),
                          jax.random.fold_in(key, 0), num_decodes=5, max_decode_length=16,
                          temperature=0.9, top_k=20, vocab_size=259)
  np.testing.assert_array_equal(out.tokens[:3], np.asarray(first.tokens))
  np.testing.assert_array_equal(out.prompt_tokens, tok)
  assert out.tokens.max() < 259  # never a padding row of the embedding table
  for row, trow in zip(out.texts, out.tokens):
    for text, t in zip(row, trow):
      ids = [int(x) for x in t if x > 0]
      ids = ids[:ids.index(1)] if 1 in ids else ids
      assert text == VOCAB.decode(ids)
  np.testing.assert_allclose(g.score(prompts, out.tokens), out.model_logps, atol=1e-4)
  # Texts are tokenized with the checkpoint's vocabulary, never cut (L grows to fit).
  ys = [["owl", "cat dog"], ["ram " * 10, "e"], ["x", "y"], ["bee", ""]]
  want = g.score(prompts, np.stack([_tok(row, 48) for row in ys]))
  np.testing.assert_allclose(g.score(prompts, ys), want, atol=1e-5)


def test_generate_is_invariant_to_the_mesh(seq_params):
  prompts = word_texts(6, seed=1)
  outs = []
  for mesh in (one_device_mesh(), partitioning.create_mesh((-1, 1, 1)),
               partitioning.create_mesh((2, 2, 2))):
    g = inference.load(None, manifest=manifest("seq2seq", SEQ_LENGTHS), params=seq_params,
                       mesh=mesh, batch_size=8)
    outs.append(g.generate(prompts, key=jax.random.key(1), num_decodes=4))
  for o in outs[1:]:
    np.testing.assert_array_equal(o.tokens, outs[0].tokens)
    np.testing.assert_allclose(o.model_logps, outs[0].model_logps, atol=1e-4)


def test_the_runs_logical_rules_shard_the_loaded_checkpoint(seq_params):
  """`rules` (a run's LOGICAL_RULES) place the params as training does; the default rules
  shard them over fsdp, rules mapping every axis to None replicate them; decodes agree."""
  mesh = partitioning.create_mesh((1, -1, 1))
  replicated = [(name, None) for name, _ in partitioning.LOGICAL_RULES]
  load = lambda rules: inference.load(None, manifest=manifest("seq2seq", SEQ_LENGTHS),
                                      params=seq_params, mesh=mesh, batch_size=8, rules=rules)
  default, custom = load(None), load(replicated)
  specs = lambda g: [x.sharding.spec for x in jax.tree.leaves(g.params)]
  assert any(any(axis is not None for axis in spec) for spec in specs(default))
  assert all(all(axis is None for axis in spec) for spec in specs(custom))
  prompts = word_texts(4, seed=2)
  a = default.generate(prompts, key=jax.random.key(3), num_decodes=2)
  b = custom.generate(prompts, key=jax.random.key(3), num_decodes=2)
  np.testing.assert_array_equal(a.tokens, b.tokens)


def test_long_prompts_keep_their_start_or_end_and_are_counted(seq_params):
  g = inference.load(None, manifest=manifest("seq2seq", SEQ_LENGTHS), params=seq_params,
                     mesh=one_device_mesh(), batch_size=2)
  long = "owl " * 20  # 80 bytes > 32
  out = g.greedy(["cat", long])
  assert list(out.prompt_truncated) == [False, True]
  assert g.stats["contexts_truncated"] == 1
  np.testing.assert_array_equal(out.prompt_tokens[1], _tok([long[:31]], 32)[0])
  end = inference.load(None, manifest=manifest("seq2seq", SEQ_LENGTHS), params=seq_params,
                       mesh=one_device_mesh(), batch_size=2, keep_context="end")
  np.testing.assert_array_equal(end.greedy([long]).prompt_tokens[0], _tok([long[-31:]], 32)[0])


def test_sentencepiece_generate_texts_reencode_to_their_tokens(tmp_path):
  """A policy with its own SentencePiece vocabulary: texts come back in that vocabulary.

  The tiny policy is first fit to copy its prompt (so its decodes are canonical token
  sequences, as a trained model's are); greedy and T = 0.5 decodes must then re-encode to
  exactly the generated tokens (with the byte vocabulary they would not even be the same text).
  """
  texts = word_texts(400, seed=3)
  spm_path = train_spm(tmp_path, texts, vocab_size=64)
  vocab = seqio.SentencePieceVocabulary(spm_path)
  cfg = CFG.__class__(**dict(CFG.__dict__, vocab_size=128))
  model = models.Seq2SeqModel(cfg)
  lengths = {"inputs": 24, "targets": 24}
  train_texts = word_texts(8, lo=2, hi=5, seed=4)
  x = tokens(train_texts, 24, vocab)
  params = fit(model, seq2seq_batch(x, x), init_params(model, lengths), 200, 1e-2)
  spec = {"type": "sentencepiece", "path": spm_path, "extra_ids": 0}
  path = save(tmp_path / "sft", model, lengths, params, vocabulary=spec)
  assert os.path.exists(os.path.join(path, checkpoints.SPM_FILE))  # the vocabulary travels
  g = inference.load(path, mesh=one_device_mesh(), batch_size=8)
  assert g.manifest.vocabulary["type"] == "sentencepiece"
  for out in (g.greedy(train_texts),
              g.generate(train_texts, key=jax.random.key(0), num_decodes=2, temperature=0.5)):
    assert out.tokens.max() < vocab.vocab_size
    assert out.finished.sum() >= 0.75 * out.finished.size
    for row, trow, frow in zip(out.texts, out.tokens, out.finished):
      for text, t, fin in zip(row, trow, frow):
        if fin:
          ids = [int(v) for v in t[:list(t).index(1)]]
          assert vocab.encode(text) == ids, (text, ids)
  assert g.greedy(train_texts).texts[0][0] == train_texts[0]


# ------------------------------------------------------------------------------ reward models
def test_pairwise_reward_is_eq7_with_an_exact_zero_baseline(pw_params):
  scorer = _pw(pw_params)
  prompts = ["owl cat", "ram dog eel"]
  cands = [["owl", "owl cat", "owl", "cat owl"], ["ram dog", "ram", "dog eel ram", "ram dog"]]
  r = scorer.reward(prompts, cands)
  assert r.shape == (2, 4) and r.dtype == np.float32
  assert r[0, 0] == 0.0 and r[0, 2] == 0.0 and r[1, 0] == 0.0 and r[1, 3] == 0.0
  # Oracle: logit ρ(x, y, y_b) from the raw network on hand-tokenized inputs.
  pref = jax.jit(rm.PairwiseRankingModel(CFG).preference_logits)
  for b, j in [(0, 1), (0, 3), (1, 1), (1, 2)]:
    tok = _tok([f"[CONTEXT] {prompts[b]} [RESPONSE A] {cands[b][j]} [RESPONSE B] "
                f"{cands[b][0]}"], RANK_LEN)
    want = float(pref(pw_params, jnp.asarray(tok))[0])
    np.testing.assert_allclose(r[b, j], want, atol=1e-5)
    assert r[b, j] != 0.0
  r2 = scorer.reward(prompts, cands, baselines=["cat owl", "zzz"])
  assert r2[0, 3] == 0.0 and np.all(r2[1] != 0.0)
  np.testing.assert_allclose(scorer.prefer(prompts, ["owl cat", "ram"], ["owl", "ram dog"]),
                             1 / (1 + np.exp(-r[:, 1])), rtol=1e-5)


def test_symmetrized_preference_is_antisymmetric(pw_params):
  sym = _pw(pw_params, symmetrize=True)
  x, a, b = ["owl cat", "ram"], ["owl", "ram dog"], ["cat", "ewe"]
  np.testing.assert_allclose(sym.prefer(x, a, b), 1.0 - sym.prefer(x, b, a), atol=1e-6)


def test_bt_reward_and_prefer_match_the_network(bt_params):
  model = rm.BradleyTerryRewardModel(CFG)
  scorer = _bt(bt_params)
  x, c, r = ["owl cat", "ram", "eel dog"], ["owl cat", "ram ewe", "eel"], ["cat", "ram ewe", "dog"]
  packed = lambda xs, ys: _tok([f"{a} [RESPONSE] {b}" for a, b in zip(xs, ys)], 32 + 12 + 32)
  apply = jax.jit(lambda t: model.module.apply({"params": bt_params}, t))
  rw, rl = np.asarray(apply(packed(x, c))), np.asarray(apply(packed(x, r)))
  np.testing.assert_allclose(scorer.reward(x, [[y] for y in c])[:, 0], rw, atol=1e-5)
  np.testing.assert_allclose(scorer.prefer(x, c, r), 1 / (1 + np.exp(-(rw - rl))), atol=1e-6)
  rel = scorer.reward(x, [[y, z] for y, z in zip(c, r)], baselines=r)
  np.testing.assert_allclose(rel[:, 0], np.where([True, False, True], rw - rl, 0.0), atol=1e-5)
  assert np.all(rel[:, 1] == 0.0)


def test_a_max_length_unfinished_response_is_scored(bt_params, seq_params):
  """A policy's decode that never emits EOS is `targets` tokens long; a BT model trained at the
  policy's own lengths reads it with its EOS once told the decode length, with the rewards of
  the network on the packed tokens."""
  model = rm.BradleyTerryRewardModel(CFG)
  policy = inference.load(None, manifest=manifest("seq2seq", SEQ_LENGTHS), params=seq_params,
                          mesh=one_device_mesh(), batch_size=4)
  lt = SEQ_LENGTHS["targets"]
  prompts = ["owl cat ram", "dog", "eel ewe yak fox"]
  out = policy.generate(prompts, key=jax.random.key(0), num_decodes=4, temperature=1.0)
  unfinished = [(i, j) for i in range(3) for j in range(4) if not out.finished[i, j]]
  assert unfinished, "a random policy should leave some decodes unfinished"
  assert all(out.lengths[i, j] == lt for i, j in unfinished)
  full = "abcdefghijklmnop"  # 16 bytes: a full-length response in the byte vocabulary
  longer = full + "qrst"  # a text that re-encodes longer than any decode (SentencePiece can)
  rows = [[full, longer] + list(out.texts[i]) for i in range(3)]
  narrow = _bt(bt_params, {"inputs": 32, "targets": lt})
  assert np.isnan(narrow.reward(prompts, rows)[:, 0]).all()  # 16 tokens + EOS: 17 > 16
  scorer = _bt(bt_params, {"inputs": 32, "targets": lt}, response_length=lt)
  assert scorer.feature_lengths["targets"] == lt + 1
  r = scorer.reward(prompts, rows)
  assert np.isfinite(r).all() and scorer.stats["responses_too_long"] == 0
  packed = _tok([f"{x} [RESPONSE] {y}" for x, row in zip(prompts, rows) for y in row],
                32 + 12 + 32)
  want = jax.jit(lambda t: model.module.apply({"params": bt_params}, t))(packed)
  np.testing.assert_allclose(r.reshape(-1), np.asarray(want), atol=1e-5)
  assert rm.response_feature_lengths(SEQ_LENGTHS) == {"inputs": 32, "targets": lt + 1}


def test_encoder_decoder_bt_encodes_each_prompt_once_with_the_same_rewards():
  """`reward` (per prompt: its N responses as decoder rows of one encoder pass, chunked by
  prompts, sharded over 8 devices) = the network on aligned rows = `prefer` (row by row); the
  baselines' shift and exact zeros as for the encoder model."""
  model = rm.BradleyTerryRewardModel(CFG, pooling="last", architecture="encoder_decoder")
  params = init_params(model, BT_LENGTHS)
  settings = {"pooling": "last", "separator": rm.BT_SEPARATOR,
              "architecture": "encoder_decoder"}
  load = lambda mesh, batch_size: inference.load(
      None, manifest=manifest("bt_rm", BT_LENGTHS, settings=settings), params=params,
      mesh=mesh, batch_size=batch_size)
  sharded = load(partitioning.create_mesh((-1, 1, 1)), 5)
  plain = load(one_device_mesh(), 4)
  assert sharded.model.architecture == "encoder_decoder"
  prompts = ["owl cat", "ram dog", "eel", "cat owl ram"]
  cands = [["owl", "cat owl", "owl cat"], ["ram", "dog", "ram dog"], ["eel", "x", "eel eel"],
           ["cat", "owl ram", "cat owl ram"]]
  r = sharded.reward(prompts, cands)
  rows = jax.jit(model.rewards)
  want = np.asarray(rows(params, _tok([p for p in prompts for _ in range(3)], 32),
                         _tok([y for row in cands for y in row], 32))).reshape(4, 3)
  np.testing.assert_allclose(r, want, atol=1e-5)
  np.testing.assert_allclose(plain.reward(prompts, cands), want, atol=1e-5)
  pref = plain.prefer(prompts, [row[0] for row in cands], [row[1] for row in cands])
  np.testing.assert_allclose(pref, 1 / (1 + np.exp(-(want[:, 0] - want[:, 1]))), atol=1e-5)
  rel = sharded.reward(prompts, cands, baselines=[row[2] for row in cands])
  np.testing.assert_allclose(rel[:, :2], want[:, :2] - want[:, 2:], atol=1e-5)
  assert np.all(rel[:, 2] == 0.0)


def _both(pw_params, bt_params, batch_size, mesh=None):
  return [_pw(pw_params, batch_size=batch_size, mesh=mesh),
          _bt(bt_params, batch_size=batch_size, mesh=mesh)]


def test_rewards_invariant_to_batch_composition_and_padding(pw_params, bt_params):
  alone_p, alone_y = ["owl cat ram"], [["owl cat", "owl cat ram", "ram owl", "cat"]]
  env = synthetic.build_environment()
  others_p = list(env.prompts["validation"][:6])
  others_y = [[p, env.sft["validation"][i], "dog", p.split()[0]] for i, p in enumerate(others_p)]
  big_p = others_p[:3] + alone_p + others_p[3:]
  big_y = others_y[:3] + alone_y + others_y[3:]
  for small, large in zip(_both(pw_params, bt_params, 3), _both(pw_params, bt_params, 8)):
    a = small.reward(alone_p, alone_y)[0]
    b = large.reward(big_p, big_y)[3]
    np.testing.assert_allclose(a, b, atol=1e-5)
    np.testing.assert_allclose(small.prefer(["owl cat"], ["owl"], ["cat"]),
                               large.prefer(big_p[:2] + ["owl cat"], ["a", "b", "owl"],
                                            ["c", "d", "cat"])[2:], atol=1e-5)
    assert np.all(np.isfinite(b))


def test_sharded_rewards_match_single_device(pw_params, bt_params):
  mesh = partitioning.create_mesh((-1, 1, 1))  # 8 simulated devices: batch rounded up to 8
  prompts, cands = ["owl cat", "ram dog"], [["owl", "cat owl", "owl cat"], ["ram", "dog", "x"]]
  for plain, shard in zip(_both(pw_params, bt_params, 4),
                          _both(pw_params, bt_params, 3, mesh=mesh)):
    assert shard.batch_size == 8
    np.testing.assert_allclose(shard.reward(prompts, cands), plain.reward(prompts, cands),
                               atol=1e-5)


def test_reward_rejects_bad_input(pw_params):
  scorer = _pw(pw_params, length=32, batch_size=2)
  with pytest.raises(ValueError, match="row 1 has 1"):
    scorer.reward(["a", "b"], [["x", "y"], ["z"]])
  with pytest.raises(ValueError, match="2 prompts but 1 rows"):
    scorer.reward(["a", "b"], [["x"]])
  with pytest.raises(ValueError, match=r"y1\[0\] must be a string"):
    scorer.prefer(["a"], [None], ["b"])


def test_pairwise_on_a_long_prompt_cuts_the_context_not_the_responses(pw_params):
  """A 300-token prompt: candidates that differ only at their end get different rewards.

  Cutting the whole ranking input from its end (the old behaviour) would cut inside the
  prompt, drop both responses, and give every candidate the same reward.
  """
  scorer = _pw(pw_params, length=128, batch_size=4)
  prompt = " ".join(word_texts(1, lo=80, hi=81, seed=5))  # ~300 bytes
  assert len(VOCAB.encode(prompt)) >= 300
  cands = [["owl cat ram", "owl cat rax", "owl cat rbm", "owl cat ram dog"]]
  r = scorer.reward([prompt], cands)
  assert r[0, 0] == 0.0 and np.all(np.isfinite(r))
  assert len(set(np.round(r[0, 1:], 6))) == 3, r
  assert scorer.stats["contexts_truncated"] == 3
  # The same inputs, built by hand: the prompt cut to what fits, tags and responses whole.
  tail = f" [RESPONSE A] {cands[0][1]} [RESPONSE B] {cands[0][0]}"
  keep = 128 - 1 - len("[CONTEXT]") - len(VOCAB.encode(tail))
  text = "[CONTEXT]" + VOCAB.decode(VOCAB.encode(" " + prompt)[:keep]) + tail
  want = jax.jit(rm.PairwiseRankingModel(CFG).preference_logits)(
      pw_params, jnp.asarray(_tok([text], 128)))
  np.testing.assert_allclose(r[0, 1], float(want[0]), atol=1e-5)
  # Responses that alone do not fit: NaN (never a cut response), counted.
  huge = ["owl " * 40, "cat " * 40]
  r2 = scorer.reward(["x"], [huge])
  assert np.isnan(r2[0, 1]) and scorer.stats["responses_too_long"] == 1


def test_bt_on_a_long_prompt_cuts_the_context_and_never_the_response(bt_params):
  scorer = _bt(bt_params)
  prompt = "owl cat " * 40
  r = scorer.reward([prompt], [["ram", "rad", "owl " * 10]])
  assert r[0, 0] != r[0, 1] and np.isnan(r[0, 2])
  assert scorer.stats == {"contexts_truncated": 3, "responses_too_long": 1}


def test_prompt_chunks_pad_the_last_batch_with_real_rows():
  chunks = list(inference._prompt_chunks(13, 8))  # pylint: disable=protected-access
  assert chunks == [(0, list(range(8)), 8), (8, [8, 9, 10, 11, 12, 12, 12, 12], 5)]


def test_default_baseline_is_the_first_valid_non_empty_response(pw_params):
  rows = [["", "owl", "cat", "owl"], ["ram", "dog", "eel", "ewe"]]
  valid = np.array([[True, False, True, True], [False, False, False, False]])
  assert inference.baseline_texts(rows, valid) == ["cat", "ram"]
  assert inference.baseline_texts(rows) == ["owl", "ram"]
  r = _pw(pw_params).reward(["owl cat", "ram"], rows, valid=valid)
  assert r[0, 2] == 0.0 and r[1, 0] == 0.0 and np.all(r[0, [0, 1, 3]] != 0.0)
