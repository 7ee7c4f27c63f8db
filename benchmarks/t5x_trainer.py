"""rso_jax's trainer against upstream T5X's, on the same RSO policy job.

    python benchmarks/t5x_trainer.py [--workdir=/tmp/rso_t5x_bench] [--steps=110]

Needs upstream T5X (`launch/install_t5x.sh`). One π_sft (rso_jax SFT on the embedded task),
one sampling stage (rso-sample-rank pairs with log π_sft, labeled by the embedded task's golden
reward, so no reward model is trained here), then the hinge-norm policy from π_sft on those
pairs, trained by

  rso_jax   python -m rso_jax.train --gin_file=gin/stages/policy.gin
  T5X       python -m t5x.train --gin_file=gin/t5x/rso_hinge.gin   (π_sft via `to-t5x`)

with the same network, batch, AdamW learning rate (constant, no clipping, no warmup) and one
CPU device each. Printed:
  * per-step time of each trainer in steady state: the median of its own steps/s meter over
    its 10-step logging windows after the first (which holds compilation), and the ratio
    T5X / rso_jax; and each whole command's wall time (start-up, data pipeline, compilation,
    checkpoints and exit included);
  * each trainer's last logged training metrics (loss, TRL's rewards/accuracies), and the
    largest difference between the two final policies' params (the same data order, seed,
    optimizer and loss code: on one CPU device they have come out bit-identical);
  * rso_jax's evaluation of both final policies on the same validation prompts: golden win rate
    of greedy decodes against π_sft's, and KL(π‖π_sft).
Both log every 10 steps. Finished pieces in --workdir (π_sft, pairs) are reused.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def _run(cmd, log_path, devices=1):
  env = dict(os.environ, PYTHONPATH=ROOT,
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  t0 = time.time()
  with open(log_path, "w") as log:
    proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
  if proc.returncode:
    raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}; see {log_path}")
  return time.time() - t0


def _events(model_dir):
  from rso_jax import reports  # pylint: disable=g-import-not-at-top
  return {k: [v for _, v in steps] for k, steps in reports.training_scalars(model_dir).items()}


class _Golden:
  kind = "bt_rm"
  stats = {"contexts_truncated": 0, "responses_too_long": 0}

  def reward(self, prompts, responses, baselines=None, valid=None):
    from rso_jax.tasks import synthetic  # pylint: disable=g-import-not-at-top
    return synthetic.golden_rewards(prompts, responses).astype(np.float32)


def _prepare(args, w: str):
  """π_sft, its pairs and π_sft as a T5X checkpoint, in `w` (finished ones reused):
  (sft dir, pairs dir, T5X init dir)."""
  from rso_jax import checkpoints, runs, sample  # pylint: disable=g-import-not-at-top
  sft, pairs = os.path.join(w, "sft"), os.path.join(w, "pairs")
  if checkpoints.latest_step(sft) is None:
    secs = _run([sys.executable, "-m", "rso_jax.train", "--gin_file=gin/stages/sft.gin",
                 f"--gin.MODEL_DIR='{sft}'", f"--gin.TRAIN_STEPS={args.sft_steps}",
                 "--gin.EVAL_PERIOD=0"], os.path.join(w, "sft.log"))
    print(f"π_sft: {args.sft_steps} SFT steps in {secs:.0f} s")
  if not runs.is_complete(pairs):
    stats = sample.run(policy_checkpoint=sft, reward_checkpoint=None, output_dir=pairs,
                       scorer=_Golden(), prompts_task="synthetic_prompts", split="train",
                       max_prompts=args.num_prompts, num_candidates=16, num_samples=8,
                       progress=False)
    print(f"pairs: {stats['pairs']} from {stats['prompts']} prompts")
  init = os.path.join(w, "sft_t5x")
  if not os.path.isdir(os.path.join(init, "checkpoint_0")):
    m, params = checkpoints.load(sft)
    checkpoints.save_t5x(init, params, m)
  return sft, pairs, init


def _trainers(sft: str, init: str, n: int) -> dict:
  """{trainer: (its command after the interpreter, its steps/s metric)}."""
  return {
      "rso_jax": (["-m", "rso_jax.train", "--gin_file=gin/stages/policy.gin",
                   f"--gin.INITIAL_CHECKPOINT_PATH='{sft}'", "--gin.train_lib.train.warmup_steps=0",
                   "--gin.train_lib.train.grad_clip=None", "--gin.train_lib.train.log_period=10",
                   f"--gin.train_lib.train.checkpoint_period={n}"], "perf/steps_per_sec"),
      "t5x": (["-m", "t5x.train", "--gin_file=gin/t5x/rso_hinge.gin",
               f"--gin.INITIAL_CHECKPOINT_PATH='{init}/checkpoint_0'", "--gin.STATS_PERIOD=10",
               f"--gin.CHECKPOINT_PERIOD={n}"], "timing/steps_per_second"),
  }


def _train_and_evaluate(cmd, meter: str, d: str, log: str, sft: str, common, args) -> dict:
  """One trainer from scratch in `d`: its times, last training metrics and evaluation."""
  from rso_jax import evaluate  # pylint: disable=g-import-not-at-top
  if os.path.isdir(d):
    subprocess.run(["rm", "-rf", d], check=True)
  wall = _run([sys.executable, *cmd, f"--gin.MODEL_DIR='{d}'", *common], log)
  ev = _events(d)
  result = {
      "wall_s": wall, "ms_per_step": 1000 / float(np.median(ev[meter][1:])),
      "loss_last": ev["loss"][-1], "accuracy_last": ev["rewards/accuracies"][-1],
      "margin_last": ev["rewards/margins"][-1],
  }
  report = evaluate.evaluate_policy(d, sft,
                                    prompts_task="synthetic_prompts",
                                    num_prompts=args.eval_prompts, decoding=("greedy",),
                                    kl_samples_per_prompt=4, num_examples=0)
  res = report["results"]["greedy"]
  result.update(golden_win_vs_sft=res["vs_sft/golden"],
                golden_win_stderr=res["vs_sft/golden_stderr"],
                kl=report["kl/mean"], kl_stderr=report["kl/stderr"])
  return result


def _print_summary(results: dict, trainers, n: int, batch_size: int) -> None:
  r, t = results["rso_jax"], results["t5x"]
  print(f"\n{n} policy steps (batch {batch_size}, tiny T5, 1 CPU device):")
  print(f"{'':10s} {'ms/step':>8s} {'wall s':>7s} {'loss':>7s} {'acc':>6s} {'golden win':>12s} "
        f"{'KL':>12s}")
  for name in trainers:
    x = results[name]
    print(f"{name:10s} {x['ms_per_step']:8.1f} {x['wall_s']:7.1f} {x['loss_last']:7.3f} "
          f"{x['accuracy_last']:6.3f} "
          f"{x['golden_win_vs_sft']:6.3f}±{x['golden_win_stderr']:.3f} "
          f"{x['kl']:6.2f}±{x['kl_stderr']:.2f}")
  print(f"step time T5X / rso_jax: {t['ms_per_step'] / r['ms_per_step']:.2f}x; final params "
        f"max |rso_jax − T5X| = {results['final_params_max_abs_diff']:.3g} (moved from π_sft by "
        f"up to {results['moved_from_sft_max_abs']:.3g})")


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--workdir", default="/tmp/rso_t5x_bench")
  p.add_argument("--sft_steps", type=int, default=400)
  p.add_argument("--num_prompts", type=int, default=256)
  p.add_argument("--steps", type=int, default=110)
  p.add_argument("--batch_size", type=int, default=32)
  p.add_argument("--learning_rate", type=float, default=1e-4)
  p.add_argument("--eval_prompts", type=int, default=128)
  args = p.parse_args()
  from rso_jax import checkpoints  # pylint: disable=g-import-not-at-top
  w = os.path.abspath(args.workdir)
  os.makedirs(w, exist_ok=True)
  sft, pairs, init = _prepare(args, w)
  n = args.steps
  common = [f"--gin.PAIRS_DIR='{pairs}'", f"--gin.BATCH_SIZE={args.batch_size}",
            f"--gin.LEARNING_RATE={args.learning_rate}", f"--gin.TRAIN_STEPS={n}"]
  trainers = _trainers(sft, init, n)
  results = {name: _train_and_evaluate(cmd, meter, os.path.join(w, name),
                                       os.path.join(w, f"{name}.log"), sft, common, args)
             for name, (cmd, meter) in trainers.items()}
  import jax  # pylint: disable=g-import-not-at-top
  final = {t: checkpoints.load_params(os.path.join(w, t)) for t in trainers}
  sft_params = checkpoints.load_params(sft)
  gap = lambda a, b: max(float(np.abs(np.asarray(x) - np.asarray(y)).max())
                         for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
  results["final_params_max_abs_diff"] = gap(final["rso_jax"], final["t5x"])
  results["moved_from_sft_max_abs"] = gap(final["rso_jax"], sft_params)
  print(json.dumps(results, indent=2))
  _print_summary(results, trainers, n, args.batch_size)


if __name__ == "__main__":
  main()
