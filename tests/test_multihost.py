"""Two processes on localhost (JAX's multi-controller runtime, CPU collectives over gloo, 4
simulated devices each) run the stages' own CLIs and give what one process with 8 devices gives:
the same losses and params, the same sampled pairs; SIGTERM to one process stops both at the
same step, and the rerun resumes bit for bit."""

import glob
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from helpers import CFG, save, xla_flags
from rso_jax import checkpoints, models, reward_models

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DISTRIBUTED_ENV = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID",
                   "RSO_JAX_DISTRIBUTED")
# SFT of the tiny network on a (2, 2, 2) mesh: batch over data x fsdp, params over fsdp and
# tensor, so every kind of collective crosses the two processes. A constant learning rate
# makes a run's first steps independent of TRAIN_STEPS (the preemption test stops early).
TRAIN = ["rso_jax.train", "--gin_file=gin/stages/sft.gin", "--gin.BATCH_SIZE=16", "--gin.EVAL_PERIOD=0",
         "--gin.MESH_SHAPE=(2, 2, 2)", "--gin.train_lib.train.log_period=1",
         "--gin.train_lib.train.warmup_steps=0", "--gin.train_lib.train.lr_decay='constant'",
         "--gin.train_lib.train.checkpoint_period=1000",
         "--gin.network.T5Config.num_encoder_layers=1", "--gin.network.T5Config.num_decoder_layers=1"]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _start(args, nproc, logdir):
  """`python -m ARGS` as `nproc` processes sharing 8 CPU devices; returns the Popens."""
  os.makedirs(logdir, exist_ok=True)
  port = _free_port()
  procs = []
  for i in range(nproc):
    env = {k: v for k, v in os.environ.items() if k not in DISTRIBUTED_ENV}
    env.update(XLA_FLAGS=xla_flags(8 // nproc),
               JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
    if nproc > 1:
      env.update(JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES=str(nproc),
                 JAX_PROCESS_ID=str(i))
    with open(os.path.join(logdir, f"process{i}.log"), "w") as log:
      procs.append(subprocess.Popen([sys.executable, "-m", *args], cwd=ROOT, env=env,
                                    stdout=log, stderr=subprocess.STDOUT))
  return procs


def _wait(procs, logdir, timeout=420):
  rcs = [p.wait(timeout=timeout) for p in procs]
  logs = [open(os.path.join(logdir, f"process{i}.log")).read() for i in range(len(procs))]
  return rcs, logs


def _check(rcs, logs, expect_rc=0):
  assert rcs == [expect_rc] * len(rcs), "\n".join(
      f"--- process {i} (exit {rc}):\n{log[-3000:]}" for i, (rc, log) in enumerate(zip(rcs, logs)))
  return logs


def _run(args, nproc, logdir):
  return _check(*_wait(_start(args, nproc, logdir), logdir))


def _run_both(args_one, args_two, logdir):
  """The one-process and the two-process run, side by side (their start-ups overlap)."""
  one = _start(args_one, 1, logdir / "one")
  two = _start(args_two, 2, logdir / "two")
  return _check(*_wait(one, logdir / "one")), _check(*_wait(two, logdir / "two"))


def _losses(model_dir):
  rows = [json.loads(l) for l in open(os.path.join(model_dir, "metrics.jsonl"))]
  return {r["step"]: r["loss"] for r in rows if "loss" in r}


def _params(model_dir):
  import jax  # pylint: disable=g-import-not-at-top
  return jax.tree.map(np.asarray, checkpoints.load_params(model_dir))


def _leaves(tree):
  import jax  # pylint: disable=g-import-not-at-top
  return jax.tree_util.tree_leaves_with_path(tree)


STEPS = 16


@pytest.fixture(scope="module")
def sft_runs(tmp_path_factory):
  """STEPS SFT steps by one process with 8 devices and by two processes with 4 devices each."""
  d = tmp_path_factory.mktemp("sft")
  args = lambda name: TRAIN + [f"--gin.MODEL_DIR='{d / name}'", f"--gin.TRAIN_STEPS={STEPS}"]
  _, logs = _run_both(args("one"), args("two"), d / "logs")
  assert all("'data': 2, 'fsdp': 2, 'tensor': 2" in log for log in logs)
  return d / "one", d / "two"


def test_two_processes_train_like_one(sft_runs):
  one_process_sft, two_process_sft = sft_runs
  one, two = _losses(one_process_sft), _losses(two_process_sft)
  assert sorted(one) == sorted(two) == list(range(1, STEPS + 1))
  np.testing.assert_allclose([two[s] for s in one], [one[s] for s in one], rtol=0, atol=1e-5)
  assert one[STEPS] < one[1] - 0.1  # it trained
  p1, p2 = _params(one_process_sft), _params(two_process_sft)
  for (path, a), (_, b) in zip(_leaves(p1), _leaves(p2)):
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-5, err_msg=str(path))


def test_sigterm_to_one_process_stops_both_at_one_step_and_resumes_bit_exactly(
    sft_runs, tmp_path):
  two_process_sft = sft_runs[1]
  model_dir = tmp_path / "sft"
  args = TRAIN + [f"--gin.MODEL_DIR='{model_dir}'", f"--gin.TRAIN_STEPS={STEPS}"]
  procs = _start(args, 2, tmp_path / "logs")
  deadline = time.time() + 300
  while time.time() < deadline and max(_losses(model_dir) if os.path.exists(
      model_dir / "metrics.jsonl") else [0]) < 3:
    assert all(p.poll() is None for p in procs), "a process exited before step 3"
    time.sleep(0.1)
  procs[1].send_signal(signal.SIGTERM)  # process 0 is not signalled
  rcs, logs = _wait(procs, tmp_path / "logs")
  assert rcs == [143, 143], logs
  steps = [int(re.search(r"saving a checkpoint at step (\d+)", log).group(1)) for log in logs]
  assert steps[0] == steps[1] and 3 <= steps[0] < STEPS
  assert checkpoints.latest_step(str(model_dir)) == steps[0]
  # The same command again resumes there; the result is the run that was never stopped.
  logs = _run(args, 2, tmp_path / "logs_resumed")
  assert all(f"resumed from {model_dir}/checkpoints/{steps[0]}" in log for log in logs)
  assert _losses(model_dir) == _losses(two_process_sft)
  for (path, a), (_, b) in zip(_leaves(_params(two_process_sft)), _leaves(_params(model_dir))):
    np.testing.assert_array_equal(b, a, err_msg=str(path))


def _pairs(samples_dir):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  rows = []
  for f in sorted(glob.glob(os.path.join(samples_dir, "pairs-*.tfrecord"))):
    for raw in tf.data.TFRecordDataset(f).as_numpy_iterator():
      ex = tf.train.Example.FromString(raw).features.feature
      rows.append({k: (list(v.int64_list.value) or list(v.float_list.value)
                       or [x.decode() for x in v.bytes_list.value]) for k, v in ex.items()})
  return rows


@pytest.fixture(scope="module")
def reward(tmp_path_factory):
  return save(tmp_path_factory.mktemp("rm") / "rm", reward_models.BradleyTerryRewardModel(CFG),
              {"inputs": 32, "targets": 32})


def test_two_processes_sample_the_same_pairs(sft_runs, reward, tmp_path):
  args = ["rso_jax.sample", "--gin_file=gin/stages/sample.gin",
          f"--gin.SFT_CHECKPOINT='{sft_runs[0]}'", f"--gin.REWARD_CHECKPOINT='{reward}'",
          "--gin.PROMPTS_TASK='synthetic_prompts'", "--gin.NUM_PROMPTS=16",
          "--gin.sample.sample_configured.num_candidates=8",
          "--gin.sample.sample_configured.num_samples=4",
          "--gin.sample.sample_configured.prompts_per_shard=8",
          "--gin.sample.sample_configured.batch_prompts=8",
          "--gin.sample.sample_configured.max_decode_length=16",
          "--gin.sample.sample_configured.keep_unfinished=True"]
  _run_both(args + [f"--gin.SAMPLES_DIR='{tmp_path / 'one'}'"],
            args + [f"--gin.SAMPLES_DIR='{tmp_path / 'two'}'"], tmp_path / "logs")
  for d in ("one", "two"):  # two shards: in the two-process run, one written by each process
    assert sorted(os.listdir(tmp_path / d)) == [
        "COMPLETED", "manifest.json", "pairs-00000-of-00002.tfrecord",
        "pairs-00001-of-00002.tfrecord", "stats-00000.json", "stats-00001.json",
        "stats.json"]
  one, two = _pairs(tmp_path / "one"), _pairs(tmp_path / "two")
  assert len(one) >= 16
  exact = lambda rows: [{k: v for k, v in r.items() if not k.endswith(("logps", "reward"))}
                        for r in rows]
  assert exact(two) == exact(one)
  for a, b in zip(one, two):
    for k in a:
      if k.endswith(("logps", "reward")):
        np.testing.assert_allclose(b[k], a[k], rtol=0, atol=1e-5, err_msg=k)
  stats = [json.load(open(tmp_path / d / "stats.json")) for d in ("one", "two")]
  assert stats[0]["pairs"] == stats[1]["pairs"] == len(one)


def _numbers(d, prefix=""):
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_numbers(v, f"{prefix}{k}/"))
    elif isinstance(v, (int, float)) and k != "wall_seconds":
      out[prefix + k] = v
  return out


def test_two_processes_evaluate_like_one(sft_runs, reward, tmp_path):
  """The evaluation stage: win rates (proxy and golden), KL and the decoded examples."""
  args = ["rso_jax.evaluate", f"--policy={sft_runs[1]}", f"--sft={sft_runs[0]}",
          f"--reward={reward}", "--num_prompts=16", "--kl_samples_per_prompt=2",
          "--batch_size=8"]
  _run_both(args + [f"--output_dir={tmp_path / 'one'}"], args + [f"--output_dir={tmp_path / 'two'}"],
            tmp_path / "logs")
  one, two = (json.load(open(tmp_path / d / "eval_two.json")) for d in ("one", "two"))
  a, b = _numbers(one), _numbers(two)
  assert sorted(a) == sorted(b) and "kl/mean" in a and len(a) > 40
  for k in a:
    np.testing.assert_allclose(b[k], a[k], rtol=0, atol=1e-5, err_msg=k)
  assert one["examples"] == two["examples"]
