"""The stages of one experiment, all configured by the run's own gin files.

One experiment configuration reaches every stage. The run's gin files (an experiment file:
includes plus macros; `gin/stages/pipeline.gin`: the stages) bind each stage's entry point under a
gin scope named after the stage, and `python -m rso_jax.train --gin_file=<experiment>` trains
the policy (the unscoped `train_lib.train`). Its `prerequisites` (`prerequisites()`: the
stages in the order below, less those a variant skips) build whatever artifact is missing,
each in a subprocess that receives the SAME gin files, search paths and overrides as this
process plus `--stage=NAME`, and calls the stage's entry under `gin.config_scope(NAME)` (T5X
scopes `train/` and `infer_eval/` the same way). What each stage reads and writes:

  sft             TrainStage("sft"): sft/train_lib.train
                  SFT_TASK                                 -> SFT_CHECKPOINT
  collect         CollectStage (this process): the simulated annotator (embedded task,
                  COLLECT_PROMPTS > 0) on π_sft's samples
                  SFT_CHECKPOINT                           -> RUN_DIR/collect/pairs.jsonl
  reward          TrainStage("reward"): reward/train_lib.train
                  REWARD_PAIRS (the collected pairs, or D_hf) -> REWARD_CHECKPOINT
  reward_quality  RewardQualityStage (this process): the reward model on π_sft's samples vs r*
                  SFT_CHECKPOINT, REWARD_CHECKPOINT        -> REWARD_CHECKPOINT/reward_quality.json
  sample          SampleStage("sample"): sample/sample.sample_configured
                  SFT_CHECKPOINT, REWARD_CHECKPOINT, PROMPTS_TASK
                                                           -> RUN_DIR/samples/<setting>-<hash>
  (the policy)    train_lib.train: MIXTURE_OR_TASK_NAME (the sampled pairs) -> MODEL_DIR
  EvaluateStage   (this process, after training): MODEL_DIR, SFT_CHECKPOINT,
                  REWARD_CHECKPOINT, EVAL_TASK             -> RUN_DIR/eval_<POLICY_NAME>.json

So a task, a vocabulary, feature lengths, a mesh or a model size set anywhere in the run's
configuration is the one every stage uses; a stage binds only what differs (its model, its
task, its length in steps). A stage's artifact that is complete is reused -- after checking
that it is what the configuration asks for (kind, task, feature lengths; a mismatch is a
ConfigError naming both) -- and an interrupted stage resumes where it stopped.

A stage that fails raises `StageFailed` (the CLI prints one line naming the stage, its exit
status and the stage's own error line, e.g. `<file>:<line>: <reason>`, and exits 3); a stage
stopped by SIGTERM / SIGINT (exit status 143, or killed by the signal) raises
`errors.Preempted` (the CLI exits 143: rerun to continue). SIGTERM / SIGINT sent to this
process while a stage runs are forwarded to the stage, which checkpoints.

Paths go through `rso_jax.fs`: RUN_DIR may be a `gs://` URL.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any, Mapping, Optional, Sequence

import gin
import jax

from rso_jax import checkpoints
from rso_jax import cli
from rso_jax import collect
from rso_jax import errors
from rso_jax import evaluate
from rso_jax import fs
from rso_jax import recipe
from rso_jax import reports
from rso_jax import reward_quality
from rso_jax import runs
from rso_jax import sample
from rso_jax import train as train_lib
from rso_jax.errors import ConfigError
from rso_jax.tasks import embedded
from rso_jax.tasks import generated
from rso_jax.tasks import golden
from rso_jax.tasks import prompt_split
from rso_jax.tasks import synthetic

REWARD_QUALITY = "reward_quality.json"  # RewardQualityStage's record, in the reward model's dir


def is_complete(path: str) -> bool:
  """True for a finished run/stage directory or a bare params checkpoint (user-provided)."""
  if runs.is_complete(path):
    return True
  bare = fs.isdir(fs.join(path, "params"))
  return bare and not fs.isdir(fs.join(path, checkpoints.CHECKPOINT_SUBDIR))


# ----------------------------------------------------------------------------- gin helpers
def run_path(run_dir: str, name: str) -> str:
  """`run_dir/name`: where a stage of the run keeps its artifact (gin: SFT_CHECKPOINT, ...)."""
  if not run_dir:
    raise ValueError("RUN_DIR is empty: pass --gin.RUN_DIR=\\\"path\\\"")
  return fs.join(fs.abspath(run_dir), name)


STAGE_ORDER = ("sft", "collect", "reward", "judge", "reward_quality", "sample")


def judge_checkpoint(run_dir: str, fraction: float, name: str = "judge") -> Optional[str]:
  """`run_dir/name` where the run trains its own judge (JUDGE_PROMPT_FRACTION > 0), else None
  (gin: the default of JUDGE_CHECKPOINT)."""
  return run_path(run_dir, name) if prompt_split.check_fraction(fraction) else None


def prerequisites(*, sft: Any = None, collect: Any = None, reward: Any = None,
                  judge: Any = None, reward_quality: Any = None, sample: Any = None,
                  skip: Sequence[str] = ()) -> list:
  """The stages that build what the policy's training reads, in `STAGE_ORDER` (each one's
  inputs come from those before it or from the configuration), less the `skip`ped ones.

  gin builds each stage (`@sft/pipeline.TrainStage()`, ...); a variant skips stages by name
  (SKIP_STAGES: `direct` trains on D_hf and samples nothing; iterative RSO's round 2 reuses
  round 1's π_sft).
  """
  stages = dict(sft=sft, collect=collect, reward=reward, judge=judge,
                reward_quality=reward_quality, sample=sample)
  unknown = [n for n in skip if n not in stages]
  if unknown:
    raise ConfigError(f"SKIP_STAGES={tuple(skip)!r}: no stage {unknown[0]!r} (the stages: "
                      f"{', '.join(STAGE_ORDER)})")
  return [stages[n] for n in STAGE_ORDER if stages[n] is not None and n not in skip]


def stage_bindings(entry: Any, scope: str) -> dict:
  """The arguments gin passes to `entry` when called under `scope` (references evaluated)."""
  with gin.config_scope(scope):
    return gin.get_bindings(entry)


def _lengths(v: Optional[Mapping[str, Any]]) -> Optional[dict]:
  return None if v is None else {k: int(x) for k, x in dict(v).items()}


def check_reusable(name: str, path: str, model: Any, task: str,
                   feature_lengths: Mapping[str, int], own: bool = True) -> None:
  """Refuses to reuse a finished checkpoint that is not what stage `name` is configured to make.

  Compares the checkpoint's manifest with the stage's configuration: its kind (the model's
  `manifest_kind`) and, for the run's own artifact (`own`: under RUN_DIR, trained with a task
  recorded), the task, the feature lengths and the model's settings (`manifest_settings`, e.g.
  a BT model's architecture) -- a leftover of another configuration. A
  checkpoint the user points the stage at (outside RUN_DIR, or converted) is checked for its
  kind only; what it was trained on is printed.
  """
  try:
    manifest = checkpoints.read_manifest(path)
  except errors.CheckpointError as e:
    raise ConfigError(f"stage {name!r}: {e}") from None
  want = getattr(model, "manifest_kind", None)
  problems = []
  # A reward model the user points the stage at may be of any reward kind (e.g. an oracle).
  any_reward = not own and want in checkpoints.REWARD_KINDS and (
      manifest.kind in checkpoints.REWARD_KINDS)
  if want and manifest.kind != want and not any_reward:
    problems.append(f"it is {checkpoints.KIND_NAMES[manifest.kind]} (kind={manifest.kind!r}) "
                    f"but the stage trains {checkpoints.KIND_NAMES[want]} (kind={want!r})")
  if not own:
    if manifest.task is not None and (manifest.task != task or _lengths(
        manifest.feature_lengths) != _lengths(feature_lengths)):
      print(f"[{name}] note: {path} was trained on task {manifest.task!r} at "
            f"{_lengths(manifest.feature_lengths)}; this run's stage would train on {task!r} "
            f"at {_lengths(feature_lengths)}", flush=True)
  elif manifest.task is not None and manifest.task != task:
    problems.append(f"it was trained on task {manifest.task!r} but the stage's task is "
                    f"{task!r}")
  settings = model.manifest_settings() if own and hasattr(model, "manifest_settings") else {}
  have = dict(manifest.model_settings or {})
  differ = {k: (have[k], v) for k, v in settings.items() if k in have and have[k] != v}
  if differ:  # e.g. another BT_ARCHITECTURE or pooling (a setting the checkpoint lacks: older)
    problems.append("its model settings differ (checkpoint vs stage): " + ", ".join(
        f"{k}={a!r} vs {b!r}" for k, (a, b) in sorted(differ.items())))
  if own and manifest.task is not None and _lengths(manifest.feature_lengths) != _lengths(
      feature_lengths):
    problems.append(f"its feature lengths are {_lengths(manifest.feature_lengths)} but the "
                    f"stage's are {_lengths(feature_lengths)}")
  if problems:
    raise ConfigError(f"stage {name!r}: the finished checkpoint {path!r} does not match this "
                      f"run's configuration: {'; '.join(problems)}. Remove it, or point the "
                      "stage elsewhere (e.g. --gin.RUN_DIR, --gin.SFT_CHECKPOINT, "
                      "--gin.REWARD_CHECKPOINT)")


# ----------------------------------------------------------------------------- stages
@dataclasses.dataclass
class TrainStage:
  """Trains the checkpoint of `name/train_lib.train` unless its `model_dir` is complete.

  `run_dir`: the run's directory; a finished checkpoint under it is the run's own artifact and
  must match the stage's task and lengths to be reused (`check_reusable`).
  """
  name: str
  run_dir: Optional[str] = None

  def __call__(self) -> str:
    args = stage_bindings(train_lib.train, self.name)
    model_dir = args.get("model_dir")
    if not model_dir:
      raise ConfigError(f"stage {self.name!r}: bind {self.name}/train_lib.train.model_dir")
    if is_complete(model_dir):
      root = fs.abspath(self.run_dir) if self.run_dir else None
      own = root is None or fs.abspath(model_dir).startswith(root.rstrip("/") + "/")
      check_reusable(self.name, model_dir, args.get("model"), args.get("mixture_or_task_name"),
                     args.get("task_feature_lengths"), own=own)
      print(f"[{self.name}] reusing {model_dir}", flush=True)
      return model_dir
    cli.run_stage(self.name, "rso_jax.train")
    return model_dir


@dataclasses.dataclass
class JudgeStage:
  """The judge of the evaluation: a reward model the policy never optimized.

  `checkpoint` None: no judge. A finished checkpoint outside `run_dir` (JUDGE_CHECKPOINT set
  to any reward model, pairwise ρ or Bradley-Terry, of any size): used as it is. Otherwise the
  `judge/` training stage trains one (the experiment's reward model) on the judge's side of
  the held-out prompt split (`tasks.prompt_split`: the prompts no other stage reads).
  """
  checkpoint: Optional[str]
  run_dir: Optional[str] = None
  name: str = "judge"

  def __call__(self) -> Optional[str]:
    if not self.checkpoint:
      return None
    root = fs.abspath(self.run_dir).rstrip("/") + "/" if self.run_dir else None
    if is_complete(self.checkpoint) and not (root and fs.abspath(self.checkpoint).startswith(
        root)):
      kind = _manifest_of(self.name, self.checkpoint).kind
      if kind not in checkpoints.REWARD_KINDS:
        raise ConfigError(f"JUDGE_CHECKPOINT={self.checkpoint!r} is "
                          f"{checkpoints.KIND_NAMES[kind]} (kind={kind!r}), not a reward model")
      print(f"[{self.name}] using {self.checkpoint} ({checkpoints.KIND_NAMES[kind]})",
            flush=True)
      return self.checkpoint
    return TrainStage(self.name, self.run_dir)()


def _manifest_of(stage: str, path: str) -> checkpoints.Manifest:
  try:
    return checkpoints.read_manifest(path)
  except errors.CheckpointError as e:
    raise ConfigError(f"stage {stage!r}: {e}") from None


def _hash_value(v: Any) -> Any:
  if isinstance(v, str) and ("/" in v or v.startswith(".")):
    return fs.abspath(v)  # a relative and an absolute path to the same checkpoint agree
  return v


@dataclasses.dataclass
class CollectStage:
  """On-policy preference pairs for the reward model: the policy's samples, rated.

  As OpenAI collected the TL;DR comparisons (summaries of SFT-like policies shown to raters):
  for each of the first `num_prompts` prompts of the embedded environment's `split`, two
  samples of `policy_checkpoint` drawn as the sampling stage draws them (its temperature and
  top-k), labeled by the environment's simulated rater (a Bradley-Terry draw,
  P(y1 ≻ y2) = σ((r*(y1) − r*(y2)) / τ), τ = its `bt_temperature`). Pairs with two equal or
  an empty response are dropped and counted. Written atomically as JSONL `{prompt, chosen,
  rejected}` (the `jsonl` preference-file format) to `output_path`, then `stats.json` beside
  it (the setting and the counts); a finished collection is reused, one made with another
  setting is refused (the reward model trained on it would no longer match).

  `num_prompts` 0 turns the stage off. Only the embedded task has a rater: with another
  `pairs_task` the stage is a ConfigError (label real pairs and set REWARD_PAIRS to them).
  """
  policy_checkpoint: str
  output_path: str
  pairs_task: str
  num_prompts: int = 0
  split: str = "train"
  seed: int = 0
  name: str = "collect"

  def __call__(self) -> Optional[dict]:
    if not errors.is_int(self.num_prompts) or self.num_prompts < 0:
      raise ConfigError(f"stage {self.name!r}: COLLECT_PROMPTS={self.num_prompts!r} must be an "
                        "int >= 0")
    if not self.num_prompts:
      return None
    r_star = golden.golden_reward_of(self.pairs_task)
    if r_star is None:
      raise ConfigError(f"stage {self.name!r}: {self.pairs_task!r} has no simulated rater to "
                        f"label on-policy pairs (COLLECT_PROMPTS={self.num_prompts}); set "
                        "COLLECT_PROMPTS=0 and set REWARD_PAIRS to pairs labeled by people")
    env = embedded.registered_config()
    draw = stage_bindings(sample.sample_configured, "sample")
    setting = dict(policy_checkpoint=fs.abspath(self.policy_checkpoint), split=self.split,
                   num_prompts=self.num_prompts, seed=self.seed,
                   temperature=draw.get("temperature", recipe.PAPER.temperature),
                   top_k=draw.get("top_k", recipe.PAPER.top_k),
                   bt_temperature=env.bt_temperature, environment_seed=env.seed)
    stats_path = fs.join(fs.dirname(self.output_path), "stats.json")
    if fs.exists(stats_path) and fs.exists(self.output_path):
      stats = json.loads(fs.read_text(stats_path))
      if stats.get("setting") != setting:
        raise ConfigError(
            f"stage {self.name!r}: {self.output_path} was collected with {stats.get('setting')}, "
            f"not {setting}; delete it (and the reward model trained on it) to collect again")
      print(f"[{self.name}] reusing {self.output_path}", flush=True)
      return stats
    prompts = list(synthetic.build_environment(env).prompts[self.split])
    if self.num_prompts > len(prompts):
      raise ConfigError(f"stage {self.name!r}: COLLECT_PROMPTS={self.num_prompts} is more than "
                        f"the {len(prompts)} {self.split} prompts of the environment")
    prompts = prompts[:self.num_prompts]
    lines, counts = collect.collect_pairs(
        self.policy_checkpoint, prompts, golden=r_star, bt_temperature=env.bt_temperature,
        seed=self.seed, temperature=setting["temperature"], top_k=setting["top_k"])
    stats = dict(setting=setting, **counts)
    equal, agree = counts["identical"], counts["label_agreement_with_r_star"]
    if jax.process_index() == 0:
      fs.makedirs(fs.dirname(self.output_path))
      fs.atomic_write_text(self.output_path, "".join(line + "\n" for line in lines))
      fs.atomic_write_text(stats_path, json.dumps(stats, indent=2, sort_keys=True) + "\n")
    print(f"[{self.name}] {stats['pairs']:,} pairs of the policy's samples from "
          f"{len(prompts):,} {self.split} prompts ({equal:,} with two equal samples, "
          f"{stats['empty']:,} with an empty one, dropped); labels agree with r* on "
          f"{agree:.3f} of the untied pairs; mean r* {stats['golden_mean']:.3f}; "
          f"{self.output_path}", flush=True)
    return stats


# The sampling recipe's fields that name a samples directory even when left at the defaults.
_HASHED_RECIPE_FIELDS = ("num_candidates", "num_samples", "temperature", "top_k", "beta")


@dataclasses.dataclass
class SampleStage:
  """Builds (or reuses) the labeled pair task and registers it as `task_name`.

  Samples live in `run_dir/samples/<data_setting>-<hash>`: the hash covers every argument of
  the stage's `sample.sample_configured` (policy, reward model, prompts task, N, k, β,
  temperature, lengths, ...), so an ablation override gets its own directory and never mixes
  shards with another configuration.
  """
  run_dir: str
  task_name: str
  name: str = "sample"

  def _args(self) -> dict:
    args = stage_bindings(sample.sample_configured, self.name)
    args.pop("output_dir", None)
    # The recipe's values count whether a gin file binds them or the stage takes the defaults;
    # the default logical-axis rules shard alike and do not.
    for k in _HASHED_RECIPE_FIELDS:
      args.setdefault(k, getattr(recipe.PAPER, k))
    if args.get("logical_rules") is None:
      args.pop("logical_rules", None)
    return args

  def output_dir(self) -> str:
    args = self._args()
    key = json.dumps({k: _hash_value(v) for k, v in args.items()}, sort_keys=True, default=repr)
    digest = hashlib.sha256(key.encode()).hexdigest()[:8]
    setting = args.get("data_setting", "samples")
    return fs.join(fs.abspath(self.run_dir), "samples", f"{setting}-{digest}")

  def __call__(self) -> str:
    out = self.output_dir()
    if runs.is_complete(out):
      print(f"[{self.name}] reusing {out}", flush=True)
    else:
      cli.run_stage(self.name, "rso_jax.sample",
           [f"{self.name}/sample.sample_configured.output_dir = {json.dumps(out)}"])
    generated.register_pair_task(self.task_name, out)
    stats = json.loads(fs.read_text(fs.join(out, "stats.json")))
    golden = (f", golden reward all/selected {stats['golden/all_mean']:.3f}/"
              f"{stats['golden/selected_mean']:.3f}" if "golden/all_mean" in stats else "")
    made = (f"{stats['responses']} selected responses" if stats.get("responses")
            else f"{stats['pairs']} pairs")
    print(f"[{self.name}] {made} from {stats['prompts']} prompts "
          f"({stats.get('prompts_truncated', 0)} cut to the prompt length); acceptance rate "
          f"{stats['rejection/acceptance_rate']:.3f}{golden}; task {self.task_name!r}",
          flush=True)
    return out


@dataclasses.dataclass
class RewardQualityStage:
  """The reward model where RSO uses it: its ranking of π_sft's own samples against r*.

  After the reward stage, on the embedded task (the only one with a golden reward): per held-out
  prompt (`split` of the synthetic environment, the first `num_prompts`), `num_samples`
  samples of π_sft drawn as the sampling stage draws them (its temperature and top-k), scored by
  the reward model; accuracy against r* on every pair of one prompt's samples with unequal r*,
  and the rank correlations (`reward_quality.evaluate_reward_model`). Printed, and kept with the
  reward model as `REWARD_CHECKPOINT/reward_quality.json` (reused on a rerun). Other tasks: a
  one-line note.
  """
  sft_checkpoint: str
  reward_checkpoint: str
  pairs_task: str
  num_prompts: Optional[int] = 256
  num_samples: int = 8
  split: str = "validation"
  seed: int = 0
  name: str = "reward"
  proposal: str = "π_sft"  # what `sft_checkpoint` is, in the printed line

  def __call__(self) -> Optional[dict]:
    path = fs.join(self.reward_checkpoint, REWARD_QUALITY)
    if golden.golden_reward_of(self.pairs_task) is None:
      print(f"[{self.name}] {self.pairs_task!r} has no golden reward: the reward model's "
            f"accuracy on {self.proposal}'s samples is not measured", flush=True)
      return None
    draw = stage_bindings(sample.sample_configured, "sample")
    setting = dict(sft_checkpoint=fs.abspath(self.sft_checkpoint), split=self.split,
                   num_prompts=self.num_prompts, num_samples=self.num_samples, seed=self.seed,
                   temperature=draw.get("temperature", recipe.PAPER.temperature),
                   top_k=draw.get("top_k", recipe.PAPER.top_k))
    result = json.loads(fs.read_text(path)) if fs.exists(path) else None
    if result is None or result.get("setting") != setting:
      print(f"[{self.name}] measuring the reward model on {self.proposal}'s samples "
            f"({self.num_samples} per {self.split} prompt) against r*", flush=True)
      metrics = reward_quality.evaluate_reward_model(
          self.reward_checkpoint, self.split, policy_checkpoint=self.sft_checkpoint,
          num_policy_samples=self.num_samples, temperature=setting["temperature"],
          top_k=setting["top_k"], num_prompts=self.num_prompts, seed=self.seed)
      result = dict(setting=setting, metrics=metrics)
      if jax.process_index() == 0:
        fs.atomic_write_text(path, json.dumps(result, indent=2, sort_keys=True) + "\n")
    m = result["metrics"]
    print(f"[{self.name}] on {self.proposal}'s samples ({self.num_samples} per {self.split} "
          f"prompt of {self.sft_checkpoint}, "
          f"T {setting['temperature']}, top-k {setting['top_k']}): accuracy vs r* "
          f"{m['sft_samples/accuracy_golden']:.3f} on {m['sft_samples/pairs_untied']:,.0f} pairs, "
          f"Spearman within prompt {m['sft_samples/within_prompt_spearman']:.3f} (pooled "
          f"{m['sft_samples/spearman_r_star']:.3f}); on held-out D_hf: accuracy vs r* "
          f"{m['accuracy_golden']:.3f}; {path}", flush=True)
    return result


SELECTION_METRIC = "vs_sft_targets/proxy"  # the paper's checkpoint choice (greedy decodes)


def select_checkpoint(by_step: Mapping[int, Mapping[str, Any]],
                      metric: str = SELECTION_METRIC, decoding: str = "greedy") -> Optional[int]:
  """The step whose evaluation has the highest `results[decoding][metric]` (the earliest on a
  tie: the one nearer π_sft); None when no evaluation has the metric (no proxy)."""
  scored = [(float(r["results"][decoding][metric]), -int(step)) for step, r in by_step.items()
            if r.get("results", {}).get(decoding, {}).get(metric) is not None]
  return -max(scored)[1] if scored else None


@dataclasses.dataclass
class EvaluateStage:
  """After training: win rates and KL of the policy against π_sft; prints the table.

  With a judge (`judge_checkpoint`, gin: JUDGE_CHECKPOINT): its win rates beside the proxy's,
  its length-controlled rate, and its accuracy on its held-out comparisons (`judge_pairs`'
  validation split). A judge this run trained (its manifest records the prompt split) is
  checked first: the prompts of its training pairs are read and compared with those of the
  proxy's training pairs, the sampled prompts and the policy's pairs (`policy_task`); one
  shared prompt is a ConfigError. The record (`judge/split`) goes into the report.

  `every_checkpoint` (gin: EVAL_EVERY_CHECKPOINT): also evaluates every other checkpoint the
  training kept, the same way, and selects one as the paper does -- the best proxy win rate
  against the SFT targets (greedy) on this split. Kept beside the last-step report as
  `eval_<name>_checkpoints.json`: `steps` (each step's report, without its examples),
  `selected_step`, `metric`; written after each step, so a rerun evaluates only what is missing.
  The last step's report is the main one (not evaluated twice). The golden win rates, KL and
  r* of every step trace the policy's path in (KL, r*) over training: the frontier's points.
  """
  sft_checkpoint: str
  reward_checkpoint: Optional[str]
  output_dir: str
  name: str
  prompts_task: str
  num_prompts: Optional[int] = 256
  split: str = "validation"
  keep_context: str = "start"
  mesh_shape: Sequence[int] = (-1, 1, 1)
  logical_rules: Optional[Sequence[Any]] = None
  every_checkpoint: bool = False
  judge_checkpoint: Optional[str] = None
  judge_pairs: Optional[str] = None
  policy_task: Optional[str] = None
  skip_stages: Sequence[str] = ()

  def _evaluate(self, policy_path: str, name: Optional[str], extra: Optional[dict] = None
                ) -> dict:
    return evaluate.evaluate_policy(
        policy_path, self.sft_checkpoint, reward_path=self.reward_checkpoint,
        judge_path=self.judge_checkpoint,
        # The judge's held-out accuracy: once, in the main report (not per checkpoint).
        judge_heldout=(self.judge_pairs, "validation") if self.judge_pairs and name else None,
        prompts_task=self.prompts_task, split=self.split, keep_context=self.keep_context,
        num_prompts=self.num_prompts, output_dir=name and self.output_dir, name=name,
        mesh_shape=tuple(self.mesh_shape), logical_rules=self.logical_rules, extra=extra)

  def check_judge_split(self) -> Optional[dict]:
    """The judge's prompts against every other stage's (see the class doc); None without a
    judge; a note for a judge from elsewhere (its prompts cannot be checked here)."""
    if not self.judge_checkpoint:
      return None
    judge = _manifest_of("evaluate", self.judge_checkpoint)
    if not judge.data_split:
      return {"note": f"the judge {self.judge_checkpoint} was not trained by this run on a "
                      "held-out prompt split: its prompts are not checked"}
    proxy = _manifest_of("evaluate", self.reward_checkpoint) if self.reward_checkpoint else None
    if proxy is not None and proxy.data_split and any(
        proxy.data_split.get(k) != judge.data_split.get(k) for k in ("fraction", "salt")):
      raise ConfigError(f"the judge {self.judge_checkpoint} and the proxy "
                        f"{self.reward_checkpoint} were trained on different prompt splits "
                        f"({judge.data_split} vs {proxy.data_split})")
    others = {}
    reward_task = stage_bindings(train_lib.train, "reward").get("mixture_or_task_name")
    if reward_task:
      others["the proxy's training pairs"] = (reward_task, "train", None)
    if "sample" not in self.skip_stages:
      draw = stage_bindings(sample.sample_configured, "sample")
      others["the sampled prompts"] = (draw["prompts_task"], draw.get("split", "train"),
                                       draw.get("max_prompts"))
    if self.policy_task:
      others["the policy's pairs"] = (self.policy_task, "train", None)
    judge_task = stage_bindings(train_lib.train, "judge").get("mixture_or_task_name")
    record = prompt_split.check_disjoint((judge_task or judge.task, ("train", "validation")),
                                         others)
    record["split"] = dict(judge.data_split)
    print(f"[evaluate] the judge's {record['judge_prompts']:,} prompts are in none of: "
          + "; ".join(f"{what} ({v['prompts']:,})" for what, v in record.items()
                      if isinstance(v, dict) and "prompts" in v), flush=True)
    return record

  def __call__(self, model_dir: str) -> dict:
    split_record = self.check_judge_split()
    result = self._evaluate(model_dir, self.name,
                            None if split_record is None else {"judge/split": split_record})
    print(reports.format_table(result), flush=True)
    print(f"report: {fs.join(self.output_dir, f'eval_{self.name}.json')}; examples: "
          f"{fs.join(self.output_dir, f'eval_{self.name}_examples.jsonl')}; plot: "
          f"{fs.join(self.output_dir, 'eval_plot.png')}", flush=True)
    if self.every_checkpoint:
      self.evaluate_checkpoints(model_dir, result)
    return result

  def evaluate_checkpoints(self, model_dir: str, last: Mapping[str, Any]) -> dict:
    """Every kept checkpoint's report and the selected step (see the class doc)."""
    path = fs.join(self.output_dir, f"eval_{self.name}_checkpoints.json")
    steps = checkpoints.saved_steps(model_dir)
    if not steps:
      raise FileNotFoundError(f"no saved checkpoint steps in {model_dir!r}")
    at = lambda step: fs.abspath(checkpoints.step_path(model_dir, step))
    lean = lambda r, step: dict({k: v for k, v in r.items() if k != "examples"},
                                policy_path=at(step))
    old = json.loads(fs.read_text(path)) if fs.exists(path) else {}
    done = {int(k): v for k, v in old.get("steps", {}).items()
            if v.get("policy_path") == at(int(k))}
    done[steps[-1]] = lean(last, steps[-1])
    record = {"metric": f"{SELECTION_METRIC} (greedy, {self.split})", "steps": {}}
    for step in steps:
      if step not in done:
        print(f"[evaluate] checkpoint {step} of {model_dir}", flush=True)
        done[step] = lean(self._evaluate(at(step), None), step)
      record["steps"] = {str(s): done[s] for s in sorted(done) if s in steps}
      record["selected_step"] = select_checkpoint({s: done[s] for s in steps if s in done})
      if jax.process_index() == 0:
        fs.atomic_write_text(path, json.dumps(record, indent=1, sort_keys=True) + "\n")
    sel = record["selected_step"]
    if sel is None:
      print(f"[evaluate] no proxy win rate to select a checkpoint by; {path}", flush=True)
    else:
      g = record["steps"][str(sel)]["results"]["greedy"]
      golden = g.get("vs_sft_targets/golden")
      print(f"[evaluate] selected checkpoint: step {sel} of {steps} (proxy win rate vs the SFT "
            f"targets {g[SELECTION_METRIC]:.3f}"
            + ("" if golden is None else f", golden {golden:.3f}") + f"); {path}", flush=True)
    return record
