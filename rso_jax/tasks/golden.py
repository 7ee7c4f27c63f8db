"""The embedded task's golden reward r* (pure Python): what the environment (`synthetic.py`),
the evaluation and the oracle reward model (`inference.OracleRewardModel`) all score with.

  r*(x, y) = m / k - LAMBDA * (n - m)

k = number of prompt keywords, n = number of whitespace-separated words in y, and
m = LCS(keywords(x), words(y)), the keywords covered *in order* -- or, for an environment
registered with `ordered=False` (the study's testbed), the number of distinct keywords y
contains in any order. LAMBDA = 0.1 per word that does not help.
"""
from __future__ import annotations

import functools
from typing import Sequence

import numpy as np

EXTRA_WORD_PENALTY = 0.1  # LAMBDA in r*: cost of each word outside the keyword match.
BT_TEMPERATURE = 0.15  # TAU: Bradley-Terry temperature of the simulated raters.


def keywords(prompt: str) -> list[str]:
  """The keywords of a prompt: its whitespace-separated words, in order."""
  return prompt.split()


def _lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
  """Length of the longest common subsequence of two word lists (O(|a||b|) DP)."""
  prev = [0] * (len(b) + 1)
  for x in a:
    cur = [0]
    for j, y in enumerate(b):
      cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
    prev = cur
  return prev[-1]


def as_text(s: str | bytes, what: str) -> str:
  if isinstance(s, (bytes, np.bytes_)):
    return bytes(s).decode("utf-8", errors="replace")
  if isinstance(s, str):
    return s
  raise ValueError(f"{what} must be str or bytes, got {type(s).__name__}: {s!r}")


def golden_reward(prompt: str | bytes, response: str | bytes, ordered: bool = True) -> float:
  """r*(x, y) = m / k - EXTRA_WORD_PENALTY * (n_words(y) - m).

  Args:
    prompt: the prompt text x (its words are the keywords; k >= 1 required).
    response: the response text y (bytes are decoded as UTF-8).
    ordered: m = LCS(keywords(x), words(y)), the keywords covered in order (the embedded
      task); False: m = the number of distinct keywords y contains, in any order (the study's
      testbed, `EnvConfig.ordered`; a repeated keyword counts as an extra word).

  Returns:
    The golden reward, <= 1.0, with equality iff `response` lists exactly the keywords (in
    order, when `ordered`).
  """
  prompt = as_text(prompt, "prompt")
  response = as_text(response, "response")
  kw = keywords(prompt)
  if not kw:
    raise ValueError(f"golden_reward: prompt has no keywords: prompt={prompt!r}")
  words = response.split()
  m = _lcs_length(kw, words) if ordered else len(set(kw) & set(words))
  return m / len(kw) - EXTRA_WORD_PENALTY * (len(words) - m)


def golden_rewards(prompts: Sequence[str | bytes], responses: Sequence[str | bytes],
                   ordered: bool = True) -> np.ndarray:
  """Batched `golden_reward`: `[B]` prompts and `[B]` responses -> float32 `[B]`.

  Also accepts `[B, N]` responses (N samples per prompt) with `[B]` prompts -> `[B, N]`.
  """
  responses_arr = np.asarray(responses, dtype=object)
  prompts_list = list(prompts)
  if responses_arr.ndim == 2:
    if responses_arr.shape[0] != len(prompts_list):
      raise ValueError(f"golden_rewards: {len(prompts_list)} prompts but responses have shape "
                       f"{responses_arr.shape}")
    return np.stack([golden_rewards([p] * responses_arr.shape[1], list(row), ordered)
                     for p, row in zip(prompts_list, responses_arr)]).astype(np.float32)
  if responses_arr.ndim != 1 or len(responses_arr) != len(prompts_list):
    raise ValueError(f"golden_rewards: {len(prompts_list)} prompts vs responses of shape "
                     f"{responses_arr.shape}; need equal length")
  return np.array([golden_reward(p, y, ordered) for p, y in zip(prompts_list, responses_arr)],
                  dtype=np.float32)


# Task prefix -> whether its r* counts keywords in order (`register_reward_order`; default True).
_ORDERED: dict[str, bool] = {}


def register_reward_order(prefix: str, ordered: bool) -> None:
  """Records how the `<prefix>_*` tasks' r* counts keywords (`embedded.register_synthetic_tasks`
  calls it), so `golden_reward_of` gives every stage the environment's own r*."""
  _ORDERED[prefix] = bool(ordered)


def reward_is_ordered(task_name: str) -> bool:
  """Whether the r* of a `synthetic*` task counts keywords in order (as its prefix was
  registered; True when it never was)."""
  name = str(task_name)
  prefixes = [p for p in _ORDERED if name == p or name.startswith(p + "_")
              or name.startswith(p + ".")]
  return _ORDERED[max(prefixes, key=len)] if prefixes else True


def golden_reward_of(task_name: str):
  """`golden_rewards` of the environment a task belongs to (`synthetic_*`: ordered or not, as
  registered), else None: the one rule by which the sampling stage, the evaluation and the
  reward stage tell whether r* exists and which it is."""
  if not str(task_name).startswith("synthetic"):
    return None
  if reward_is_ordered(task_name):
    return golden_rewards
  return functools.partial(golden_rewards, ordered=False)
