"""seqio registrations of the embedded synthetic environment (see `synthetic.py`).

Tasks (splits train / validation / test; validation and test prompts are held out):
  synthetic_sft          inputs -> targets: SFT demonstrations.
  synthetic_prompts      inputs only (+ raw "sft_target_pretokenized" for win rate vs SFT target).
  synthetic_dhf          inputs, chosen, rejected: D_hf (responses of the `dhf_policies`),
                         BT-labeled on r* (+ float32 "chosen_golden_reward",
                         "rejected_golden_reward").
  synthetic_rm_pairwise  "[CONTEXT] x [RESPONSE A] y1 [RESPONSE B] y2" -> "A"/"B" over D_hf.
Feature lengths: {"inputs": 32, "targets": 32} for the first three, {"inputs": 128,
"targets": 8} for synthetic_rm_pairwise (byte vocabulary; no example is truncated at these).
"""
from __future__ import annotations

from typing import Mapping

import seqio

from rso_jax.tasks import golden
from rso_jax.tasks import sources
from rso_jax.tasks import synthetic
from rso_jax.tasks import vocab as vocab_lib

SYNTHETIC_TASKS = ("synthetic_sft", "synthetic_prompts", "synthetic_dhf", "synthetic_rm_pairwise")
POLICY_FEATURE_LENGTHS = {"inputs": 32, "targets": 32}
RM_FEATURE_LENGTHS = {"inputs": 128, "targets": 8}
_CONFIGS: dict[str, synthetic.EnvConfig] = {}  # prefix -> the environment registered under it
_SETTINGS: dict[str, tuple] = {}  # prefix -> every argument of its last registration


def registered_settings(prefix: str = "synthetic") -> tuple | None:
  """What the `<prefix>_*` tasks were last registered with (None: never), comparable by ==."""
  return _SETTINGS.get(prefix)


def registered_config(prefix: str = "synthetic") -> synthetic.EnvConfig:
  """The `EnvConfig` whose data the `<prefix>_*` tasks serve (the last registration's)."""
  if prefix not in _CONFIGS:
    raise ValueError(f"no synthetic tasks are registered under the prefix {prefix!r} "
                     f"(registered: {sorted(_CONFIGS)})")
  return _CONFIGS[prefix]


def register_synthetic_tasks(
    seed: int = 0,
    num_train_prompts: int = 4000,
    num_validation_prompts: int = 256,
    num_test_prompts: int = 256,
    pairs_per_prompt: int = 2,
    bt_temperature: float = synthetic.BT_TEMPERATURE,
    dhf_policies: tuple[str, ...] = synthetic.DHF_POLICIES,
    spm_path: str | None = None,
    truncate: str = "count",
    flip_seed: int | None = None,
    prefix: str = "synthetic",
    min_keywords: int = synthetic.MIN_KEYWORDS,
    max_keywords: int = synthetic.MAX_KEYWORDS,
    max_response_words: int = synthetic.MAX_RESPONSE_WORDS,
    sft_keep_prob: float = synthetic.SFT_KEEP_PROB,
    ordered: bool = True,
) -> Mapping[str, seqio.Task]:
  """(Re-)registers the four synthetic tasks; idempotent, data generated lazily on first read.

  Args:
    seed: environment seed (prompts, demos, behaviour responses, rater draws).
    num_train_prompts, num_validation_prompts, num_test_prompts: prompts per split.
    pairs_per_prompt: D_hf pairs per prompt.
    bt_temperature: TAU of the simulated raters, P(y1 > y2) = sigmoid((r1 - r2) / TAU).
    dhf_policies: who wrote D_hf's responses ("behaviour", "sft"; see `synthetic`): an
      experiment's gin sets it through `tasks.experiment_tasks` (gin/experiments/embedded.gin).
    spm_path: SentencePiece model instead of the byte vocabulary (see `vocab.get_vocabulary`).
    truncate: "count" or "error" (see `preprocessors.append_eos_and_check_length`).
    flip_seed: seed of the A/B flips of `<prefix>_rm_pairwise` (default: `seed`).
    prefix: task name prefix, so several environments can be registered side by side.
    min_keywords, max_keywords, max_response_words, sft_keep_prob: the task's shape
      (`synthetic.EnvConfig`; gin/experiments/testbed.gin sets a larger one).
    ordered: whether r* counts the keywords in order (`synthetic.golden_reward`).

  Returns:
    {task name: seqio.Task}.
  """
  config = synthetic.EnvConfig(
      seed=seed, num_train_prompts=num_train_prompts,
      num_validation_prompts=num_validation_prompts, num_test_prompts=num_test_prompts,
      pairs_per_prompt=pairs_per_prompt, bt_temperature=bt_temperature,
      dhf_policies=tuple(dhf_policies), min_keywords=min_keywords, max_keywords=max_keywords,
      max_response_words=max_response_words, sft_keep_prob=sft_keep_prob, ordered=ordered)
  golden.register_reward_order(prefix, ordered)
  _CONFIGS[prefix] = config
  _SETTINGS[prefix] = (config, spm_path, truncate, flip_seed)
  vocabulary = vocab_lib.get_vocabulary(spm_path)
  splits = synthetic.SPLITS
  n_prompts = {s: config.num_prompts(s) for s in splits}
  n_pairs = {s: n * pairs_per_prompt for s, n in n_prompts.items()}

  def sft_columns(split):
    data = synthetic.build_environment(config)
    return {"inputs": data.prompts[split], "targets": data.sft[split]}

  def prompt_columns(split):
    data = synthetic.build_environment(config)
    return {"inputs": data.prompts[split], "sft_target_pretokenized": data.sft[split]}

  def pair_columns(split):
    pairs = synthetic.build_environment(config).dhf[split]
    return {
        "inputs": [p.prompt for p in pairs],
        "chosen": [p.chosen for p in pairs],
        "rejected": [p.rejected for p in pairs],
        "chosen_golden_reward": [p.chosen_reward for p in pairs],
        "rejected_golden_reward": [p.rejected_reward for p in pairs],
    }

  specs = {
      f"{prefix}_sft": ("sft", sft_columns, n_prompts),
      f"{prefix}_prompts": ("prompts", prompt_columns, n_prompts),
      f"{prefix}_dhf": ("pairs", pair_columns, n_pairs),
      f"{prefix}_rm_pairwise": ("rm_pairwise", pair_columns, n_pairs),
  }
  tasks = {}
  for name, (kind, columns_fn, sizes) in specs.items():
    source = sources.InMemoryDataSource(columns_fn, splits, num_input_examples=sizes)
    tasks[name] = sources.add_task(
        name, source, kind, vocabulary, truncate=truncate,
        flip_seed=seed if flip_seed is None else flip_seed)
  return tasks
