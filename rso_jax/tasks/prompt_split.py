"""A held-out part of an experiment's prompts for the judge: a split of tasks by a hash of the prompt.

The judge of an evaluation must be a reward model the policy never optimized, trained on
comparisons whose prompts the proxy reward model, the sampling stage and the policy's pairs
never saw. `split_task(task, fraction, side)` registers the part of `task` on one `side`:

  "judge"   the prompts x with  u(x) <  fraction   (the judge's comparisons)
  "rest"    the prompts x with  u(x) >= fraction   (everything else: the proxy, the sampling)

with u(x) = the SHA-256 of "judge\\n" + x read as a number in [0, 1) (`judge_fraction`; the
salt makes it independent of the `validation_fraction` carve-out, which hashes x alone). Every
split of the task (train, validation) is split alike, and every task split with the same
fraction agrees on every prompt. Fraction 0 is no split: `split_task` returns `task` itself.

`split_spec(task)` returns what a derived task is ({source, side, fraction, salt, by}), for
the manifest of a checkpoint trained on it. `check_disjoint` reads the prompts of the judge's
task and of the other sets and fails on any prompt they share: the check reads the data, so
it fails when something bypassed the split.
"""
from __future__ import annotations

from typing import Any, Dict, Iterable, Mapping, Optional, Sequence, Tuple

import numpy as np
import seqio
import tensorflow as tf

from rso_jax.errors import ConfigError
from rso_jax.tasks import preference_reader
from rso_jax.tasks import preprocessors as prep
from rso_jax.tasks import sources

SIDES = ("judge", "rest")
SALT = "judge"
_SPECS: Dict[str, Dict[str, Any]] = {}


def judge_fraction(prompt: str, salt: str = SALT) -> float:
  """u(x) in [0, 1): the SHA-256 of `salt + "\\n" + prompt`, read as a fraction."""
  return preference_reader.prompt_fraction(f"{salt}\n{prompt}")


def check_fraction(fraction: Any) -> float:
  """The held-out fraction as a float in [0, 1); ConfigError naming the value otherwise."""
  if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not (
      0.0 <= float(fraction) < 1.0):
    raise ConfigError(f"JUDGE_PROMPT_FRACTION={fraction!r}: need a number in [0, 1) (the "
                      "fraction of prompts held out for the judge; 0 = none)")
  return float(fraction)


def _is_format(p: Any) -> bool:
  return getattr(p, "func", None) is prep.format_pairwise_ranking


def _is_tokenize(p: Any) -> bool:
  return p is seqio.preprocessors.tokenize or getattr(p, "__name__", None) == "tokenize"


def _text_steps(task: seqio.Task) -> list:
  """The preprocessors that run on the text before it is formatted or tokenized."""
  steps = []
  for p in task.preprocessors:
    if _is_tokenize(p) or _is_format(p):
      break
    steps.append(p)
  return steps


def _kind(task: seqio.Task) -> str:
  if any(_is_format(p) for p in task.preprocessors):
    return "rm_pairwise"
  features = tuple(task.output_features)
  for kind in ("pairs", "prompts"):
    if set(features) == set(sources.TASK_KINDS[kind]):
      return kind
  raise ConfigError(f"task {task.name!r} (features {sorted(features)}) cannot be split by "
                    "prompt: only preference-pairs, reward-ranking and prompts tasks can")


def _filter(fraction: float, side: str, salt: str):
  """A pre-tokenization preprocessor keeping the examples whose `inputs` are on `side`."""
  def on_side(text: np.ndarray) -> np.ndarray:
    u = judge_fraction(text.decode("utf-8", "surrogateescape"), salt)
    return np.bool_((u < fraction) == (side == "judge"))

  def keep_side(dataset: tf.data.Dataset) -> tf.data.Dataset:
    return dataset.filter(
        lambda ex: tf.reshape(tf.numpy_function(on_side, [ex["inputs"]], tf.bool), []))
  keep_side.__name__ = f"keep_{side}_prompts"
  return keep_side


def split_task(task: str, fraction: float = 0.0, side: str = "rest", *, salt: str = SALT
               ) -> str:
  """Registers (idempotently) and returns the name of `task`'s prompts on `side` (module doc).

  Args:
    task: a registered preference-pairs, reward-ranking (`ranking_task`) or prompts task; the
      prompt is its `inputs` text before formatting and tokenization.
    fraction: the fraction of prompts held out for the judge, in [0, 1); 0 returns `task`.
    side: "judge" or "rest".
    salt: the hash's salt (one per held-out purpose).

  Returns:
    `<task>.judge<fraction>` or `<task>.rest<fraction>` (or `task` for fraction 0).
  """
  fraction = check_fraction(fraction)
  if side not in SIDES:
    raise ConfigError(f"split side={side!r}: use one of {SIDES}")
  if not fraction:
    return task
  source = seqio.get_mixture_or_task(task)
  if not isinstance(source, seqio.Task):
    raise ConfigError(f"{task!r} is a mixture: split its tasks")
  kind = _kind(source)
  options = {}
  for p in source.preprocessors:
    keywords = getattr(p, "keywords", None) or {}
    if _is_format(p):
      options.update(flip_seed=keywords.get("seed", 0),
                     rm_response_label=keywords.get("response_label", "RESPONSE"))
    elif "truncate" in keywords:
      options.update({k: keywords[k] for k in ("truncate", "keep_context") if k in keywords})
  name = f"{task}.{side}{fraction:g}"
  vocabulary = source.output_features["inputs"].vocabulary
  sources.add_task(name, source.source, kind, vocabulary,
                   pre_tokenize=_text_steps(source) + [_filter(fraction, side, salt)],
                   **options)
  _SPECS[name] = dict(source=task, side=side, fraction=fraction, salt=salt,
                      by="sha256(salt + '\\n' + prompt) < fraction: judge")
  return name


def split_spec(task: Optional[str]) -> Optional[Dict[str, Any]]:
  """What a task made by `split_task` is (also for a task named `<split task>_ranking`)."""
  if task is None:
    return None
  if task in _SPECS:
    return dict(_SPECS[task])
  for name, spec in _SPECS.items():
    if task.startswith(name + "_"):
      return dict(spec)
  return None


def task_prompts(task: str, split: str = "train", limit: Optional[int] = None) -> set:
  """The set of prompts of a task's split (its first `limit` examples), read from the data.

  A task that tokenizes text: its `inputs` before formatting and tokenization (so a
  reward-ranking task gives its prompts, not its "[CONTEXT] ..." inputs); a task of token
  records (the sampling stage's pairs): `inputs_pretokenized`.
  """
  t = seqio.get_mixture_or_task(task)
  if any(_is_tokenize(p) for p in t.preprocessors):
    ds = t.source.get_dataset(split=split, shuffle=False)
    for p in _text_steps(t):
      ds = seqio.utils.add_kwargs_to_transform(
          p, sequence_length=None, output_features=t.output_features)(ds)
    key = "inputs"
  else:
    ds = t.get_dataset(sequence_length=None, split=split, shuffle=False, num_epochs=1)
    key = "inputs_pretokenized"
  out = set()
  for i, ex in enumerate(ds.as_numpy_iterator()):
    if limit is not None and i >= limit:
      break
    out.add(ex[key].decode("utf-8", "surrogateescape"))
  return out


def check_disjoint(judge: Tuple[str, Sequence[str]],
                   others: Mapping[str, Tuple[str, str, Optional[int]]]) -> Dict[str, Any]:
  """Reads the prompts and asserts the judge's are in no other set.

  Args:
    judge: (the judge's pairs task, its splits to read).
    others: {what it is: (task, split, first examples or None)}, e.g. the proxy's training
      pairs, the sampled prompts, the policy's pairs.

  Returns:
    {"judge_prompts": count, "<what>": {"prompts": count, "shared_with_judge": 0}, ...}.

  Raises:
    ConfigError naming the set and one shared prompt when any prompt is in both.
  """
  task, splits = judge
  held: set = set()
  for split in splits:
    held |= task_prompts(task, split)
  record: Dict[str, Any] = {"judge_task": task, "judge_prompts": len(held)}
  for what, (name, split, limit) in others.items():
    prompts = task_prompts(name, split, limit)
    shared = held & prompts
    if shared:
      example = sorted(shared)[0]
      raise ConfigError(
          f"the judge's prompts are not held out: {len(shared)} of them are in {what} "
          f"({name!r} {split}), e.g. {example[:120]!r}; the judge must be trained on prompts "
          "that no training or sampling stage saw")
    record[what] = {"task": name, "split": split, "prompts": len(prompts),
                    "shared_with_judge": 0}
  return record


def sides(prompts: Iterable[str], fraction: float, salt: str = SALT) -> Dict[str, list]:
  """{"judge": [...], "rest": [...]}: where each prompt falls (the oracle of the filter)."""
  out: Dict[str, list] = {"judge": [], "rest": []}
  for p in prompts:
    out["judge" if judge_fraction(p, salt) < fraction else "rest"].append(p)
  return out
