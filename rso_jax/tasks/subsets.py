"""The first examples of an embedded (in-memory) task, as a task of its own.

`first_examples("synthetic_dhf", 1024)` registers `synthetic_dhf.first1024`: the task's first
1,024 examples of every split, in the source's order, with the task's preprocessors and
features (the study's `direct` cell trains on exactly as many D_hf pairs as the sampled
settings get). Only tasks over `sources.InMemoryDataSource` can be cut this way.
"""
from __future__ import annotations

import seqio

from rso_jax.errors import ConfigError
from rso_jax.tasks import sources


def first_examples(task: str, num: int) -> str:
  """Registers (idempotently) and returns `<task>.first<num>` (see the module doc)."""
  if isinstance(num, bool) or not isinstance(num, int) or num < 1:
    raise ConfigError(f"first_examples: num={num!r} must be a positive integer")
  source_task = seqio.get_mixture_or_task(task)
  source = getattr(source_task, "source", None)
  if not isinstance(source, sources.InMemoryDataSource):
    raise ConfigError(f"task {task!r} is not an in-memory task: its first examples cannot be "
                      "taken (only the embedded synthetic_* tasks can)")
  name = f"{task}.first{num}"
  columns_fn = source._columns_fn  # pylint: disable=protected-access

  def first(split):
    cols = columns_fn(split)
    have = len(next(iter(cols.values())))
    if have < num and split == "train":
      raise ConfigError(f"task {task!r} split {split!r} has {have} examples, fewer than "
                        f"{num}")
    return {k: list(v)[:num] for k, v in cols.items()}

  splits = tuple(source.splits)
  new = sources.InMemoryDataSource(first, splits, num_input_examples={s: num for s in splits})
  seqio.TaskRegistry.remove(name)
  seqio.TaskRegistry.add(name, source=new, preprocessors=list(source_task.preprocessors),
                         output_features=dict(source_task.output_features))
  return name


def columns(task: str, split: str = "train") -> dict:
  """The raw columns of an in-memory task's split (texts and floats, before preprocessing)."""
  source = seqio.get_mixture_or_task(task).source
  if not isinstance(source, sources.InMemoryDataSource):
    raise ConfigError(f"task {task!r} is not an in-memory task")
  return source._columns_fn(split)  # pylint: disable=protected-access
