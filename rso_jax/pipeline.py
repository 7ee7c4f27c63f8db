"""Stages of the end-to-end RSO run, bound from gin as the policy run's prerequisites.

`python -m rso_jax.train --gin_file=gin/rso_hinge.gin` trains the policy; before that, its
`prerequisites` build whatever upstream artifact is missing, each by its own stage with its
own gin file, in a subprocess (a clean gin and JAX state per stage):

  TrainStage("sft")     -> SFT checkpoint        (gin/sft.gin)
  TrainStage("reward")  -> reward model          (gin/reward.gin or gin/reward_bt.gin)
  SampleStage           -> labeled pair task     (gin/sample_rso.gin; rso / sft sample-rank)
  EvaluateStage         <- after training: win rates, KL, report and plot

A stage whose artifact is complete (a `COMPLETED` marker, or a user's own params checkpoint
without a run directory around it) is reused; an interrupted stage resumes where it stopped.

A stage that fails raises `StageFailed` (the CLI prints one line naming the stage and its exit
status, and exits 3); a stage stopped by SIGTERM / SIGINT (exit status 143, or killed by the
signal) raises `trainer.Preempted` (the CLI exits 143: rerun to continue). SIGTERM / SIGINT
sent to this process while a stage runs are forwarded to the stage, which checkpoints.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import signal
import subprocess
import sys
from typing import Any, Optional, Sequence

from rso_jax import checkpoints

COMPLETED = "COMPLETED"
EXIT_PREEMPTED = 143  # trainer.EXIT_PREEMPTED


class StageFailed(RuntimeError):
  """A stage's subprocess exited with an error (the CLI's exit status 3)."""

  def __init__(self, name: str, returncode: int, error_line: Optional[str] = None):
    self.name, self.returncode, self.error_line = name, returncode, error_line
    detail = f": {error_line}" if error_line else ""
    super().__init__(f"stage {name!r} failed with exit code {returncode}{detail} (its output is "
                     f"above, prefixed [{name}]; fix it and rerun the same command: finished "
                     "stages are reused)")


def is_complete(path: str) -> bool:
  """True for a finished run/stage directory or a bare params checkpoint (user-provided)."""
  if os.path.exists(os.path.join(path, COMPLETED)):
    return True
  bare = os.path.isdir(os.path.join(path, "params"))
  return bare and not os.path.isdir(os.path.join(path, checkpoints.CHECKPOINT_SUBDIR))


def _run(name: str, module: str, gin_file: str, bindings: Sequence[str]) -> None:
  """Runs `python -m module` for a stage, its output prefixed `[name]`.

  Raises `StageFailed` on a non-zero exit, `trainer.Preempted` when the stage was stopped by
  SIGTERM / SIGINT (its exit status 143, or killed by the signal, or a signal this process
  received and forwarded to it while it ran).
  """
  from rso_jax import trainer  # pylint: disable=g-import-not-at-top
  cmd = [sys.executable, "-m", module, f"--gin_file={gin_file}"]
  cmd += [f"--gin.{b}" for b in bindings]
  print(f"[{name}] {' '.join(cmd[1:])}", flush=True)
  proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          bufsize=1)
  forwarded = []

  def forward(signum, frame):  # pylint: disable=unused-argument
    forwarded.append(signum)
    try:
      proc.send_signal(signum)
    except ProcessLookupError:
      pass

  old = {}
  for sig in (signal.SIGTERM, signal.SIGINT):
    try:
      old[sig] = signal.signal(sig, forward)
    except ValueError:  # not the main thread: no forwarding
      pass
  error_line = None
  try:
    assert proc.stdout is not None
    for line in proc.stdout:
      if _noise(line):
        continue
      if line.startswith("rso_jax.") and ": error: " in line:
        error_line = line.strip()
      print(f"[{name}] {line}", end="", flush=True)
    rc = proc.wait()
  finally:
    for sig, handler in old.items():
      signal.signal(sig, handler)
  stopped = rc in (EXIT_PREEMPTED, -signal.SIGTERM, -signal.SIGINT)
  if stopped or (forwarded and rc != 0):
    raise trainer.Preempted(f"preempted: stage {name!r} stopped (exit code {rc}) with what it "
                            "finished saved; rerun the same command to continue")
  if rc:
    raise StageFailed(name, rc, error_line)
  if forwarded:
    raise trainer.Preempted(f"preempted after stage {name!r} finished; rerun the same command "
                            "to continue")


def _noise(line: str) -> bool:
  return any(s in line for s in ("cuda", "oneDNN", "absl::InitializeLog", "TF_ENABLE_ONEDNN",
                                 "FunctionDataset", "computation placer"))


def _quote(v: Any) -> str:
  return json.dumps(v) if isinstance(v, str) else repr(v)


def train_steps_binding(steps: int) -> str:
  """The binding `TRAIN_STEPS=<steps>` for a stage (lets a run config set a stage's length)."""
  return f"TRAIN_STEPS={int(steps)}"


@dataclasses.dataclass
class TrainStage:
  """Trains a checkpoint with `python -m rso_jax.train` unless `model_dir` is complete."""
  name: str
  gin_file: str
  model_dir: str
  bindings: Sequence[str] = ()

  def __call__(self) -> str:
    if is_complete(self.model_dir):
      print(f"[{self.name}] reusing {self.model_dir}", flush=True)
      return self.model_dir
    _run(self.name, "rso_jax.train", self.gin_file,
         [f"MODEL_DIR={_quote(os.path.abspath(self.model_dir))}", *self.bindings])
    return self.model_dir


@dataclasses.dataclass
class SampleStage:
  """Builds (or reuses) the labeled pair task and registers it as `task_name`.

  Samples live in `run_dir/samples/<data_setting>-<hash>`: the hash covers the sampling
  configuration (policy, reward model, N, k, β, temperature, …), so an ablation override gets
  its own directory and never mixes shards with another configuration.
  """
  run_dir: str
  policy_checkpoint: str
  reward_checkpoint: str
  task_name: str
  gin_file: str = "sample_rso.gin"
  data_setting: str = "rso_sample_rank"
  bindings: Sequence[str] = ()

  def output_dir(self) -> str:
    key = json.dumps([os.path.abspath(self.policy_checkpoint),
                      os.path.abspath(self.reward_checkpoint), self.data_setting, sorted(self.bindings)])
    digest = hashlib.sha256(key.encode()).hexdigest()[:8]
    return os.path.join(os.path.abspath(self.run_dir), "samples",
                        f"{self.data_setting}-{digest}")

  def __call__(self) -> str:
    from rso_jax.tasks import generated  # pylint: disable=g-import-not-at-top
    out = self.output_dir()
    if os.path.exists(os.path.join(out, COMPLETED)):
      print(f"[sample] reusing {out}", flush=True)
    else:
      _run("sample", "rso_jax.sample", self.gin_file, [
          f"SAMPLES_DIR={_quote(out)}",
          f"SFT_CHECKPOINT={_quote(os.path.abspath(self.policy_checkpoint))}",
          f"REWARD_CHECKPOINT={_quote(os.path.abspath(self.reward_checkpoint))}",
          f"DATA_SETTING={_quote(self.data_setting)}", *self.bindings])
    generated.register_pair_task(self.task_name, out)
    with open(os.path.join(out, "stats.json")) as f:
      stats = json.load(f)
    print(f"[sample] {stats['pairs']} pairs from {stats['prompts']} prompts; acceptance rate "
          f"{stats['rejection/acceptance_rate']:.3f}, golden reward all/selected "
          f"{stats['golden/all_mean']:.3f}/{stats['golden/selected_mean']:.3f}", flush=True)
    return out


@dataclasses.dataclass
class EvaluateStage:
  """After training: win rates and KL of the policy against π_sft; prints the table."""
  sft_checkpoint: str
  reward_checkpoint: Optional[str]
  output_dir: str
  name: str
  num_prompts: int = 256
  prompts_task: str = "synthetic_prompts"
  split: str = "validation"

  def __call__(self, model_dir: str) -> dict:
    from rso_jax import evaluate  # pylint: disable=g-import-not-at-top
    from rso_jax import reports  # pylint: disable=g-import-not-at-top
    result = evaluate.evaluate_policy(
        model_dir, self.sft_checkpoint, reward_path=self.reward_checkpoint,
        prompts_task=self.prompts_task, split=self.split,
        num_prompts=self.num_prompts, output_dir=self.output_dir, name=self.name)
    print(reports.format_table(result), flush=True)
    print(f"report: {os.path.join(self.output_dir, f'eval_{self.name}.json')}; plot: "
          f"{os.path.join(self.output_dir, 'eval_plot.png')}", flush=True)
    return result
