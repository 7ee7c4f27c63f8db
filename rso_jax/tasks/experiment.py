"""What an experiment's gin file says about its tasks (T5X experiments import task modules).

  experiment_tasks      the gin hook every rso_jax CLI calls after parsing: the registrations
                        listed in it (`@name/register_preference_file_task()`, ...) run in the
                        main job and in every stage's process alike
  ranking_task          the reward-ranking ("[CONTEXT] x [RESPONSE A] .. [RESPONSE B] ..") twin of
                        a pairs task, so one pairs task serves both reward-model kinds
  ranking_feature_lengths   the ranking input length that holds a prompt and two responses
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import seqio

from rso_jax.tasks import sources

# Tokens of "[CONTEXT]", "[RESPONSE A]", "[RESPONSE B]" and the separating spaces: 36 bytes in
# the byte vocabulary, fewer in a SentencePiece one.
RANKING_TAG_TOKENS = 40


def experiment_tasks(tasks: Sequence[Any] = ()) -> list:
  """Returns the registered tasks (gin evaluates the `@...()` registrations bound here)."""
  return list(tasks)


def ranking_task(pairs_task: str, *, name: Optional[str] = None, flip_seed: int = 0,
                 response_label: str = "RESPONSE", keep_context: str = "start",
                 truncate: str = "count") -> str:
  """Registers (idempotently) and returns the reward-ranking task over `pairs_task`'s data.

  The new task (default name `<pairs_task>_ranking`) reads the same source and the same
  pre-tokenization steps as the pairs task (inputs, chosen, rejected) and formats each pair as
  the paper's ranking example with a seeded A/B flip (`preprocessors.format_pairwise_ranking`),
  so switching the reward model from Bradley-Terry to pairwise ρ needs no second task.
  """
  task = seqio.get_mixture_or_task(pairs_task)
  if not isinstance(task, seqio.Task) or set(task.output_features) != set(
      sources.TASK_KINDS["pairs"]):
    raise ValueError(f"ranking_task: {pairs_task!r} is not a preference-pairs task (features "
                     f"{sorted(task.output_features)}; need {list(sources.TASK_KINDS['pairs'])})")
  name = name or f"{pairs_task}_ranking"
  pre = []
  for p in task.preprocessors:
    if getattr(p, "__name__", None) == "tokenize" or p is seqio.preprocessors.tokenize:
      break
    pre.append(p)
  vocabulary = task.output_features["inputs"].vocabulary
  sources.add_task(name, task.source, "rm_pairwise", vocabulary, truncate=truncate,
                   flip_seed=flip_seed, rm_response_label=response_label,
                   keep_context=keep_context, pre_tokenize=pre)
  return name


def ranking_feature_lengths(lengths: Mapping[str, int],
                            tag_tokens: int = RANKING_TAG_TOKENS) -> dict:
  """{"inputs": prompt + 2 responses + tags, "targets": 2} from policy lengths {inputs, targets}.

  A ranking input built from a prompt of at most `inputs` tokens and two responses of at most
  `targets` tokens then fits; a longer prompt has its context cut (never a response).
  """
  li, lt = int(lengths["inputs"]), int(lengths["targets"])
  return {"inputs": li + 2 * lt + int(tag_tokens), "targets": 2}
