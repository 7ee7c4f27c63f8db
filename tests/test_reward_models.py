"""Reward models: ranking format, losses vs NumPy, A/B symmetry, Eq. 7 baseline, invariance."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import seqio
import tensorflow as tf

from rso_jax import checkpoints, models, network, partitioning, reward_models as rm, train, trainer
from rso_jax.tasks import preprocessors, synthetic

CFG = network.T5Config(vocab_size=384, emb_dim=32, num_heads=2, head_dim=16, mlp_dim=64,
                       num_encoder_layers=1, num_decoder_layers=1)
VOCAB = seqio.ByteVocabulary()
RANK_LEN = 96  # ranking inputs of the short examples below fit in 96 bytes
BT_LENGTHS = {"inputs": 32, "targets": 32}


def _init(model, lengths):
  v = model.get_initial_variables(jax.random.key(0), model.input_shapes(2, lengths))
  return trainer.unbox(v["params"])


def _tok(texts, length):
  out = np.zeros((len(texts), length), np.int32)
  for i, t in enumerate(texts):
    ids = VOCAB.encode(t) + [1]
    out[i, :len(ids)] = ids
  return out


def _short_pairs(n, split="validation", length=RANK_LEN):
  pairs = [p for p in synthetic.build_environment().dhf[split]
           if len(rm.ranking_input_text(p.prompt, p.chosen, p.rejected)) < length - 1]
  return pairs[:n]


@pytest.fixture(scope="module")
def pw_params():
  return _init(rm.PairwiseRankingModel(CFG), {"inputs": RANK_LEN, "targets": 8})


@pytest.fixture(scope="module")
def bt_params():
  return _init(rm.BradleyTerryRewardModel(CFG), BT_LENGTHS)


# ------------------------------------------------------------------------------ format, packing
def test_ranking_text_is_the_task_format():
  xs, cs, rs = ["owl cat", "ram", "a b"], ["owl", "ram dog", ""], ["cat owl", "ewe", "b"]
  ds = tf.data.Dataset.from_tensor_slices({"inputs": xs, "chosen": cs, "rejected": rs})
  rows = list(preprocessors.format_pairwise_ranking(ds, seed=3).as_numpy_iterator())
  for x, c, r, row in zip(xs, cs, rs, rows):
    a, b = (r, c) if row["flipped"] else (c, r)
    assert rm.ranking_input_text(x, a, b) == row["inputs"].decode()


def test_pack_prompt_response_matches_numpy():
  rng = np.random.default_rng(0)
  prompts, responses, sep = np.zeros((5, 7), np.int32), np.zeros((5, 6), np.int32), [90, 91]
  for i in range(5):
    n, m = rng.integers(0, 7), rng.integers(0, 6)
    prompts[i, :n] = rng.integers(3, 50, n)
    if n:
      prompts[i, n - 1] = 1 if i % 2 == 0 else prompts[i, n - 1]  # EOS on even rows only
    responses[i, :m] = rng.integers(3, 50, m)
  got = np.asarray(rm.pack_prompt_response(jnp.asarray(prompts), jnp.asarray(responses), sep))
  for i in range(5):
    p = [t for t in prompts[i] if t > 0]
    if p and p[-1] == 1:
      p = p[:-1]
    want = p + sep + [t for t in responses[i] if t > 0]
    np.testing.assert_array_equal(got[i], want + [0] * (7 + 2 + 6 - len(want)))


# ------------------------------------------------------------------------------ pairwise model
def _rank_batch(pairs, flip, length=RANK_LEN):
  texts, targets = [], []
  for p, f in zip(pairs, flip):
    texts.append(rm.ranking_input_text(p.prompt, *((p.rejected, p.chosen) if f
                                                   else (p.chosen, p.rejected))))
    targets.append("B" if f else "A")
  tgt = _tok(targets, 8)
  dec_in = np.concatenate([np.zeros((len(pairs), 1), np.int32), tgt[:, :-1]], 1)
  return {"encoder_input_tokens": _tok(texts, length), "decoder_input_tokens": dec_in,
          "decoder_target_tokens": tgt, "decoder_loss_weights": (tgt > 0).astype(np.int32)}


def test_pairwise_loss_and_metrics_vs_seq2seq_and_numpy(pw_params):
  model = rm.PairwiseRankingModel(CFG)
  batch = _rank_batch(_short_pairs(6), [0, 1, 1, 0, 1, 0])
  loss, metrics = jax.jit(model.loss_fn)(pw_params, batch, None)
  ref_loss, ref_metrics = jax.jit(models.Seq2SeqModel(CFG).loss_fn)(pw_params, batch, None)
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
  np.testing.assert_allclose(metrics["accuracy"], ref_metrics["accuracy"], rtol=1e-6)
  logits = np.asarray(jax.jit(model.logits)(pw_params, batch["encoder_input_tokens"],
                                            batch["decoder_input_tokens"],
                                            batch["decoder_target_tokens"]))
  la = logits[:, 0, ord("A") + 3] - logits[:, 0, ord("B") + 3]
  is_a = batch["decoder_target_tokens"][:, 0] == ord("A") + 3
  np.testing.assert_allclose(metrics["pairwise_accuracy"], np.mean(np.where(is_a, la > 0, la < 0)))
  np.testing.assert_allclose(metrics["mean_p_a"], np.mean(1 / (1 + np.exp(-la))), rtol=1e-5)
  # One decoder step gives the same logit as the teacher-forced first position.
  np.testing.assert_allclose(
      jax.jit(model.preference_logits)(pw_params, batch["encoder_input_tokens"]), la, atol=1e-5)


def test_both_orders_converter_emits_each_pair_twice():
  model = rm.PairwiseRankingModel(CFG, both_orders=True)
  ds = seqio.get_dataset("synthetic_rm_pairwise", {"inputs": 128, "targets": 8},
                         model.feature_converter, dataset_split="validation", shuffle=False)
  rows = list(ds.take(4).as_numpy_iterator())
  pairs = synthetic.build_environment().dhf["validation"][:2]
  for k, p in enumerate(pairs):
    for row, (a, b, letter) in zip(rows[2 * k:2 * k + 2], [(p.chosen, p.rejected, "A"),
                                                          (p.rejected, p.chosen, "B")]):
      want = _tok([rm.ranking_input_text(p.prompt, a, b)], 128)[0]
      np.testing.assert_array_equal(row["encoder_input_tokens"], want)
      np.testing.assert_array_equal(row["decoder_target_tokens"][:2], [ord(letter) + 3, 1])
      np.testing.assert_array_equal(row["decoder_input_tokens"][:2], [0, ord(letter) + 3])
  with pytest.raises(ValueError, match="prompt_pretokenized"):
    seqio.get_dataset("synthetic_sft", {"inputs": 32, "targets": 8}, model.feature_converter,
                      dataset_split="validation", shuffle=False)


def test_relpos_init_scale_scales_only_the_encoder_table():
  shapes = {"inputs": 32, "targets": 8}
  a = _init(rm.PairwiseRankingModel(CFG), shapes)
  b = _init(rm.PairwiseRankingModel(CFG, relpos_init_scale=5.0), shapes)
  flat_a = dict(jax.tree_util.tree_flatten_with_path(a)[0])
  for path, vb in jax.tree_util.tree_flatten_with_path(b)[0]:
    scale = 5.0 if "encoder" in str(path) and "relpos_bias" in str(path) else 1.0
    np.testing.assert_allclose(vb, flat_a[path] * scale, rtol=1e-6)
  with pytest.raises(ValueError, match="relpos_init_scale"):
    rm.PairwiseRankingModel(CFG, relpos_init_scale=0.0)


def test_flipping_ab_is_symmetric_after_training():
  """Trained on 8 pairs shown in both orders: ρ(x,y1,y2) ≈ 1 − ρ(x,y2,y1), confidently.

  Tolerance 0.1 on |ρ(x,y1,y2) − (1 − ρ(x,y2,y1))|, together with ρ > 0.9 for the chosen
  response in A and < 0.1 in B (an untrained model is symmetric only because ρ ≈ 0.5).
  """
  model = rm.PairwiseRankingModel(CFG, relpos_init_scale=5.0)
  pairs = _short_pairs(8, "train", length=64)
  batch = {k: jnp.asarray(v)
           for k, v in _rank_batch(pairs + pairs, [0] * 8 + [1] * 8, length=64).items()}
  params = _init(model, {"inputs": 64, "targets": 8})
  opt = optax.adam(3e-3)
  state = opt.init(params)

  @jax.jit
  def step(params, state):
    grads = jax.grad(lambda p: model.loss_fn(p, batch, None)[0])(params)
    updates, state = opt.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  for _ in range(300):
    params, state = step(params, state)
  scorer = rm.PairwiseScorer(CFG, params, feature_lengths={"inputs": 64}, batch_size=8)
  x, c, r = [p.prompt for p in pairs], [p.chosen for p in pairs], [p.rejected for p in pairs]
  p_cr, p_rc = scorer.prefer(x, c, r), scorer.prefer(x, r, c)
  assert np.all(p_cr > 0.9) and np.all(p_rc < 0.1), (p_cr, p_rc)
  assert np.max(np.abs(p_cr - (1.0 - p_rc))) < 0.1
  # The symmetrized scorer is antisymmetric by construction.
  sym = rm.PairwiseScorer(CFG, params, feature_lengths={"inputs": 64}, batch_size=8,
                          symmetrize=True)
  np.testing.assert_allclose(sym.prefer(x, c, r), 1.0 - sym.prefer(x, r, c), atol=1e-6)


def test_pointwise_baseline_is_exactly_zero_and_eq7(pw_params):
  scorer = rm.PairwiseScorer(CFG, pw_params, feature_lengths={"inputs": RANK_LEN}, batch_size=4)
  prompts = ["owl cat", "ram dog eel"]
  cands = [["owl", "owl cat", "owl", "cat owl"], ["ram dog", "ram", "dog eel ram", "ram dog"]]
  r = scorer.score(prompts, cands)
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
  # Explicit baselines: every candidate equal to its baseline is 0, the rest are compared.
  r2 = scorer.score(prompts, cands, baselines=["cat owl", "zzz"])
  assert r2[0, 3] == 0.0 and np.all(r2[1] != 0.0)
  np.testing.assert_allclose(scorer.prefer(prompts, ["owl cat", "ram"], ["owl", "ram dog"]),
                             1 / (1 + np.exp(-r[:, 1])), rtol=1e-5)


def _scorers(pw_params, bt_params, batch_size):
  return [rm.PairwiseScorer(CFG, pw_params, feature_lengths={"inputs": RANK_LEN},
                            batch_size=batch_size),
          rm.BTScorer(CFG, bt_params, feature_lengths=BT_LENGTHS, batch_size=batch_size)]


def test_scores_invariant_to_batch_composition_and_padding(pw_params, bt_params):
  alone_p, alone_y = ["owl cat ram"], [["owl cat", "owl cat ram", "ram owl", "cat"]]
  env = synthetic.build_environment()
  others_p = list(env.prompts["validation"][:6])
  others_y = [[p, env.sft["validation"][i], "dog", p.split()[0]] for i, p in enumerate(others_p)]
  big_p = others_p[:3] + alone_p + others_p[3:]
  big_y = others_y[:3] + alone_y + others_y[3:]
  for small, large in zip(_scorers(pw_params, bt_params, 3), _scorers(pw_params, bt_params, 8)):
    a = small.score(alone_p, alone_y)[0]
    b = large.score(big_p, big_y)[3]
    np.testing.assert_allclose(a, b, atol=1e-5)
    np.testing.assert_allclose(small.prefer(["owl cat"], ["owl"], ["cat"]),
                               large.prefer(big_p[:2] + ["owl cat"], ["a", "b", "owl"],
                                            ["c", "d", "cat"])[2:], atol=1e-5)
    assert np.all(np.isfinite(b))


def test_sharded_scorers_match_single_device(pw_params, bt_params):
  mesh = partitioning.create_mesh((-1, 1, 1))  # 8 simulated devices: batch rounded up to 8
  sharded = [rm.PairwiseScorer(CFG, pw_params, feature_lengths={"inputs": RANK_LEN},
                               batch_size=3, mesh=mesh),
             rm.BTScorer(CFG, bt_params, feature_lengths=BT_LENGTHS, batch_size=3, mesh=mesh)]
  prompts, cands = ["owl cat", "ram dog"], [["owl", "cat owl", "owl cat"], ["ram", "dog", "x"]]
  for plain, shard in zip(_scorers(pw_params, bt_params, 4), sharded):
    assert shard.batch_size == 8
    np.testing.assert_allclose(shard.score(prompts, cands), plain.score(prompts, cands),
                               atol=1e-5)


def test_scorer_rejects_bad_input(pw_params):
  scorer = rm.PairwiseScorer(CFG, pw_params, feature_lengths={"inputs": 32}, batch_size=2,
                             truncate="error")
  with pytest.raises(ValueError, match="row 1 has 1"):
    scorer.score(["a", "b"], [["x", "y"], ["z"]])
  with pytest.raises(ValueError, match="2 prompts but 1 rows"):
    scorer.score(["a", "b"], [["x"]])
  with pytest.raises(ValueError, match="feature length 32"):
    scorer.score(["owl cat ram"], [["x", "owl cat ram dog " * 3]])
  with pytest.raises(ValueError, match=r"y1\[0\] must be a string"):
    scorer.prefer(["a"], [None], ["b"])
  counting = rm.PairwiseScorer(CFG, pw_params, feature_lengths={"inputs": 32}, batch_size=2)
  counting.score(["owl cat ram"], [["x", "owl cat ram dog " * 3]])
  assert counting.truncation == {"sequences": 1, "truncated": 1}


# ------------------------------------------------------------------------------ BT model
def test_bt_loss_and_metrics_match_numpy():
  rng = np.random.default_rng(0)
  rw, rl = rng.normal(size=9).astype(np.float32), rng.normal(size=9).astype(np.float32)
  rl[2] = rw[2]
  w = np.ones(9, np.float32)
  w[4] = 0.0
  loss, m = rm.bt_loss_and_metrics(rw, rl, w, margin=0.3, center_weight=0.05)
  keep = w > 0
  bt = np.log1p(np.exp(-(rw - rl - 0.3)))
  np.testing.assert_allclose(loss, np.mean((bt + 0.05 * (rw + rl) ** 2)[keep]), rtol=1e-5)
  np.testing.assert_allclose(m["bt_loss"], np.mean(bt[keep]), rtol=1e-5)
  acc = np.where(rw > rl, 1.0, np.where(rw == rl, 0.5, 0.0))
  np.testing.assert_allclose(m["accuracy"], np.mean(acc[keep]), rtol=1e-6)
  np.testing.assert_allclose(m["margin"], np.mean((rw - rl)[keep]), rtol=1e-5)
  np.testing.assert_allclose(m["mean_reward"], np.mean(((rw + rl) / 2)[keep]), rtol=1e-5, atol=1e-7)
  assert float(m["pairs/skipped_identical"]) == 1.0


def test_bt_model_loss_uses_packed_rewards(bt_params):
  model = rm.BradleyTerryRewardModel(CFG, margin=0.1, center_weight=0.02)
  x, c, r = ["owl cat", "ram", "eel dog"], ["owl cat", "ram ewe", "eel"], ["cat", "ram ewe", "dog"]
  ct, rt = _tok(c, 32), _tok(r, 32)
  shift = lambda t: np.concatenate([np.zeros((3, 1), np.int32), t[:, :-1]], 1)
  batch = {"encoder_input_tokens": _tok(x, 32),
           "chosen_decoder_input_tokens": shift(ct), "chosen_decoder_target_tokens": ct,
           "chosen_loss_weights": (ct > 0).astype(np.int32),
           "rejected_decoder_input_tokens": shift(rt), "rejected_decoder_target_tokens": rt,
           "rejected_loss_weights": (rt > 0).astype(np.int32)}
  loss, m = jax.jit(model.loss_fn)(bt_params, batch, None)
  # Oracle: the network on hand-packed "x [RESPONSE] y" sequences.
  packed = lambda xs, ys: _tok([f"{a} [RESPONSE] {b}" for a, b in zip(xs, ys)], 32 + 12 + 32)
  apply = jax.jit(lambda t: model.module.apply({"params": bt_params}, t))
  rw, rl = np.asarray(apply(packed(x, c))), np.asarray(apply(packed(x, r)))
  keep = np.array([True, False, True])  # pair 1 is identical: no signal, weight 0
  bt = np.log1p(np.exp(-(rw - rl - 0.1))) + 0.02 * (rw + rl) ** 2
  np.testing.assert_allclose(loss, np.mean(bt[keep]), rtol=1e-4)
  np.testing.assert_allclose(m["rewards/chosen"], np.mean(rw[keep]), rtol=1e-4, atol=1e-6)
  scorer = rm.BTScorer(CFG, bt_params, feature_lengths=BT_LENGTHS, batch_size=4)
  np.testing.assert_allclose(scorer.score(x, [[y] for y in c])[:, 0], rw, atol=1e-5)
  np.testing.assert_allclose(scorer.prefer(x, c, r), 1 / (1 + np.exp(-(rw - rl))), atol=1e-6)
  rel = scorer.score(x, [[y, z] for y, z in zip(c, r)], baselines=r)
  np.testing.assert_allclose(rel[:, 0], np.where(keep, rw - rl, 0.0), atol=1e-5)
  assert np.all(rel[:, 1] == 0.0)


# ------------------------------------------------------------------------------ trainer + loader
def test_bt_trains_with_trainer_and_loads(tmp_path):
  out = train.train(
      model=rm.BradleyTerryRewardModel(CFG, pooling="last"), model_dir=str(tmp_path / "bt"),
      train_steps=2, batch_size=8, mixture_or_task_name="synthetic_dhf",
      task_feature_lengths=BT_LENGTHS, optimizer="adamw", learning_rate=1e-3, log_period=1,
      async_checkpoint=False, mesh_shape=(-1, 1, 1), print_fn=lambda s: None)
  assert {"accuracy", "margin", "mean_reward", "loss"} <= set(out)
  assert checkpoints.read_config(str(tmp_path / "bt")) == CFG
  with open(tmp_path / "bt" / "config.gin", "w") as f:  # what a gin run records
    f.write("reward_models.BradleyTerryRewardModel.pooling = 'last'\n")
  scorer = rm.load_scorer(str(tmp_path / "bt"), "bt", batch_size=4)
  assert scorer.model.pooling == "last"
  direct = rm.BTScorer(CFG, checkpoints.load_params(str(tmp_path / "bt")), pooling="last",
                       batch_size=4)
  args = (["owl cat"], [["owl", "cat owl"]])
  np.testing.assert_array_equal(scorer.score(*args), direct.score(*args))
  with pytest.raises(ValueError, match="kind='bt'"):
    rm.load_scorer(str(tmp_path / "bt"), "pairwise")


def test_pairwise_loader_round_trip(tmp_path, pw_params):
  checkpoints.save_params(str(tmp_path / "pw"), pw_params, CFG)
  loaded = rm.load_scorer(str(tmp_path / "pw"), "pairwise", batch_size=4,
                          feature_lengths={"inputs": RANK_LEN})
  direct = rm.PairwiseScorer(CFG, pw_params, feature_lengths={"inputs": RANK_LEN}, batch_size=4)
  args = (["owl cat"], [["owl", "cat owl", "owl cat"]])
  np.testing.assert_array_equal(loaded.score(*args), direct.score(*args))
  with pytest.raises(ValueError, match="kind='pairwise'"):
    rm.load_scorer(str(tmp_path / "pw"), "bt")
  with pytest.raises(ValueError, match="kind='ranker'"):
    rm.load_scorer(str(tmp_path / "pw"), "ranker")
  os.remove(tmp_path / "pw" / checkpoints.CONFIG_FILE)
  with pytest.raises(FileNotFoundError, match="t5_config.json"):
    rm.load_scorer(str(tmp_path / "pw"), "pairwise")


@pytest.mark.parametrize("gin_file,task,lengths", [
    ("reward.gin", "synthetic_rm_pairwise", {"inputs": 128, "targets": 8}),
    ("reward_bt.gin", "synthetic_dhf", {"inputs": 32, "targets": 32})])
def test_gin_configs(gin_file, task, lengths):
  import gin  # pylint: disable=g-import-not-at-top
  train.configure_gin([gin_file], ["MODEL_DIR = '/tmp/unused'"], [])
  try:
    assert gin.query_parameter("%MIXTURE_OR_TASK_NAME") == task
    assert gin.query_parameter("%TASK_FEATURE_LENGTHS") == lengths
    assert gin.query_parameter("%TRAIN_STEPS") > 0
  finally:
    with gin.unlock_config():
      gin.clear_config()
