r"""Oracle reward checkpoints for the embedded task: exact r*/τ, or a noisy proxy of set accuracy.

    python -m rso_jax.oracle_reward --out=runs/oracle --task=synthetic_prompts
    python -m rso_jax.oracle_reward --out=runs/proxy85 --task=synthetic_prompts \
        --target_accuracy=0.85 --sft_checkpoint=runs/embedded/sft

writes a checkpoint directory of kind "oracle_rm" (a manifest, no params) that every stage opens
like a trained reward model (`inference.OracleRewardModel`): pass it as
`--gin.REWARD_CHECKPOINT=\"runs/proxy85\"` (sampling, labelling, the evaluation's proxy) or
`JUDGE_CHECKPOINT`. The reward is r̂ = r*/τ + σ z(x, y) (`tasks.oracle`). With a target
accuracy below 1, σ is calibrated on pairs of π_sft's own samples -- `num_samples` per prompt of
the first `num_prompts` prompts of `split` (T and top-k of the sampling recipe), every pair of
one prompt's distinct samples with unequal r* -- so that the proxy ranks that fraction of them
as r* does; the calibration record is kept in the manifest. `measure` checks a proxy on
another split's samples.
"""
from __future__ import annotations

import time
from typing import Any, Dict, Optional, Sequence

import jax
import numpy as np

from rso_jax import checkpoints
from rso_jax import datasets
from rso_jax import errors
from rso_jax import fs
from rso_jax import inference
from rso_jax import recipe
from rso_jax import reward_quality
from rso_jax import runs
from rso_jax.tasks import golden
from rso_jax.tasks import oracle


def sft_samples(sft_checkpoint: str, prompts_task: str, split: str, *, num_prompts: int,
                num_samples: int, temperature: float, top_k: Optional[int], seed: int):
  """(prompts `[P]`, samples `[P][n]`, r* `[P, n]`, finished `[P, n]`): π_sft's samples of the
  first `num_prompts` prompts of `split`, drawn as the sampling stage draws them."""
  r_star = golden.golden_reward_of(prompts_task)
  if r_star is None:
    raise errors.ConfigError(f"task {prompts_task!r} has no golden reward: an oracle reward "
                             "exists only for the embedded synthetic_* tasks")
  prompts = datasets.read_prompts(prompts_task, split, num_prompts)
  policy = inference.load(sft_checkpoint, expect=checkpoints.GENERATIVE_KINDS, role="SFT",
                          batch_size=64)
  gen = policy.generate(prompts, key=jax.random.key(seed), num_decodes=num_samples,
                        temperature=temperature, top_k=top_k)
  return prompts, gen.texts, r_star(prompts, gen.texts), np.asarray(gen.finished)


def sample_gaps(samples, r_star: np.ndarray, finished: np.ndarray) -> np.ndarray:
  """r*(better) − r*(worse) `[M]` of every pair of one prompt's distinct finished samples with
  unequal r* (`reward_quality.sample_pairs`)."""
  b, hi, lo = reward_quality.sample_pairs(samples, r_star, finished)
  r_star = np.asarray(r_star, np.float64)
  return r_star[b, hi] - r_star[b, lo]


def build(path: str, *, task: str, target_accuracy: float = 1.0,
          tau: float = golden.BT_TEMPERATURE, noise_seed: int = 0,
          sft_checkpoint: Optional[str] = None, split: str = "validation",
          num_prompts: int = 256, num_samples: int = 8,
          temperature: float = recipe.PAPER.temperature,
          top_k: Optional[int] = recipe.PAPER.top_k, seed: int = 0) -> Dict[str, Any]:
  """Writes (or reuses, when its settings match) the oracle reward at `path`; returns its
  `model_settings` (tau, noise_std, noise_seed, and the calibration record)."""
  if not 0.5 < float(target_accuracy) <= 1.0:
    raise errors.ConfigError(f"target_accuracy={target_accuracy!r}: need a number in (0.5, 1]")
  if golden.golden_reward_of(task) is None:
    raise errors.ConfigError(f"task={task!r} has no golden reward (only synthetic_* tasks)")
  want = dict(target_accuracy=float(target_accuracy), tau=float(tau), noise_seed=int(noise_seed))
  if target_accuracy < 1.0:
    if not sft_checkpoint:
      raise errors.ConfigError(f"target_accuracy={target_accuracy}: calibrating the noise needs "
                               "--sft_checkpoint (π_sft, whose samples it is calibrated on)")
    want.update(sft_checkpoint=fs.abspath(sft_checkpoint), split=split,
                num_prompts=int(num_prompts), num_samples=int(num_samples),
                temperature=float(temperature), top_k=top_k, seed=int(seed))
  if runs.is_complete(path):
    have = dict(checkpoints.read_manifest(path).model_settings)
    if have.get("calibration", {}).get("setting") == want:
      return have
    raise errors.ConfigError(f"{path} holds an oracle reward of other settings "
                             f"({have.get('calibration', {}).get('setting')} vs {want}): remove "
                             "it or write elsewhere")
  calibration: Dict[str, Any] = {"setting": want}
  noise = 0.0
  if target_accuracy < 1.0:
    _, samples, r_star, finished = sft_samples(
        sft_checkpoint, task, split, num_prompts=num_prompts, num_samples=num_samples,
        temperature=temperature, top_k=top_k, seed=seed)
    gaps = sample_gaps(samples, r_star, finished)
    noise = oracle.noise_for_accuracy(gaps, tau, target_accuracy)
    calibration.update(pairs=int(len(gaps)), mean_abs_gap=float(np.mean(np.abs(gaps))),
                       expected_accuracy=oracle.expected_accuracy(gaps, tau, noise))
  manifest = inference.oracle_manifest(task, tau=tau, noise_std=noise, noise_seed=noise_seed,
                                       calibration=calibration)
  checkpoints.write_manifest(path, manifest)
  runs.mark_complete(path, time.strftime("%Y-%m-%dT%H:%M:%S"))
  return dict(manifest.model_settings)


def measure(path: str, sft_checkpoint: str, *, split: str = "test", num_prompts: int = 256,
            num_samples: int = 8, temperature: float = recipe.PAPER.temperature,
            top_k: Optional[int] = recipe.PAPER.top_k, seed: int = 1) -> Dict[str, float]:
  """The reward's accuracy against r* on pairs of π_sft's samples of `split` (`accuracy`,
  `pairs`): the check of a calibration on prompts it never saw."""
  scorer = inference.load(path, expect=checkpoints.REWARD_KINDS, role="reward model")
  task = scorer.manifest.task
  prompts, samples, r_star, finished = sft_samples(
      sft_checkpoint, task, split, num_prompts=num_prompts, num_samples=num_samples,
      temperature=temperature, top_k=top_k, seed=seed)
  out = reward_quality.sample_pair_accuracy(scorer, prompts, samples, r_star, valid=finished)
  return {"accuracy": out["accuracy_golden"], "pairs": out["pairs_untied"]}


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = errors.ArgumentParser(prog="python -m rso_jax.oracle_reward",
                                 error_prefix="rso_jax.oracle_reward",
                                 description=__doc__.splitlines()[0])
  parser.add_argument("--out", required=True, help="the checkpoint directory to write")
  parser.add_argument("--task", default="synthetic_prompts",
                      help="the embedded task whose r* it scores (its prompts calibrate it)")
  parser.add_argument("--target_accuracy", type=float, default=1.0,
                      help="accuracy on pairs of π_sft's samples; 1 = exact r*/τ")
  parser.add_argument("--tau", type=float, default=golden.BT_TEMPERATURE)
  parser.add_argument("--noise_seed", type=int, default=0)
  parser.add_argument("--sft_checkpoint", default=None)
  parser.add_argument("--num_prompts", type=int, default=256)
  parser.add_argument("--measure_split", default="test",
                      help="after writing, measure the accuracy on this split ('' = skip)")
  args = parser.parse_args(argv)

  def run():
    settings = build(args.out, task=args.task, target_accuracy=args.target_accuracy,
                     tau=args.tau, noise_seed=args.noise_seed,
                     sft_checkpoint=args.sft_checkpoint, num_prompts=args.num_prompts)
    print(f"oracle reward {args.out}: tau {settings['tau']}, noise_std "
          f"{settings['noise_std']:.4f}, calibration {settings['calibration']}", flush=True)
    if args.sft_checkpoint and args.measure_split:
      m = measure(args.out, args.sft_checkpoint, split=args.measure_split,
                  num_prompts=args.num_prompts)
      print(f"accuracy vs r* on pairs of π_sft's {args.measure_split} samples: "
            f"{m['accuracy']:.3f} ({m['pairs']:,.0f} pairs)", flush=True)
  return errors.report("rso_jax.oracle_reward", run)


if __name__ == "__main__":
  raise SystemExit(main())
