"""Every CLI: a user error is one line on stderr and exit 2, nothing half-made is left behind;
a macro no binding reads is an error; a failed pipeline stage exits 3, a preempted run 143."""

import glob
import json
import os
import signal
import subprocess
import sys

import pytest

from helpers import CFG, save, xla_flags
from rso_jax import errors
from rso_jax import runs
from rso_jax import sample_batch
from rso_jax import (checkpoints, cli, convert, evaluate, export, infer, models, pipeline,
                     reward_models, sample, train)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL_NET = ["network.T5Config.emb_dim=32", "network.T5Config.mlp_dim=64",
             "network.T5Config.num_heads=2", "network.T5Config.head_dim=16",
             "network.T5Config.num_encoder_layers=1", "network.T5Config.num_decoder_layers=1"]


def _one_line(err, *needles, prefix="error: "):
  lines = [l for l in err.strip().splitlines() if not cli.is_noise(l)]
  assert len(lines) == 1, err
  assert f": {prefix}" in lines[0], lines[0]
  for n in needles:
    assert n in lines[0], lines[0]
  return lines[0]


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
  d = tmp_path_factory.mktemp("ckpts")
  return {"sft": save(d / "sft", models.Seq2SeqModel(CFG), {"inputs": 32, "targets": 8}),
          "bt": save(d / "bt", reward_models.BradleyTerryRewardModel(CFG),
                     {"inputs": 32, "targets": 32})}


# ------------------------------------------------------------------------------ gin macros
@pytest.mark.parametrize("flag,named,suggested", [("TRAIN_STEP=2", "TRAIN_STEP", "TRAIN_STEPS"),
                                                  ("BATCH_SIZ=4", "BATCH_SIZ", "BATCH_SIZE"),
                                                  ("NO_SUCH_THING=4", "NO_SUCH_THING", None)])
def test_a_macro_no_binding_reads_is_an_error(tmp_path, capsys, flag, named, suggested):
  run = tmp_path / "runs" / "sft"
  rc = train.main(["--gin_file=stages/sft.gin", f'--gin.MODEL_DIR="{run}"', f"--gin.{flag}"])
  assert rc == 2
  line = _one_line(capsys.readouterr().err, f"--gin.{named}:", f"macro {named}")
  assert (f"did you mean {suggested}?" in line) if suggested else ("did you mean" not in line)
  assert not os.path.exists(tmp_path / "runs")


def test_a_macro_set_in_a_gin_file_and_read_by_nobody(tmp_path, capsys):
  f = tmp_path / "extra.gin"
  f.write_text("EVAL_PERIODS = 5\n")
  rc = train.main(["--gin_file=stages/sft.gin", f"--gin_file={f}", f'--gin.MODEL_DIR="{tmp_path}/r"'])
  assert rc == 2
  _one_line(capsys.readouterr().err, "macro EVAL_PERIODS (set in a gin file)",
            "did you mean EVAL_PERIOD?")


REQUIRED = {"stages/sft.gin": ["MODEL_DIR='r'"], "stages/reward.gin": ["MODEL_DIR='r'"],
            "stages/reward_bt.gin": ["MODEL_DIR='r'"],
            "stages/sample.gin": ["SAMPLES_DIR='s'", "SFT_CHECKPOINT='a'", "REWARD_CHECKPOINT='b'",
                               "PROMPTS_TASK='synthetic_prompts'"],
            "stages/infer.gin": ["CHECKPOINT='c'", "OUTPUT='o.jsonl'"],
            "stages/policy.gin": ["MODEL_DIR='r'", "PAIRS_DIR='p'"],
            "variants/iterative.gin": ["ROUND1_DIR='r1'"]}
# Files that set %gin.REQUIRED macros for an including file to set: checked through one.
INCLUDED = {"stages/train.gin": ["stages/sft.gin"], "stages/pipeline.gin": ["rso_hinge.gin"]}
GIN_FILES = sorted(os.path.relpath(f, os.path.join(REPO, "gin"))
                   for f in glob.glob(os.path.join(REPO, "gin", "**", "*.gin"), recursive=True))


# gin/t5x/ is upstream T5X's (`python -m t5x.train`): tests/test_t5x_models.py runs it.
@pytest.mark.parametrize("gin_file", [f for f in GIN_FILES if not f.startswith(("experiments/",
                                                                              "t5x/"))
                                      or f == "experiments/embedded.gin"])
def test_every_shipped_gin_file_reads_every_macro_it_sets(gin_file):
  files = [gin_file]
  if gin_file.startswith("models/"):  # a size is included by a run file
    files = ["stages/sft.gin", gin_file]
  elif gin_file in INCLUDED:
    files = INCLUDED[gin_file]
  elif gin_file.startswith(("reward_models/", "recipes/", "meshes/")) or gin_file in (
      "variants/direct.gin", "variants/raft.gin", "variants/rest.gin", "variants/iterative.gin"):
    # read after an experiment
    files = ["rso_hinge.gin", gin_file]
  cli.configure_gin(files, REQUIRED.get(files[0], []) + (
      REQUIRED.get(gin_file, []) if gin_file != files[0] else []), [])
  assert not cli.unread_macros()


def test_every_stage_receives_the_runs_whole_configuration():
  """What a stage's process parses is the main job's gin files and overrides plus --stage."""
  cli.configure_gin(["rso_hinge.gin", "reward_models/pairwise.gin"],
                      ["RUN_DIR = '/tmp/x'", "BATCH_SIZE = 8"], ["/tmp/search"])
  assert cli.invocation_flags() == [
      "--gin_search_paths=/tmp/search", "--gin_file=rso_hinge.gin",
      "--gin_file=reward_models/pairwise.gin", "--gin_bindings=RUN_DIR = '/tmp/x'",
      "--gin_bindings=BATCH_SIZE = 8"]
  flags = cli.parse_flags(cli.invocation_flags() + ["--stage=reward"])
  assert flags.stage == "reward" and list(flags.files) == ["rso_hinge.gin",
                                                           "reward_models/pairwise.gin"]
  cli.configure_gin(flags.files, flags.bindings, flags.search)
  args = pipeline.stage_bindings(train.train, "reward")
  assert type(args["model"]).__name__ == "PairwiseRankingModel"
  assert args["batch_size"] == 8 and args["model_dir"] == "/tmp/x/reward_pairwise"
  # The ranking twin of the experiment's REWARD_PAIRS (embedded: π_sft's own pairs, rated).
  assert args["mixture_or_task_name"] == "synthetic_onpolicy_pairs_ranking"
  # The embedded experiment's 8/8 word tokens: prompt + two responses + the ranking tags.
  assert args["task_feature_lengths"] == {"inputs": 8 + 2 * 8 + 40, "targets": 2}
  sft = pipeline.stage_bindings(train.train, "sft")
  assert sft["model_dir"] == "/tmp/x/sft" and sft["mixture_or_task_name"] == "synthetic_sft"
  # The embedded experiment's SFT_BATCH_SIZE (= BATCH_SIZE unless an experiment sets it).
  assert sft["batch_size"] == 64 and sft["task_feature_lengths"] == {"inputs": 8, "targets": 8}


def test_an_unknown_stage_is_a_one_line_error(tmp_path, capsys):
  rc = train.main(["--gin_file=rso_hinge.gin", f'--gin.RUN_DIR="{tmp_path}"', "--stage=sfd"])
  assert rc == 2
  _one_line(capsys.readouterr().err, "--stage=sfd", "its stages: judge, reward, sft")
  assert os.listdir(tmp_path) == []


# ------------------------------------------------------------------------------ train
@pytest.mark.parametrize("flags,needle", [
    (["--gin.TRAIN_STEPS=0"], "TRAIN_STEPS=0 must be"),
    (["--gin.TRAIN_STEPS=0", "--gin.train_lib.train.lr_decay='constant'"], "TRAIN_STEPS=0 must"),
    (["--gin.LEARNING_RATE=-0.1"], "LEARNING_RATE=-0.1 must be"),
    (["--gin.LEARNING_RATE=0"], "LEARNING_RATE=0 must be"),
    (["--gin.LEARNING_RATE=1e999"], "LEARNING_RATE=inf must be"),
    (["--gin.train_lib.train.lr_decay='cosin'"], "unknown decay 'cosin'"),
    (["--gin.INITIAL_CHECKPOINT_PATH='/nonexistent/ckpt'"], "INITIAL_CHECKPOINT_PATH="),
])
def test_train_refuses_bad_values_before_creating_model_dir(tmp_path, capsys, flags, needle):
  run = tmp_path / "runs" / "sft"
  rc = train.main(["--gin_file=stages/sft.gin", f'--gin.MODEL_DIR="{run}"', *flags])
  assert rc == 2
  _one_line(capsys.readouterr().err, needle)
  assert not os.path.exists(tmp_path / "runs")


def test_traceback_on_request(tmp_path, monkeypatch):
  monkeypatch.setenv("RSO_JAX_TRACEBACK", "1")
  with pytest.raises(errors.ConfigError, match="TRAIN_STEPS=0"):
    train.main(["--gin_file=stages/sft.gin", f'--gin.MODEL_DIR="{tmp_path}/r"', "--gin.TRAIN_STEPS=0"])


def test_removed_on_failure_removes_only_what_it_created(tmp_path):
  old = tmp_path / "old"
  old.mkdir()
  (old / "keep.txt").write_text("x")
  with pytest.raises(RuntimeError):
    with runs.removed_on_failure(str(old)):
      (old / "new.txt").write_text("y")
      raise RuntimeError
  assert sorted(os.listdir(old)) == ["keep.txt", "new.txt"]  # existed before: untouched
  new = tmp_path / "a" / "b" / "c"
  with pytest.raises(RuntimeError):
    with runs.removed_on_failure(str(new)):
      new.mkdir(parents=True)
      (new / "config.gin").write_text("x")
      raise RuntimeError
  assert sorted(os.listdir(tmp_path)) == ["old"]  # c and the parents it needed are gone
  with pytest.raises(RuntimeError):
    with runs.removed_on_failure(str(new), keep=lambda d: True):  # e.g. a checkpoint
      new.mkdir(parents=True)
      raise RuntimeError
  assert new.is_dir()


# ------------------------------------------------------------------------------ pipeline
def test_a_failed_stage_exits_3_naming_the_stage(tmp_path, capsys):
  rc = train.main(["--gin_file=rso_hinge.gin", f'--gin.RUN_DIR="{tmp_path}"',
                   "--gin.sft/train_lib.train.train_steps=0", *[f"--gin.{b}" for b in SMALL_NET]])
  out, err = capsys.readouterr()
  assert rc == 3, err
  _one_line(err, "stage 'sft' failed with exit code 2", "TRAIN_STEPS=0 must be")
  assert "[sft] rso_jax.train: error: TRAIN_STEPS=0" in out
  assert os.listdir(tmp_path) == []  # no stage directory, no policy directory


@pytest.fixture
def fake_stage(tmp_path, monkeypatch):
  """`python -m fake_stage` exits with $FAKE_RC (or kills itself with SIGTERM)."""
  (tmp_path / "fake_stage.py").write_text(
      "import os, signal, sys\n"
      "rc = int(os.environ['FAKE_RC'])\n"
      "print('rso_jax.fake: error: something is wrong' if rc == 2 else 'working')\n"
      "sys.stdout.flush()\n"
      "os.kill(os.getpid(), signal.SIGTERM) if rc < 0 else sys.exit(rc)\n")
  monkeypatch.setenv("PYTHONPATH", str(tmp_path))
  return lambda rc: (monkeypatch.setenv("FAKE_RC", str(rc)),
                     cli.run_stage("fake", "fake_stage", flags=[]))[1]


@pytest.mark.parametrize("rc,status,needle", [
    (0, 0, None), (2, 3, "stage 'fake' failed with exit code 2: something is wrong ("),
    (1, 3, "stage 'fake' failed with exit code 1"), (143, 143, "preempted: stage 'fake'"),
    (-15, 143, "preempted: stage 'fake' stopped (exit code -15)")])
def test_stage_exit_codes_propagate(fake_stage, capsys, rc, status, needle):
  assert errors.report("rso_jax.train", lambda: fake_stage(rc)) == status
  err = capsys.readouterr().err
  if needle is None:
    assert err == ""
  else:
    _one_line(err, needle, prefix="error: " if status == 3 else "preempted: ")


def test_a_stage_traceback_is_carried_by_its_exception_line(tmp_path, monkeypatch, capsys):
  """A stage that dies in a traceback (exit 1): the main job's line carries its last
  exception line, not the progress lines before it."""
  (tmp_path / "crash_stage.py").write_text(
      "print('step 1/2 | loss 1.0', flush=True)\n"
      "try:\n  raise KeyError('inner')\n"
      "except KeyError:\n  raise ValueError('/d/x.jsonl:3: reason')\n")
  monkeypatch.setenv("PYTHONPATH", str(tmp_path))
  run = lambda: cli.run_stage("crash", "crash_stage", flags=[])
  assert errors.report("rso_jax.train", run) == 3
  out, err = capsys.readouterr()
  _one_line(err, "stage 'crash' failed with exit code 1: ValueError: /d/x.jsonl:3: reason (")
  assert "[crash] step 1/2 | loss 1.0" in out and "[crash] KeyError: 'inner'" in out


def test_a_data_error_raised_inside_tf_data_is_one_line(capsys):
  """A reader that raises `errors.DataError` inside tf.data (a py_function, a generator)
  reaches the CLI as TensorFlow's own error; the CLI reports the reader's line, exit 2."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from rso_jax import textfiles  # pylint: disable=g-import-not-at-top

  def bad(x):
    raise errors.DataError(f"/d/x.jsonl:{int(x) + 1}: missing field 'chosen'")

  def in_map():
    ds = tf.data.Dataset.range(3).map(lambda x: tf.py_function(bad, [x], tf.int64))
    list(ds.as_numpy_iterator())

  def in_generator():
    def gen():
      yield 1
      raise errors.DataError("/d/y.jsonl:2: invalid UTF-8 at byte 7 (0xff)")
    ds = tf.data.Dataset.from_generator(gen, output_signature=tf.TensorSpec((), tf.int64))
    list(ds.as_numpy_iterator())

  assert errors.report("rso_jax.x", in_map) == 2
  assert capsys.readouterr().err == "rso_jax.x: error: /d/x.jsonl:1: missing field 'chosen'\n"
  assert errors.report("rso_jax.x", in_generator) == 2
  assert capsys.readouterr().err == ("rso_jax.x: error: /d/y.jsonl:2: invalid UTF-8 at byte 7 "
                                     "(0xff)\n")
  with pytest.raises(tf.errors.InvalidArgumentError):  # another tf error is not a user error
    errors.report("rso_jax.x", lambda: tf.debugging.assert_equal(1, 2))


def test_every_reader_decodes_text_the_same_way(tmp_path):
  """`textfiles`: invalid UTF-8 is `<file>:<line>: invalid UTF-8 at byte N (0xXX)`, N counted
  from 1 in the line (a first line's byte-order mark included); the mark itself is dropped."""
  from rso_jax import textfiles  # pylint: disable=g-import-not-at-top
  path = tmp_path / "p.jsonl"
  path.write_bytes(b"\xef\xbb\xbfab\n\nok \xc3\xa9\n")
  assert list(textfiles.read_lines(str(path))) == [(1, "ab\n"), (2, "\n"), (3, "ok \u00e9\n")]
  path.write_bytes(b"\xef\xbb\xbfa\xff\n")
  with pytest.raises(errors.DataError, match=r"p\.jsonl:1: invalid UTF-8 at byte 5 \(0xff\)$"):
    list(textfiles.read_lines(str(path)))
  path.write_bytes(b"ok\ncaf\xc3\n")  # a sequence cut short
  with pytest.raises(errors.DataError, match=r"p\.jsonl:2: invalid UTF-8 at byte 4 \(0xc3\)$"):
    list(textfiles.read_lines(str(path)))
  assert issubclass(errors.DataError, ValueError)
  assert errors.DataError in errors.USER_ERRORS


def test_sigterm_checkpoints_and_exits_143_then_a_rerun_resumes(tmp_path, capsys):
  run = tmp_path / "sft"
  flags = ["--gin_file=stages/sft.gin", f'--gin.MODEL_DIR="{run}"', "--gin.BATCH_SIZE=8",
           "--gin.EVAL_PERIOD=0", "--gin.train_lib.train.log_period=1",
           *[f"--gin.{b}" for b in SMALL_NET]]
  # One device: the child compiles faster (the sharded paths are tested elsewhere).
  env = dict(os.environ, PYTHONUNBUFFERED="1", JAX_PLATFORMS="cpu",
             XLA_FLAGS=xla_flags(1))
  proc = subprocess.Popen([sys.executable, "-m", "rso_jax.train", *flags,
                           "--gin.TRAIN_STEPS=100000"], cwd=REPO, env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  try:
    for line in proc.stdout:
      if line.startswith("step "):  # training: stop it the way a scheduler does
        proc.send_signal(signal.SIGTERM)
        break
    out, err = proc.communicate(timeout=120)
  finally:
    proc.kill()
  assert proc.returncode == 143, err
  _one_line(err, "rso_jax.train: preempted: checkpoint saved at step", "rerun the same command",
            prefix="preempted: ")
  step = checkpoints.latest_step(str(run))
  assert step and not os.path.exists(run / "COMPLETED")
  # The rerun resumes from that checkpoint (here: told to stop there, so it only restores the
  # state and marks the run finished; test_trainer checks that a resumed run is bit-exact).
  assert train.main(flags + [f"--gin.TRAIN_STEPS={step}"]) == 0
  assert f"resumed from {run}/checkpoints/{step}" in capsys.readouterr().out
  assert os.path.exists(run / "COMPLETED")


# ------------------------------------------------------------------------------ sample
def _sample_flags(ckpts, samples_dir, *extra):
  return ["--gin_file=stages/sample.gin", f'--gin.SAMPLES_DIR="{samples_dir}"',
          f'--gin.SFT_CHECKPOINT="{ckpts["sft"]}"', f'--gin.REWARD_CHECKPOINT="{ckpts["bt"]}"',
          "--gin.PROMPTS_TASK='synthetic_prompts'", "--gin.NUM_PROMPTS=4", *extra]


@pytest.mark.parametrize("flag,needles", [
    ("--gin.sample.sample_configured.beta=-1.0", ["beta=-1.0 must be a finite number >= 0"]),
    ("--gin.DATA_SETTING='rso_sample_rnak'", ["DATA_SETTING='rso_sample_rnak'",
                                              "did you mean 'rso_sample_rank'?"]),
    ("--gin.sample.sample_configured.bta=0.5", ["sample.sample_configured.bta",
                                                "did you mean sample.sample_configured.beta?"]),
    ("--gin.PROMPTS_TASK='no_such_task'", ["PROMPTS_TASK='no_such_task'"]),
    ("--gin.SFT_CHECKPOINT='/nonexistent/sft'", ["checkpoint not found", "/nonexistent/sft"]),
])
def test_sample_refusals_are_one_line_and_leave_no_directory(ckpts, tmp_path, capsys, flag,
                                                            needles):
  samples = tmp_path / "runs" / "samples"
  rc = sample.main(_sample_flags(ckpts, samples, flag))
  assert rc == 2
  _one_line(capsys.readouterr().err, *needles)
  assert not os.path.exists(tmp_path / "runs")


def test_sample_refuses_a_samples_dir_of_another_configuration(ckpts, tmp_path, capsys):
  samples = tmp_path / "samples"
  samples.mkdir()
  (samples / "manifest.json").write_text(json.dumps({"beta": 9.0}))
  rc = sample.main(_sample_flags(ckpts, samples))
  assert rc == 2
  _one_line(capsys.readouterr().err, "holds shards of a different configuration",
            "use another output directory")
  assert os.listdir(samples) == ["manifest.json"]  # it existed before: never removed


def test_a_sample_run_that_fails_midway_leaves_no_directory(ckpts, tmp_path, monkeypatch):
  def broken(*args, **kwargs):
    raise RuntimeError("a bug deep in the sampler")
  monkeypatch.setattr(sample_batch, "process_batch", broken)
  samples = tmp_path / "runs" / "samples"
  with pytest.raises(RuntimeError, match="a bug"):  # not a user error: the traceback
    sample.main(_sample_flags(ckpts, samples))
  assert not os.path.exists(tmp_path / "runs")  # it held no finished shard


def test_a_preempted_sample_run_keeps_its_finished_shards(ckpts, tmp_path, monkeypatch, capsys):
  calls = []

  def fake(policy, scorer, prompts, key, n_real=None, **kwargs):
    calls.append(1)
    if len(calls) > 1:  # SIGTERM while the second shard is computed
      signal.raise_signal(signal.SIGTERM)
    return [], sample_batch.Accum(prompts=n_real)
  monkeypatch.setattr(sample_batch, "process_batch", fake)
  samples = tmp_path / "samples"
  rc = sample.main(_sample_flags(ckpts, samples,
                                 "--gin.sample.sample_configured.prompts_per_shard=2"))
  assert rc == 143
  _one_line(capsys.readouterr().err, "rso_jax.sample: preempted: 1 finished shard(s) kept",
            "rerun the same command", prefix="preempted: ")
  assert sorted(os.listdir(samples)) == ["manifest.json", "pairs-00000-of-00002.tfrecord",
                                         "stats-00000.json"]  # no temp file of shard 2


# ------------------------------------------------------------------------------ other CLIs
def test_infer_unknown_binding(ckpts, tmp_path, capsys):
  rc = infer.main(["--gin_file=stages/infer.gin", f'--gin.CHECKPOINT="{ckpts["sft"]}"',
                   f'--gin.OUTPUT="{tmp_path}/o/out.jsonl"', "--gin.TASK='synthetic_prompts'",
                   "--gin.infer.infer_configured.num_decode=2"])
  assert rc == 2
  _one_line(capsys.readouterr().err, "infer_configured.num_decode",
            "did you mean infer_configured.num_decodes?")
  assert not os.path.exists(tmp_path / "o")


def test_evaluate_errors_are_one_line(ckpts, tmp_path, capsys):
  for argv, needle in ((["--policy=x"], "--policy needs --sft"),
                       (["--reward=x", "--num_prompts=abc"], "invalid int value: 'abc'")):
    with pytest.raises(SystemExit) as exc:  # argparse
      evaluate.main(argv)
    assert exc.value.code == 2
    _one_line(capsys.readouterr().err, "rso_jax.evaluate: error:", needle)
  out_dir = tmp_path / "e" / "out"
  for argv, needle in (
      ([f"--policy={ckpts['sft']}", f"--sft={tmp_path}/nope"], "checkpoint not found"),
      ([f"--policy={ckpts['bt']}", f"--sft={ckpts['sft']}"], "kind='bt_rm'"),
      ([f"--policy={ckpts['sft']}", f"--sft={ckpts['sft']}", "--decoding=beam"],
       "decoding='beam'"),
      ([f"--policy={ckpts['sft']}", f"--sft={ckpts['sft']}", "--prompts_task=no_such_task"],
       "no_such_task")):
    assert evaluate.main(argv + ["--num_prompts=4", f"--output_dir={out_dir}"]) == 2, argv
    _one_line(capsys.readouterr().err, "rso_jax.evaluate: error:", needle)
    assert not os.path.exists(tmp_path / "e")


def test_export_convert_checkpoints_errors_are_one_line(ckpts, tmp_path, capsys):
  out = tmp_path / "x" / "y" / "hf"
  assert export.main(["--checkpoint", ckpts["bt"], "--out", str(out)]) == 2
  _one_line(capsys.readouterr().err, "rso_jax.export: error:", "bt_rm")
  assert convert.main(["--hf_dir", str(tmp_path / "nope"), "--out", str(out)]) == 2
  _one_line(capsys.readouterr().err, "rso_jax.convert: error:", "no config.json")
  assert not os.path.exists(tmp_path / "x")
  with pytest.raises(SystemExit) as exc:
    export.main(["--checkpoint", ckpts["sft"]])
  assert exc.value.code == 2
  _one_line(capsys.readouterr().err, "rso_jax.export: error:", "--out")
  assert checkpoints.main(["describe", str(tmp_path / "nope")]) == 2
  _one_line(capsys.readouterr().err, "rso_jax.checkpoints: error:", "checkpoint not found")
  assert checkpoints.main(["add-manifest", str(tmp_path), "--kind=seq2seq"]) == 2
  _one_line(capsys.readouterr().err, "rso_jax.checkpoints: error:", "no params checkpoint")


def test_iterative_round_two_reads_round_one():
  """gin/variants/iterative.gin: the round-1 policy is the proposal, reference and starting point; the
  reward model starts from the original π_sft and trains on both rounds' rated pairs; the
  evaluation stays against the original π_sft; no SFT stage."""
  cli.configure_gin(["rso_hinge.gin", "variants/iterative.gin"],
                      ["ROUND1_DIR = '/tmp/r1'", "RUN_DIR = '/tmp/r2'"], [])
  policy = pipeline.stage_bindings(train.train, "")
  assert policy["initial_checkpoint_path"] == "/tmp/r1/rso_hinge"
  assert [type(p).__name__ for p in policy["prerequisites"]] == [
      "CollectStage", "TrainStage", "JudgeStage", "RewardQualityStage", "SampleStage"]
  collect, _, judge, quality, _ = policy["prerequisites"]
  assert judge.checkpoint is None  # the embedded task grades with r*: no judge
  assert collect.policy_checkpoint == "/tmp/r1/rso_hinge"
  assert collect.output_path == "/tmp/r2/collect/pairs.jsonl"
  assert quality.sft_checkpoint == "/tmp/r1/rso_hinge" and quality.proposal == "the round-1 policy"
  reward = pipeline.stage_bindings(train.train, "reward")
  assert reward["initial_checkpoint_path"] == "/tmp/r1/sft"
  assert reward["model_dir"] == "/tmp/r2/reward_bt"
  (evaluate,) = policy["after_training"]
  assert evaluate.sft_checkpoint == "/tmp/r1/sft" and evaluate.output_dir == "/tmp/r2"
  from rso_jax import tasks  # pylint: disable=g-import-not-at-top
  pairs = pipeline.stage_bindings(tasks.register_preference_file_task, "onpolicy")
  assert pairs["name"] == "synthetic_onpolicy_pairs" and pairs["made_by_run"]
  assert pairs["path"] == {"train": ["/tmp/r1/collect/pairs.jsonl", "/tmp/r2/collect/pairs.jsonl"]}


def test_no_command_writes_over_its_input(ckpts, tmp_path, capsys):
  from helpers import snapshot  # pylint: disable=import-outside-toplevel
  hf = tmp_path / "hf"
  hf.mkdir()
  (hf / "config.json").write_text('{"vocab_size": 384}')
  prompts = tmp_path / "prompts.jsonl"
  prompts.write_text('{"prompt": "a"}\n')
  before, ckpt_before = snapshot(tmp_path), snapshot(ckpts["sft"])
  assert convert.main(["--hf_dir", str(hf), "--out", str(hf)]) == 2
  _one_line(capsys.readouterr().err, "rso_jax.convert: error: --out", "is the same path as "
            f"--hf_dir {str(hf)!r}")
  assert convert.main(["--hf_dir", str(hf), "--out", str(tmp_path)]) == 2
  _one_line(capsys.readouterr().err, f"--out {str(tmp_path)!r} contains --hf_dir")
  assert checkpoints.main(["to-t5x", ckpts["sft"], ckpts["sft"]]) == 2
  _one_line(capsys.readouterr().err, "rso_jax.checkpoints: error: model_dir",
            "is the same path as the checkpoint")
  rc = infer.main(["--gin_file=stages/infer.gin", f'--gin.CHECKPOINT="{ckpts["sft"]}"',
                   f'--gin.PROMPTS_FILE="{prompts}"', f'--gin.OUTPUT="{prompts}"'])
  assert rc == 2
  _one_line(capsys.readouterr().err, "OUTPUT", "is the same path as PROMPTS_FILE")
  rc = infer.main(["--gin_file=stages/infer.gin", f'--gin.CHECKPOINT="{ckpts["sft"]}"',
                   f'--gin.PROMPTS_FILE="{prompts}"',
                   f'--gin.OUTPUT="{ckpts["sft"]}/rso_manifest.json"'])
  assert rc == 2
  _one_line(capsys.readouterr().err, "OUTPUT", "lies inside CHECKPOINT")
  assert snapshot(tmp_path) == before and snapshot(ckpts["sft"]) == ckpt_before


def test_gin_includes_resolve_where_folders_share_their_names(tmp_path, monkeypatch):
  """`python -m` puts the working directory on sys.path; folders there named like the includes'
  (`experiments/`, `stages/`: the main job writes `runs/`) are namespace packages to gin's
  package-path reader, and the includes must still resolve in the repository's gin/."""
  import importlib  # pylint: disable=import-outside-toplevel
  import gin.resource_reader  # pylint: disable=import-outside-toplevel,unused-import
  for d in ("experiments", "stages", "models", "variants", "runs"):
    (tmp_path / d).mkdir()
  monkeypatch.chdir(tmp_path)
  monkeypatch.syspath_prepend(str(tmp_path))
  importlib.invalidate_caches()
  cli.configure_gin(["rso_hinge.gin"], [], [])
  assert gin.query_parameter("RUN_DIR/macro.value") == "runs/embedded"
