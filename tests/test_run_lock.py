"""One writer per directory (MODEL_DIR, RUN_DIR, SAMPLES_DIR), and a resume into a MODEL_DIR of
another model refused: one line, exit status 2, nothing in the directory changed."""

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys

import pytest

from helpers import one_line, snapshot, xla_flags
from rso_jax import checkpoints, fs, run_lock, sample, train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL_NET = ["network.T5Config.emb_dim=32", "network.T5Config.mlp_dim=64",
             "network.T5Config.num_heads=2", "network.T5Config.head_dim=16",
             "network.T5Config.num_encoder_layers=1", "network.T5Config.num_decoder_layers=1"]
# The child compiles faster on one device.
ONE_DEVICE = dict(PYTHONUNBUFFERED="1", JAX_PLATFORMS="cpu",
                  XLA_FLAGS=xla_flags(1))


def _sft_flags(model_dir, *extra, gin_file="stages/sft.gin"):
  return [f"--gin_file={gin_file}", f'--gin.MODEL_DIR="{model_dir}"', "--gin.BATCH_SIZE=8",
          "--gin.EVAL_PERIOD=0", "--gin.train_lib.train.log_period=1",
          *[f"--gin.{b}" for b in SMALL_NET], *extra]


def _dead_pid() -> int:
  p = subprocess.Popen(["true"])
  p.wait()
  return p.pid


@pytest.fixture
def holder():
  """holder(directory, name): another process holds `directory`'s lock until the test ends."""
  procs = []

  def start(directory, name):
    code = ("import sys; from rso_jax import run_lock\n"
            f"run_lock.acquire({str(directory)!r}, {name!r})\n"
            "print('held', flush=True); sys.stdin.read()\n"
            f"run_lock.release({str(directory)!r})\n")
    env = {k: v for k, v in os.environ.items() if k != run_lock.ENV_HOLDERS}
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=env, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    procs.append(proc)
    assert proc.stdout.readline().strip() == "held"
    return proc

  yield start
  for proc in procs:
    proc.stdin.close()
    proc.wait(timeout=30)


# ------------------------------------------------------------------------------ the lock
def test_lock_nests_passes_down_and_is_released_on_error(tmp_path, capsys):
  d = str(tmp_path / "run")
  lock = os.path.join(d, run_lock.LOCK_FILE)
  with pytest.raises(RuntimeError):
    with run_lock.hold(d, "RUN_DIR"):
      info = json.loads(open(lock).read())
      assert info["pid"] == os.getpid() and info["host"] == socket.gethostname()
      with run_lock.hold(d, "RUN_DIR"):  # the same process again: nested
        pass
      assert os.path.exists(lock)
      # A child process (a pipeline stage) works under its parent's lock.
      code = (f"from rso_jax import run_lock; print(run_lock.acquire({d!r}, 'MODEL_DIR'))")
      out = subprocess.run([sys.executable, "-c", code], cwd=REPO, text=True,
                           capture_output=True, check=True).stdout
      assert out.strip() == "False" and os.path.exists(lock)
      raise RuntimeError("a failure inside")
  assert os.listdir(d) == [] and run_lock.ENV_HOLDERS not in os.environ
  # A stale lock (its holder's pid is gone, on this host) is taken over, with one line.
  with open(lock, "w") as f:
    json.dump({"pid": _dead_pid(), "host": socket.gethostname(), "started": "then"}, f)
  with run_lock.hold(d, "SAMPLES_DIR"):
    assert json.loads(open(lock).read())["pid"] == os.getpid()
  assert "taking over the stale lock" in capsys.readouterr().out
  # One from another host cannot be checked from here: refused, naming it.
  with open(lock, "w") as f:
    json.dump({"pid": 1, "host": "elsewhere", "started": "then"}, f)
  with pytest.raises(run_lock.DirectoryLocked, match="pid 1 on elsewhere, started then"):
    run_lock.acquire(d)
  os.remove(lock)
  # A URL: no atomic create, and the refusal says so.
  url = f"ram://rso-test/{os.getpid()}/run"
  fs.makedirs(url)
  fs.atomic_write_text(url + "/" + run_lock.LOCK_FILE, json.dumps({"pid": 1, "host": "h"}))
  with pytest.raises(run_lock.DirectoryLocked, match="in use by another run.*the user's job"):
    run_lock.acquire(url)
  fs.remove(url + "/" + run_lock.LOCK_FILE)
  with run_lock.hold(url):
    assert fs.exists(url + "/" + run_lock.LOCK_FILE)
  assert fs.listdir(url) == []


def test_two_training_runs_on_one_model_dir(tmp_path, capsys):
  run = tmp_path / "sft"
  flags = _sft_flags(run)
  proc = subprocess.Popen([sys.executable, "-m", "rso_jax.train", *flags,
                           "--gin.TRAIN_STEPS=100000"], cwd=REPO, text=True,
                          env=dict(os.environ, **ONE_DEVICE), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT)
  try:
    for line in proc.stdout:
      if line.startswith("step "):  # training, so it holds MODEL_DIR's lock
        break
    lock = run / run_lock.LOCK_FILE
    held = lock.read_bytes()
    config = (run / "config.gin").read_bytes(), os.stat(run / "config.gin").st_mtime_ns
    # The second run is refused in one line naming the directory, the lock and the holder.
    assert train.main(flags + ["--gin.TRAIN_STEPS=2"]) == 2
    one_line(capsys.readouterr().err, "rso_jax.train: error: MODEL_DIR", str(run),
              str(lock), f"pid {proc.pid} on {socket.gethostname()}", "started")
    assert lock.read_bytes() == held
    assert ((run / "config.gin").read_bytes(), os.stat(run / "config.gin").st_mtime_ns) == config
    # The first one dies without a word (SIGKILL): its lock stays behind, stale.
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
  finally:
    proc.kill()
    proc.wait()
  assert lock.exists()
  # The next run takes the stale lock over (a line says so), trains and releases it.
  assert train.main(flags + ["--gin.TRAIN_STEPS=2"]) == 0
  out = capsys.readouterr().out
  assert f"MODEL_DIR {run}: taking over the stale lock {lock} of pid {proc.pid}" in out
  assert not lock.exists() and (run / "COMPLETED").exists()


def test_a_second_main_job_and_sampler_are_refused(tmp_path, capsys, holder):
  sft, bt = tmp_path / "sft", tmp_path / "bt"  # refused before they are read
  run_dir = tmp_path / "run"
  run_dir.mkdir()
  (run_dir / "notes.txt").write_text("mine")
  proc = holder(run_dir, "RUN_DIR")
  before = snapshot(run_dir)
  rc = train.main(["--gin_file=rso_hinge.gin", f'--gin.RUN_DIR="{run_dir}"',
                   *[f"--gin.{b}" for b in SMALL_NET]])
  assert rc == 2
  one_line(capsys.readouterr().err, "rso_jax.train: error: RUN_DIR", str(run_dir),
            f"pid {proc.pid}")
  assert snapshot(run_dir) == before
  samples = tmp_path / "samples"
  proc = holder(samples, "SAMPLES_DIR")
  before = snapshot(samples)
  rc = sample.main(["--gin_file=stages/sample.gin", f'--gin.SAMPLES_DIR="{samples}"',
                    f'--gin.SFT_CHECKPOINT="{sft}"', f'--gin.REWARD_CHECKPOINT="{bt}"',
                    "--gin.PROMPTS_TASK='synthetic_prompts'", "--gin.NUM_PROMPTS=4"])
  assert rc == 2
  one_line(capsys.readouterr().err, "rso_jax.sample: error: SAMPLES_DIR", str(samples),
            f"pid {proc.pid}")
  assert snapshot(samples) == before


# ------------------------------------------------------------------------------ resume
def test_a_resume_into_another_network_or_kind_changes_nothing(tmp_path, capsys):
  run = tmp_path / "sft"
  assert train.main(_sft_flags(run, "--gin.TRAIN_STEPS=1")) == 0
  capsys.readouterr()
  before = snapshot(run)
  assert train.main(_sft_flags(run, "--gin.TRAIN_STEPS=2",
                               "--gin.network.T5Config.emb_dim=64")) == 2
  one_line(capsys.readouterr().err, "rso_jax.train: error: MODEL_DIR", str(run),
            "emb_dim: stored 32, configured 64", "nothing was written")
  assert snapshot(run) == before  # config.gin, the manifest, the checkpoint: byte-identical
  # Another kind (a reward model into an SFT run's directory).
  rc = train.main(_sft_flags(run, "--gin.TRAIN_STEPS=2", gin_file="stages/reward_bt.gin"))
  err = capsys.readouterr().err
  assert rc == 2, err
  one_line(err, "kind: stored seq2seq, configured bt_rm")
  assert snapshot(run) == before
  # The dtype and remat are how the run computes, not what it holds: a resume may change them.
  stored = checkpoints.read_manifest(str(run))
  train._check_resume(str(run), dataclasses.replace(  # pylint: disable=protected-access
      stored, network=dataclasses.replace(stored.network, dtype="bfloat16", remat=True)))
