"""The package as a user installs it: a wheel built from the project, installed into a fresh
virtual environment, runs an experiment (jsonl.gin on a TRL-format file) from a directory
outside the repository, with the gin files it ships."""

import glob
import json
import os
import shutil
import subprocess
import sys

import pytest

import helpers
import realdata
from rso_jax import checkpoints
from rso_jax.tasks import preference_files

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
  """A venv (the test environment's packages visible, rso_jax not) with the project's wheel."""
  d = tmp_path_factory.mktemp("package")
  src = d / "src"
  src.mkdir()
  for name in ("pyproject.toml", "README.md", "LICENSE"):
    shutil.copy(os.path.join(REPO, name), src / name)
  for name in ("rso_jax", "gin"):
    shutil.copytree(os.path.join(REPO, name), src / name,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
  run = lambda *cmd, **kw: subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)
  run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
      "-w", str(d / "dist"), str(src))
  (wheel,) = glob.glob(str(d / "dist" / "rso_jax-*.whl"))
  run(sys.executable, "-m", "venv", "--system-site-packages", str(d / "venv"))
  bin_dir = d / "venv" / "bin"
  run(str(bin_dir / "python"), "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel)
  return bin_dir


def _clean_env():
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  return dict(env, RSO_JAX_TRACEBACK="1")


def test_the_wheel_ships_the_gin_files_and_the_console_scripts(installed, tmp_path):
  out = subprocess.run(
      [str(installed / "python"), "-c",
       "import os, rso_jax, rso_jax.cli as c; print(rso_jax.__file__); print(c.GIN_DIR); "
       "print(c.find_gin_file('gin/rso_hinge.gin'))"],
      cwd=tmp_path, env=_clean_env(), check=True, capture_output=True, text=True).stdout.split()
  package, gin_dir, main_job = out
  assert not package.startswith(REPO) and "site-packages" in package
  assert gin_dir == os.path.join(os.path.dirname(package), "gin")
  shipped = sorted(os.path.relpath(p, gin_dir)
                   for p in glob.glob(os.path.join(gin_dir, "**", "*.gin"), recursive=True))
  in_repo = sorted(os.path.relpath(p, os.path.join(REPO, "gin"))
                   for p in glob.glob(os.path.join(REPO, "gin", "**", "*.gin"), recursive=True))
  assert shipped == in_repo and main_job == os.path.join(gin_dir, "rso_hinge.gin")
  for script in ("rso-train", "rso-sample", "rso-infer", "rso-evaluate", "rso-export",
                 "rso-convert", "rso-checkpoints"):
    assert os.access(installed / script, os.X_OK), script
  help_text = subprocess.run([str(installed / "rso-evaluate"), "--help"], cwd=tmp_path,
                             env=_clean_env(), capture_output=True, text=True)
  assert help_text.returncode == 0 and "--judge" in help_text.stdout


def test_jsonl_experiment_runs_from_the_installed_package_outside_the_repo(installed, tmp_path):
  """jsonl.gin on a TRL-format file, every stage at tiny sizes, through `rso-train` in a
  directory that holds no gin file. No process can import the repository's rso_jax (no
  PYTHONPATH, another working directory): every stage runs the installed one."""
  data = tmp_path / "data"
  spm = realdata.make_spm(data / "spm")
  t5 = realdata.make_hf_t5(data / "t5", spm)
  trl = realdata.make_trl_jsonl(data / "trl", n=40)
  work = tmp_path / "elsewhere"
  work.mkdir()
  run = work / "runs" / "jsonl"
  argv = [str(installed / "rso-train"), "--gin_file=gin/experiments/jsonl.gin",
          '--gin.RUN_DIR="runs/jsonl"', f'--gin.DATA_TRAIN="{trl}"',
          "--gin.VALIDATION_FRACTION=0.25", f'--gin.SPM_PATH="{spm}"',
          f'--gin.PRETRAINED_CHECKPOINT="{t5}"', *helpers.TINY_EXPERIMENT,
          "--gin.TASK_FEATURE_LENGTHS={'inputs': 96, 'targets': 24}",
          "--gin.sample.sample_configured.num_candidates=2",
          "--gin.sample.sample_configured.num_samples=2",
          # The encoder-decoder BT reward model, started from pi_sft (gin/reward_models/bt.gin).
          "--gin.BT_ARCHITECTURE='encoder_decoder'", "--gin.BT_POOLING='last'",
          "--gin.REWARD_INITIAL_CHECKPOINT=%SFT_CHECKPOINT",
          "--gin.JUDGE_PROMPT_FRACTION=0.0"]  # no judge: the TL;DR test runs one
  proc = subprocess.run(argv, cwd=work, env=_clean_env(), capture_output=True, text=True)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  out = proc.stdout
  assert f"from {run / 'sft'} (seq2seq); fresh: reward_head;" in out
  assert "proxy win% [95% CI]" in out  # the evaluation table
  rm_manifest = checkpoints.read_manifest(str(run / "reward_bt"))
  assert rm_manifest.model_settings["architecture"] == "encoder_decoder"
  with open(trl) as f:
    prompts = [json.loads(line)["prompt"] for line in f]
  val = [p for p in dict.fromkeys(prompts) if preference_files.prompt_fraction(p) < 0.25]
  stats = json.loads(open(glob.glob(str(run / "samples" / "*" / "stats.json"))[0]).read())
  assert stats["prompts"] == len(dict.fromkeys(prompts)) - len(val)  # train prompts, once
  report = json.loads((run / "eval_rso_hinge.json").read_text())
  assert report["prompts_task"] == "jsonl_eval_prompts" and report["prompts_in_split"] == len(val)
  # The reward model reads the policy's longest response and its EOS: one more target token.
  for d, task, lt in (("sft", "jsonl_sft", 24), ("reward_bt", "jsonl_pairs", 25)):
    m = checkpoints.read_manifest(str(run / d))
    assert m.task == task and dict(m.feature_lengths) == {"inputs": 96, "targets": lt}
