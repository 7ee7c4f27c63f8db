"""Trainer and CLI: learning, bit-exact resume, mesh invariance, gin overrides, bad input."""

import json
import os
import shutil
import signal

import jax
import numpy as np
import pytest

import helpers
from rso_jax import datasets
from rso_jax import errors
from rso_jax import checkpoints, models, partitioning, train, trainer

TASK, LENGTHS, CFG = helpers.REVERSE_TASK, helpers.REVERSE_LENGTHS, helpers.REVERSE_CFG
_train = helpers.train_reverse
helpers.register_reverse_task()


def _history(model_dir):
  with open(os.path.join(model_dir, "metrics.jsonl")) as f:
    rows = [json.loads(l) for l in f]
  return {r["step"]: r["loss"] for r in rows if "loss" in r}


def test_sft_loss_falls(tmp_path):
  _train(tmp_path, 60, log_period=10)
  hist = _history(tmp_path)
  assert hist[60] < 0.75 * hist[10], hist
  params = checkpoints.load_params(str(tmp_path))
  assert checkpoints.read_config(str(tmp_path)) == CFG
  assert params["decoder"]["logits_dense"]["kernel"].shape == (64, 384)


def test_resume_is_bit_exact(tmp_path):
  full, part = tmp_path / "full", tmp_path / "part"
  _train(full, 8, checkpoint_period=4)

  def preempt(step, metrics):
    if step == 4:
      os.kill(os.getpid(), signal.SIGTERM)  # handled: checkpoint at this step, then stop

  with pytest.raises(errors.Preempted, match="checkpoint saved at step 4/8"):  # CLI: exit 143
    _train(part, 8, checkpoint_period=100, step_callback=preempt)
  assert checkpoints.latest_step(str(part)) == 4
  _train(part, 8, checkpoint_period=100)
  assert checkpoints.latest_step(str(part)) == 8
  a = checkpoints.load_params(str(full))
  b = checkpoints.load_params(str(part))
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  assert _history(full) == _history(part)  # same loss curve, no duplicated steps


def test_damaged_latest_step_is_skipped_on_resume(tmp_path):
  """A params file cut short in the latest step: one line names it and the step resumed from,
  the step is moved aside (not deleted), and the run ends where a clean resume from that
  step ends, bit for bit."""
  damaged, clean = str(tmp_path / "damaged"), str(tmp_path / "clean")
  _train(damaged, 4, checkpoint_period=2, async_checkpoint=True)
  shutil.copytree(damaged, clean)  # the same run, resumed from step 2 with nothing damaged
  shutil.rmtree(checkpoints.step_path(clean, 4))
  step4 = checkpoints.step_path(damaged, 4)
  files = [os.path.join(r, n) for r, _, ns in os.walk(os.path.join(step4, "params")) for n in ns]
  cut = max(files, key=os.path.getsize)
  size = os.path.getsize(cut)
  os.truncate(cut, size // 2)
  lines = []
  _train(damaged, 6, checkpoint_period=2, print_fn=lines.append)
  moved = os.path.join(damaged, "damaged_checkpoints", "4")
  rel = os.path.relpath(cut, step4)
  assert [l for l in lines if "is damaged" in l] == [
      f"checkpoint step {step4} is damaged ({rel} is {size // 2} bytes, rso_files.json says "
      f"{size}): moved to {moved}; resuming from step 2 ({checkpoints.step_path(damaged, 2)})"]
  assert os.path.getsize(os.path.join(moved, rel)) == size // 2  # kept as it was
  assert checkpoints.saved_steps(damaged) == [2, 4, 6]
  _train(clean, 6, checkpoint_period=2)
  a = checkpoints.load_params(damaged)
  b = checkpoints.load_params(clean)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  assert _history(damaged) == _history(clean)


def test_mesh_invariance():
  model = models.Seq2SeqModel(CFG)
  opt = trainer.make_optimizer("adamw", 1e-3)
  ds = datasets.get_dataset(datasets.DatasetConfig(TASK, LENGTHS, batch_size=16, seed=3),
                         model.feature_converter)
  batches = [next(ds) for _ in range(3)]
  losses = helpers.losses_on_meshes(model, batches, LENGTHS, 16, opt)
  np.testing.assert_allclose(losses[(2, 2, 2)], losses[(1, 1, 1)], rtol=1e-5, atol=1e-5)


def test_microbatching_matches_full_batch():
  model = models.Seq2SeqModel(CFG)
  opt = trainer.make_optimizer("sgd", 0.1, grad_clip=None)
  mesh = partitioning.create_mesh((2, 1, 1), devices=jax.devices()[:2])
  ds = datasets.get_dataset(datasets.DatasetConfig(TASK, LENGTHS, batch_size=16, seed=5),
                         model.feature_converter)
  batch = next(ds)
  # Equal token counts per microbatch make the mean of microbatch means the full mean.
  batch["decoder_loss_weights"] = np.ones_like(batch["decoder_loss_weights"])
  out = []
  for nm in (1, 2):
    tr = trainer.Trainer(model, opt, mesh, batch_size=16, feature_lengths=LENGTHS,
                         num_microbatches=nm)
    state, m = tr.train_step(tr.init_state(), batch)
    out.append((float(m["loss"]), jax.device_get(state.params)))
  assert abs(out[0][0] - out[1][0]) < 1e-5
  for x, y in zip(jax.tree.leaves(out[0][1]), jax.tree.leaves(out[1][1])):
    np.testing.assert_allclose(x, y, atol=2e-6)


def _gin_file(tmp_path, extra=""):
  f = tmp_path / "t.gin"
  f.write_text(f"""
from __gin__ import dynamic_registration
from rso_jax import models
from rso_jax import network
from rso_jax import train as train_lib
MODEL_DIR = %gin.REQUIRED
TRAIN_STEPS = 2
BATCH_SIZE = 8
train_lib.train:
  model = @models.Seq2SeqModel()
  model_dir = %MODEL_DIR
  train_steps = %TRAIN_STEPS
  batch_size = %BATCH_SIZE
  mixture_or_task_name = '{TASK}'
  task_feature_lengths = {{'inputs': 16, 'targets': 16}}
  learning_rate = 1e-3
  log_period = 1
  async_checkpoint = False
models.Seq2SeqModel.config = @network.T5Config()
network.T5Config:
  emb_dim = 32
  num_heads = 2
  head_dim = 16
  mlp_dim = 64
  num_encoder_layers = 1
  num_decoder_layers = 1
{extra}
""")
  return str(f)


def test_cli_overrides_change_the_run(tmp_path, capsys):
  gin_file = _gin_file(tmp_path)
  d = tmp_path / "run"
  rc = train.main([f"--gin_file={gin_file}", f'--gin.MODEL_DIR="{d}"', "--gin.TRAIN_STEPS=3",
                   "--gin.train_lib.train.learning_rate=0.25"])
  assert rc == 0, capsys.readouterr().err
  assert checkpoints.latest_step(str(d)) == 3
  with open(d / "metrics.jsonl") as f:
    rows = [json.loads(l) for l in f]
  assert rows[-1]["learning_rate"] == pytest.approx(0.25)
  assert "TRAIN_STEPS = 3" in (d / "config.gin").read_text()


@pytest.mark.parametrize("args,needle", [
    (["--gin.train_lib.train.no_such_flag=1"], "no_such_flag"),
    (["--gin.train_lib.train.mixture_or_task_name='nope_task'"], "nope_task"),
    (["--gin.BATCH_SIZE=12"], "BATCH_SIZE=12"),
    ([], "MODEL_DIR"),
])
def test_cli_bad_input_is_one_line(tmp_path, capsys, args, needle):
  gin_file = _gin_file(tmp_path)
  if needle != "MODEL_DIR":
    args = [f'--gin.MODEL_DIR="{tmp_path / "run"}"'] + args
  rc = train.main([f"--gin_file={gin_file}"] + args)
  err = capsys.readouterr().err.strip()
  assert rc == 2
  assert needle in err and len(err.splitlines()) == 1, err


def test_cli_unwritable_model_dir(tmp_path, capsys):
  blocker = tmp_path / "file"
  blocker.write_text("x")
  rc = train.main([f"--gin_file={_gin_file(tmp_path)}", f'--gin.MODEL_DIR="{blocker}/sub"'])
  err = capsys.readouterr().err.strip()
  assert rc == 2 and "not writable" in err and len(err.splitlines()) == 1, err
