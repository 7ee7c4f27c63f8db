"""Reward models: ranking format, losses vs NumPy, A/B symmetry, packing, self-description."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest
import seqio
import tensorflow as tf

from helpers import CFG, fit, manifest, one_device_mesh, train_spm, word_texts
from rso_jax import cli
from rso_jax import errors
from rso_jax import checkpoints, inference, models, reward_models as rm, train, trainer
from rso_jax.tasks import preprocessors, synthetic, text_formats

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
           if len(text_formats.ranking_input_text(p.prompt, p.chosen, p.rejected)) < length - 1]
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
    assert text_formats.ranking_input_text(x, a, b) == row["inputs"].decode()


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
    texts.append(text_formats.ranking_input_text(p.prompt, *((p.rejected, p.chosen) if f
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
      want = _tok([text_formats.ranking_input_text(p.prompt, a, b)], 128)[0]
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
  params = fit(model, batch, _init(model, {"inputs": 64, "targets": 8}), 300, 3e-3)
  scorer = inference.load(None, manifest=manifest("pairwise_rm", {"inputs": 64, "targets": 8}),
                          params=params, mesh=one_device_mesh(), batch_size=8)
  x, c, r = [p.prompt for p in pairs], [p.chosen for p in pairs], [p.rejected for p in pairs]
  p_cr, p_rc = scorer.prefer(x, c, r), scorer.prefer(x, r, c)
  assert np.all(p_cr > 0.9) and np.all(p_rc < 0.1), (p_cr, p_rc)
  assert np.max(np.abs(p_cr - (1.0 - p_rc))) < 0.1


# ------------------------------------------------------------------------------ BT model
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


@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_encoder_decoder_bt_vs_hf_t5(tmp_path, pooling):
  """The encoder-decoder BT reward against transformers' T5 on the same weights: HF encodes the
  prompt once per (x, y) row and reads shift_right(y) with its decoder; ours encodes each prompt
  once for its N = 3 responses. Pooled final decoder states @ the head."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  from rso_jax import convert  # pylint: disable=g-import-not-at-top
  cfg = transformers.T5Config(vocab_size=128, d_model=64, d_kv=16, num_heads=4, d_ff=128,
                              num_layers=2, num_decoder_layers=2, dropout_rate=0.0,
                              feed_forward_proj="gated-gelu", tie_word_embeddings=False)
  torch.manual_seed(3)
  hf = transformers.T5ForConditionalGeneration(cfg).eval()
  hf.save_pretrained(str(tmp_path), safe_serialization=True)
  config, params = convert.from_hf(str(tmp_path))
  head = np.random.RandomState(0).normal(0, 0.125, (64, 1)).astype(np.float32)
  rm_params = {"token_embedder": params["token_embedder"], "encoder": params["encoder"],
               "decoder": {k: v for k, v in params["decoder"].items() if k != "logits_dense"},
               "reward_head": {"kernel": head}}
  rng = np.random.RandomState(1)
  prompts = rng.randint(2, 128, (2, 10))
  prompts[0, 6:], prompts[1, 9:] = 0, 0
  responses = rng.randint(2, 128, (6, 7))  # [B * N, Lt], N = 3 per prompt
  for row, n in enumerate((7, 4, 1, 5, 2, 6)):
    responses[row, n - 1], responses[row, n:] = 1, 0  # EOS, then padding
  net = rm.BTRewardNetwork(config, pooling, "encoder_decoder")
  ours = np.asarray(rm.bt_rewards_jit(net, rm_params, prompts, responses, separator=(),
                                      eos_id=1))
  t = torch.tensor
  x = np.repeat(prompts, 3, axis=0)  # HF: the prompt once per row
  dec = np.concatenate([np.zeros((6, 1), np.int64), responses[:, :-1]], 1)
  with torch.no_grad():
    h = hf(input_ids=t(x), attention_mask=t(x > 0), decoder_input_ids=t(dec),
           output_hidden_states=True).decoder_hidden_states[-1].numpy()
  mask = (responses > 0).astype(np.float32)
  if pooling == "last":
    pooled = h[np.arange(6), mask.sum(1).astype(int) - 1]
  else:
    pooled = (h * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
  want = (pooled @ head)[:, 0]
  assert np.std(want) > 1e-2  # non-vacuous: the rows differ
  np.testing.assert_allclose(ours, want, atol=1e-4, rtol=0)


def test_encoder_decoder_bt_pair_rewards_are_its_rewards():
  """Chosen and rejected as 2 decoder rows of one encoder pass = each scored on its own."""
  model = rm.BradleyTerryRewardModel(CFG, pooling="last", architecture="encoder_decoder")
  params = _init(model, BT_LENGTHS)
  assert "decoder" in params and "logits_dense" not in params["decoder"]
  x, c, r = ["owl cat", "ram", "eel dog"], ["owl cat", "ram ewe", "eel"], ["cat", "ewe", "dog"]
  batch = {"encoder_input_tokens": _tok(x, 32), "chosen_decoder_target_tokens": _tok(c, 32),
           "rejected_decoder_target_tokens": _tok(r, 32)}
  rw, rl = jax.jit(model.pair_rewards)(params, batch)
  alone = jax.jit(model.rewards)
  np.testing.assert_allclose(rw, alone(params, _tok(x, 32), _tok(c, 32)), atol=1e-5)
  np.testing.assert_allclose(rl, alone(params, _tok(x, 32), _tok(r, 32)), atol=1e-5)
  assert np.all(np.abs(np.asarray(rw) - np.asarray(rl)) > 0)


def test_encoder_decoder_bt_bad_settings():
  with pytest.raises(ValueError, match="architecture='decoder'"):
    rm.BradleyTerryRewardModel(CFG, architecture="decoder")
  with pytest.raises(ValueError, match="pooling='first' with architecture='encoder_decoder'"):
    rm.BradleyTerryRewardModel(CFG, pooling="first", architecture="encoder_decoder")


def test_encoder_decoder_bt_starts_from_a_policy_checkpoint(tmp_path):
  """INITIAL_CHECKPOINT_PATH = a seq2seq checkpoint: every parameter but the head is read."""
  from helpers import save  # pylint: disable=g-import-not-at-top
  sft = save(tmp_path / "sft", models.Seq2SeqModel(CFG), BT_LENGTHS, seed=5)
  lines = []
  train.train(model=rm.BradleyTerryRewardModel(CFG, pooling="last",
                                               architecture="encoder_decoder"),
              model_dir=str(tmp_path / "rm"), train_steps=1, batch_size=8,
              mixture_or_task_name="synthetic_dhf", task_feature_lengths=BT_LENGTHS,
              optimizer="adamw", learning_rate=1e-9, warmup_steps=0, async_checkpoint=False,
              mesh_shape=(-1, 1, 1),
              initial_checkpoint_path=sft, print_fn=lines.append)
  line = next(l for l in lines if l.startswith("initialized"))
  assert "fresh: reward_head;" in line, line
  got = checkpoints.load_params(str(tmp_path / "rm"))
  want = checkpoints.load_params(sft)
  for part in ("encoder", "decoder"):
    np.testing.assert_allclose(got[part]["layers_0"]["mlp"]["wo"]["kernel"],
                               want[part]["layers_0"]["mlp"]["wo"]["kernel"], atol=1e-6)


# ------------------------------------------------------------------------------ trainer + manifest
@pytest.mark.parametrize("make,task,lengths,kind,settings", [
    (lambda: rm.BradleyTerryRewardModel(CFG, pooling="last"), "synthetic_dhf", BT_LENGTHS,
     "bt_rm", {"pooling": "last", "separator": text_formats.BT_SEPARATOR, "architecture": "encoder"}),
    (lambda: rm.BradleyTerryRewardModel(CFG, pooling="mean", architecture="encoder_decoder"),
     "synthetic_dhf", BT_LENGTHS, "bt_rm",
     {"pooling": "mean", "separator": text_formats.BT_SEPARATOR, "architecture": "encoder_decoder"}),
    (lambda: rm.PairwiseRankingModel(CFG, both_orders=True), "synthetic_rm_pairwise",
     {"inputs": 128, "targets": 8}, "pairwise_rm", {"response_label": "RESPONSE"})])
def test_trained_reward_model_describes_itself(tmp_path, make, task, lengths, kind, settings):
  out = train.train(
      model=make(), model_dir=str(tmp_path / "rm"), train_steps=2, batch_size=8,
      mixture_or_task_name=task, task_feature_lengths=lengths, optimizer="adamw",
      learning_rate=1e-3, log_period=1, async_checkpoint=False, mesh_shape=(-1, 1, 1),
      print_fn=lambda s: None)
  assert "loss" in out
  for path in (tmp_path / "rm", tmp_path / "rm" / "checkpoints" / "2"):
    m = checkpoints.read_manifest(str(path))
    assert (m.kind, m.network, m.task, dict(m.model_settings)) == (kind, CFG, task, settings)
    assert m.feature_lengths == lengths and m.vocabulary == {"type": "bytes"}
  loaded = inference.load(str(tmp_path / "rm"), mesh=one_device_mesh(), batch_size=4)
  assert loaded.kind == kind and loaded.feature_lengths == lengths
  r = loaded.reward(["owl cat"], [["owl", "cat owl", "owl cat"]])
  assert r.shape == (1, 3) and np.all(np.isfinite(r))


def test_model_vocabulary_must_be_the_task_vocabulary(tmp_path):
  spm_path = train_spm(tmp_path, word_texts(200), vocab_size=40)
  model = rm.BradleyTerryRewardModel(CFG, vocabulary=seqio.SentencePieceVocabulary(spm_path))
  with pytest.raises(errors.ConfigError, match="uses {'type': 'bytes'}"):
    train.train(model=model, model_dir=str(tmp_path / "x"), train_steps=1, batch_size=8,
                mixture_or_task_name="synthetic_dhf", task_feature_lengths=BT_LENGTHS,
                async_checkpoint=False, print_fn=lambda s: None)


@pytest.mark.parametrize("gin_file,task,lengths", [
    ("stages/reward.gin", "synthetic_dhf_ranking", {"inputs": 32 + 2 * 32 + 40, "targets": 2}),
    ("stages/reward_bt.gin", "synthetic_dhf", {"inputs": 32, "targets": 33})])  # responses + EOS
def test_gin_configs(gin_file, task, lengths):
  import gin  # pylint: disable=g-import-not-at-top
  cli.configure_gin([gin_file], ["MODEL_DIR = '/tmp/unused'"], [])
  try:
    args = gin.get_bindings(train.train)  # what train() receives, references evaluated
    assert args["mixture_or_task_name"] == task
    assert dict(args["task_feature_lengths"]) == lengths
    assert args["train_steps"] > 0
  finally:
    with gin.unlock_config():
      gin.clear_config()
