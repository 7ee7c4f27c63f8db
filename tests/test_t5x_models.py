"""rso_jax under upstream T5X (`rso_jax/t5x_models.py`, gin/t5x/): same loss, real `t5x.train`.

Skipped when T5X is not installed (`launch/install_t5x.sh`, or `../shared/t5x/install.sh`
offline; CI installs it when that folder is there).
"""

import dataclasses
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("t5x", reason="upstream T5X is not installed: run launch/install_t5x.sh "
                    "(or ../shared/t5x/install.sh offline)")

from helpers import CFG, init_params, save, xla_flags  # pylint: disable=g-import-not-at-top
from rso_jax import datasets
from rso_jax import errors
from rso_jax import checkpoints, evaluate, export, models, network, reward_models  # noqa: E402
from rso_jax import reports, sample, t5x_models, train  # noqa: E402
from rso_jax.tasks import synthetic  # noqa: E402

from t5x.examples.t5 import network as t5x_network  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = network.T5Config()  # gin/models/tiny.gin's sizes: what gin/t5x/*.gin train
LENGTHS = {"inputs": 32, "targets": 32}
TRL_METRICS = ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
               "logps/chosen", "logps/rejected")


def _pair_batch(seed=0, b=6, li=12, lt=9, vocab=CFG.vocab_size):
  """A PairwiseFeatureConverter batch with padding, one identical pair and cached references."""
  rng = np.random.RandomState(seed)
  enc = rng.randint(2, vocab, (b, li)).astype(np.int32)
  enc[1, 7:] = 0
  batch = {"encoder_input_tokens": enc}
  for r, lens in (("chosen", (9, 4, 6, 2, 9, 5)), ("rejected", (3, 9, 5, 7, 9, 8))):
    tgt = rng.randint(2, vocab, (b, lt)).astype(np.int32)
    for row, n in enumerate(lens):
      tgt[row, n - 1] = 1  # EOS
      tgt[row, n:] = 0
    batch[f"{r}_decoder_target_tokens"] = tgt
  batch["rejected_decoder_target_tokens"][4] = batch["chosen_decoder_target_tokens"][4]
  for r in ("chosen", "rejected"):
    tgt = batch[f"{r}_decoder_target_tokens"]
    batch[f"{r}_decoder_input_tokens"] = np.concatenate([np.zeros((b, 1), np.int32),
                                                         tgt[:, :-1]], 1)
    batch[f"{r}_loss_weights"] = (tgt > 0).astype(np.int32)
  batch["ref_chosen_logps"] = rng.uniform(-60, -20, b).astype(np.float32)
  batch["ref_rejected_logps"] = rng.uniform(-60, -20, b).astype(np.float32)
  return {k: jnp.asarray(v) for k, v in batch.items()}


def _metric_values(metrics):
  return {k: float(v.compute()) for k, v in metrics.items() if not k.startswith("timing/")}


@pytest.mark.parametrize("loss", ["hinge_norm", "sigmoid_norm", "slic_hinge", "ipo"])
def test_t5x_policy_loss_equals_rso_jax_policy_model(loss):
  """Same pair batch, same weights: the T5X model's loss, metrics and gradients are rso_jax's,
  on rso_jax's network and on T5X's own (`t5x.examples.t5.network`, joined attention kernels)."""
  kwargs = {"tau": 0.1} if loss == "ipo" else None
  ours = models.PolicyModel(CFG, loss=loss, gamma=0.1, loss_kwargs=kwargs)
  params = init_params(ours, LENGTHS, seed=3)
  batch = _pair_batch()
  want_loss, want = jax.jit(lambda p: ours.loss_fn(p, batch, None))(params)
  with_grads = loss == "hinge_norm"  # the paper's loss; the others share every line but Eq. 10
  if with_grads:
    want_grad = jax.jit(jax.grad(lambda p: ours.loss_fn(p, batch, None)[0]))(params)
  assert float(want_loss) > 0 and want["pairs/skipped_degenerate"] == 1.0

  def t5x_model(module):
    return t5x_models.PreferenceModel(module, None, None, None, loss=loss, gamma=0.1,
                                      loss_kwargs=kwargs)

  on_rso = t5x_model(t5x_models.Transformer(CFG))
  on_t5x = t5x_model(t5x_network.Transformer(t5x_models.t5x_network_config(CFG)))
  for model, p in ((on_rso, params), (on_t5x, checkpoints.join_attention_heads(params))):
    got_loss, got = jax.jit(lambda q, m=model: m.loss_fn(q, batch, None))(p)
    np.testing.assert_allclose(float(got_loss), float(want_loss), atol=1e-5, rtol=1e-5)
    values = _metric_values(got)
    for name, value in want.items():
      np.testing.assert_allclose(values[name], float(value), atol=1e-5, rtol=1e-5, err_msg=name)
    assert values["pairs/counted"] == 5.0
    if not with_grads:
      continue
    grad = jax.jit(jax.grad(lambda q, m=model: m.loss_fn(q, batch, None)[0]))(p)
    if model is on_t5x:
      grad = checkpoints.split_attention_heads(grad, CFG.num_heads)
    for (path, g), w in zip(jax.tree_util.tree_leaves_with_path(grad),
                            jax.tree.leaves(want_grad)):
      w = np.asarray(w)  # float32 sums in another order: 1e-5 of the leaf's scale
      np.testing.assert_allclose(np.asarray(g), w, atol=1e-5 * np.abs(w).max(), rtol=0,
                                 err_msg=jax.tree_util.keystr(path))


def test_t5x_policy_runs_without_dropout_unless_asked():
  """A dropout-0.1 network: T5X's trainer passes a dropout key, and the policy term ignores it
  by default (its cached log π_sft has no dropout); `policy_dropout=True` keeps it."""
  cfg = dataclasses.replace(CFG, dropout_rate=0.1)
  params = init_params(models.PolicyModel(cfg), LENGTHS, seed=3)
  batch = _pair_batch()
  key = jax.random.key(5)
  loss = {keep: float(jax.jit(lambda p, r, m=t5x_models.PreferenceModel(
      t5x_models.Transformer(cfg), None, None, None, policy_dropout=keep):
                               m.loss_fn(p, batch, r)[0])(params, key))
          for keep in (False, True)}
  without, _ = jax.jit(lambda p: models.PolicyModel(cfg).loss_fn(p, batch, None))(params)
  np.testing.assert_allclose(loss[False], float(without), rtol=1e-6)
  assert abs(loss[True] - float(without)) > 1e-4


def test_t5x_variables_carry_the_logical_axes():
  model = t5x_models.PreferenceModel(t5x_models.Transformer(TINY), None, None, None)
  shapes = {k: v for k, v in models.pair_input_shapes(2, LENGTHS).items()}
  variables = jax.eval_shape(lambda: model.get_initial_variables(jax.random.key(0), shapes))
  axes = variables["params_axes"]["encoder"]["layers_0"]["attention"]["query"]["kernel_axes"]
  assert axes.names == ("embed", "heads", "kv")
  kernel = variables["params"]["encoder"]["layers_0"]["attention"]["query"]["kernel"]
  assert kernel.shape == (TINY.emb_dim, TINY.num_heads, TINY.head_dim)


@pytest.mark.parametrize("joined", [False, True])
def test_t5x_checkpoint_round_trip(tmp_path, joined):
  """save_t5x writes T5X's layout (joined kernels for T5X's network); rso_jax reads it back
  bit-for-bit, from the run dir or the step dir, with the manifest beside it."""
  model = models.Seq2SeqModel(TINY)
  src = save(tmp_path / "src", model, LENGTHS, seed=1)
  m, params = checkpoints.load(src)
  step_dir = checkpoints.save_t5x(str(tmp_path / "t5x"), params, m, joined_heads=joined)
  assert os.path.basename(step_dir) == "checkpoint_0"
  for path in (str(tmp_path / "t5x"), step_dir):
    m2, back = checkpoints.load(path)
    assert m2.kind == "seq2seq" and m2.network == TINY and m2.source == "t5x"
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(back)):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  with pytest.raises(errors.CheckpointError, match="exists"):
    checkpoints.save_t5x(str(tmp_path / "t5x"), params, m)


def test_bt_reward_model_under_t5x_is_rso_jax_s():
  """Same loss and metrics as rso_jax's BradleyTerryRewardModel; T5X's variables carry axes."""
  import seqio  # pylint: disable=g-import-not-at-top
  vocab = seqio.ByteVocabulary()
  ours = reward_models.BradleyTerryRewardModel(CFG, vocabulary=vocab, center_weight=0.01)
  model = t5x_models.BradleyTerryRewardModel(CFG, vocab, None, center_weight=0.01)
  params = init_params(ours, LENGTHS, seed=5)
  batch = _pair_batch(seed=1)
  want_loss, want = jax.jit(lambda p: ours.loss_fn(p, batch, None))(params)
  got_loss, got = jax.jit(lambda p: model.loss_fn(p, batch, None))(params)
  np.testing.assert_allclose(float(got_loss), float(want_loss), atol=1e-6)
  values = _metric_values(got)
  for name, value in want.items():
    np.testing.assert_allclose(values[name], float(value), atol=1e-6, err_msg=name)
  np.testing.assert_allclose(np.asarray(model.score_batch(params, batch)),
                             np.asarray(ours.score_batch(params, batch)), atol=1e-6)
  shapes = models.pair_input_shapes(2, LENGTHS)
  variables = jax.eval_shape(lambda: model.get_initial_variables(jax.random.key(0), shapes))
  assert set(variables) == {"params", "params_axes"}
  m = datasets.model_manifest(model, "synthetic_dhf", LENGTHS)  # what summarize_config writes
  assert m.kind == "bt_rm" and m.model_settings == ours.manifest_settings()


def test_predict_batch_on_rso_network_is_rso_jax_decoding():
  """T5X's predict interface on rso_jax's network: rso_jax's greedy decode, T5X's shapes."""
  from rso_jax import decoding  # pylint: disable=g-import-not-at-top
  model = t5x_models.EncoderDecoderModel(t5x_models.Transformer(CFG), None, None, None)
  params = init_params(models.Seq2SeqModel(CFG), LENGTHS, seed=2)
  batch = _pair_batch(seed=2)
  seq2seq = {"encoder_input_tokens": batch["encoder_input_tokens"],
             "decoder_input_tokens": batch["chosen_decoder_input_tokens"]}
  tokens, aux = model.predict_batch_with_aux(params, seq2seq)
  want = decoding.greedy(network.Transformer(CFG), params, seq2seq["encoder_input_tokens"],
                         max_decode_length=9)
  np.testing.assert_array_equal(np.asarray(tokens), np.asarray(want.tokens[:, 0]))
  np.testing.assert_allclose(np.asarray(aux["scores"]), np.asarray(want.model_logps[:, 0]),
                             atol=1e-6)


def test_packed_batches_are_refused():
  net = t5x_models.Transformer(TINY)
  x = jnp.ones((2, 4), jnp.int32)
  with pytest.raises(ValueError, match="pack = False"):
    net.init(jax.random.key(0), x, x, x, encoder_segment_ids=x, enable_dropout=False)


# ------------------------------------------------------------------------- upstream t5x.train


class _Scorer:
  """The sampling stage's reward: the embedded task's golden reward (no RM training here)."""
  kind = "bt_rm"
  stats = {"contexts_truncated": 0, "responses_too_long": 0}

  def reward(self, prompts, responses, baselines=None, valid=None):
    return synthetic.golden_rewards(prompts, responses).astype(np.float32)


@pytest.fixture(scope="module")
def sft_and_pairs(tmp_path_factory):
  """π_sft (a few SFT steps of rso_jax's model) and the sampling stage's pairs from it."""
  root = tmp_path_factory.mktemp("t5x")
  model = models.Seq2SeqModel(TINY)
  sft = save(root / "sft", model, LENGTHS, seed=0)
  pairs = root / "pairs"
  summary = sample.run(policy_checkpoint=sft, reward_checkpoint=None, output_dir=str(pairs),
                       scorer=_Scorer(), prompts_task="synthetic_prompts", split="train",
                       max_prompts=64, prompts_per_shard=32, batch_prompts=32, num_candidates=8,
                       num_samples=4, max_decode_length=12, keep_unfinished=True,
                       mesh_shape=(-1, 1, 1), progress=False)
  assert summary["pairs"] >= 64
  return root, sft, str(pairs)


def _t5x_train(gin_files, model_dir, steps, stats_period, extra=()):
  """`python -m t5x.train` from the repository root (gin/t5x/ includes resolve there)."""
  cmd = [sys.executable, "-m", "t5x.train", *(f"--gin_file={f}" for f in gin_files),
         f"--gin.MODEL_DIR='{model_dir}'", f"--gin.TRAIN_STEPS={steps}",
         f"--gin.STATS_PERIOD={stats_period}", f"--gin.CHECKPOINT_PERIOD={steps}",
         "--gin.BATCH_SIZE=16", *extra]
  env = dict(os.environ, PYTHONPATH=ROOT,
             # T5X puts a CPU's devices on its 'model' axis: 2 divide the tiny network's heads.
             XLA_FLAGS=xla_flags(2))
  proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-4000:]


def _events(model_dir):
  """{tag: [values in step order]} of T5X's train summaries."""
  return {k: [v for _, v in steps] for k, steps in reports.training_scalars(model_dir).items()}


@pytest.mark.parametrize("t5x_network_gin", [False, True], ids=["rso_jax_network", "t5x_network"])
def test_t5x_train_trains_the_rso_policy(sft_and_pairs, t5x_network_gin):
  """`python -m t5x.train --gin_file=gin/t5x/rso_hinge.gin` from π_sft on the sampling stage's
  pairs: step 1 is π_sft exactly (hinge-norm loss 1, implicit rewards 0: T5X restored the
  converted π_sft), the loss falls, the metrics carry TRL's names, and rso_jax's evaluation
  reads T5X's checkpoint."""
  root, sft, pairs = sft_and_pairs
  name = "t5x_net" if t5x_network_gin else "rso_net"
  m, params = checkpoints.load(sft)
  init = checkpoints.save_t5x(str(root / f"{name}_init"), params, m,
                              joined_heads=t5x_network_gin)
  model_dir = str(root / name)
  gin_files = ["gin/t5x/rso_hinge.gin"]
  if t5x_network_gin:
    gin_files.append("gin/t5x/networks/t5x.gin")
  _t5x_train(gin_files, model_dir, steps=16, stats_period=1, extra=[
      f"--gin.PAIRS_DIR='{pairs}'", f"--gin.INITIAL_CHECKPOINT_PATH='{init}'",
      "--gin.LEARNING_RATE=1e-3"])

  events = _events(model_dir)
  for tag in TRL_METRICS + ("loss", "pairs/counted", "pairs/skipped_degenerate"):
    assert tag in events, sorted(events)
  loss = events["loss"]
  assert len(loss) == 16
  np.testing.assert_allclose(loss[0], 1.0, atol=1e-4)  # hinge-norm at π = π_sft: max(0, 1 − 0)
  np.testing.assert_allclose(events["rewards/margins"][0], 0.0, atol=1e-4)
  assert np.mean(loss[-4:]) < loss[0] - 0.05, loss
  assert events["rewards/accuracies"][-1] > 0.5
  assert events["pairs/counted"][0] == 16.0

  manifest_ = checkpoints.read_manifest(model_dir)
  assert manifest_.kind == "policy" and manifest_.network == TINY
  assert manifest_.task == "rso_pairs" and dict(manifest_.feature_lengths) == LENGTHS
  assert checkpoints.resolve_params_path(model_dir).endswith("checkpoint_16")
  trained = checkpoints.load_params(model_dir)
  moved = [float(np.abs(np.asarray(a) - np.asarray(b)).max())
           for a, b in zip(jax.tree.leaves(trained), jax.tree.leaves(params))]
  assert max(moved) > 0  # T5X's trained params, in rso_jax's layout

  hf_dir = export.export(model_dir, str(root / f"{name}_hf"))  # HF T5 from T5X's checkpoint
  assert os.path.exists(os.path.join(hf_dir, "config.json"))

  report = evaluate.evaluate_policy(model_dir, sft, prompts_task="synthetic_prompts",
                                    num_prompts=8, decoding=("greedy",),
                                    kl_samples_per_prompt=2, batch_size=8, num_examples=0)
  assert report["num_prompts"] == 8 and report["input_length"] == 32
  assert 0.0 <= report["results"]["greedy"]["vs_sft/golden"] <= 1.0
  assert np.isfinite(report["kl/mean"]) and report["kl/num_samples"] == 16


@pytest.mark.parametrize("gin_files,kind", [
    (["gin/t5x/sft.gin", "gin/t5x/networks/t5x.gin"], "seq2seq"),
    (["gin/t5x/reward_bt.gin"], "bt_rm")], ids=["sft_on_t5x_network", "reward_bt"])
def test_t5x_train_runs_the_sft_and_reward_run_files(tmp_path, gin_files, kind):
  """SFT (on T5X's own network) and the BT reward model train under T5X from scratch, and
  rso_jax's inference layer opens their runs as what they are."""
  from rso_jax import inference  # pylint: disable=g-import-not-at-top
  model_dir = str(tmp_path / "run")
  _t5x_train(gin_files, model_dir, steps=12, stats_period=4)
  loss = _events(model_dir)["loss"]
  assert len(loss) == 3 and np.all(np.isfinite(loss))
  m = checkpoints.read_manifest(model_dir)
  assert m.kind == kind and m.network == TINY and m.source == "t5x"
  loaded = inference.load(model_dir)
  prompts = ["list: apple, tree, river", "list: cat, sun"]
  if kind == "seq2seq":
    assert loss[-1] < loss[0] - 0.5, loss  # learning rate 3e-3 from scratch
    gen = loaded.greedy(prompts)
    assert len(gen.texts) == 2 and np.all(np.isfinite(gen.model_logps))
  else:
    rewards = loaded.reward(prompts, [["apple tree river", "sun"], ["cat sun", "x"]])
    assert rewards.shape == (2, 2) and np.all(np.isfinite(rewards))
