"""The judge's held-out prompts: a split of tasks by a hash of the prompt, and its check."""

import json

import pytest
import seqio

from rso_jax import tasks
from rso_jax.errors import ConfigError
from rso_jax.tasks import prompt_split


def _pairs_file(path, prompts):
  with open(path, "w") as f:
    for i, p in enumerate(prompts):
      f.write(json.dumps({"prompt": p, "chosen": f"good {i}", "rejected": f"bad {i}"}) + "\n")
  return str(path)


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
  prompts = [f"prompt number {i} about topic {i % 7}" for i in range(200)]
  path = _pairs_file(tmp_path_factory.mktemp("split") / "pairs.jsonl", prompts)
  tasks.register_preference_file_task("t_split_pairs", {"train": path}, "jsonl", kind="pairs",
                                      validation_fraction=0.1)
  tasks.register_preference_file_task("t_split_prompts", {"train": path}, "jsonl",
                                      kind="prompts", validation_fraction=0.1)
  return prompts


def test_sides_are_disjoint_cover_the_task_and_follow_the_hash(pairs):
  judge = prompt_split.split_task("t_split_pairs", 0.25, "judge")
  rest = prompt_split.split_task("t_split_pairs", 0.25, "rest")
  assert (judge, rest) == ("t_split_pairs.judge0.25", "t_split_pairs.rest0.25")
  for split in ("train", "validation"):
    whole = prompt_split.task_prompts("t_split_pairs", split)
    j, r = prompt_split.task_prompts(judge, split), prompt_split.task_prompts(rest, split)
    assert j and r and not j & r and j | r == whole
    # The oracle: SHA-256 of "judge\n" + prompt, as a fraction, below 0.25.
    assert j == set(prompt_split.sides(whole, 0.25)["judge"])
  n = len(prompt_split.task_prompts(judge, "train") | prompt_split.task_prompts(judge,
                                                                                "validation"))
  assert 0.15 < n / len(pairs) < 0.35
  # Tasks of another kind over the same prompts agree on every prompt's side.
  judge_prompts = prompt_split.split_task("t_split_prompts", 0.25, "judge")
  assert (prompt_split.task_prompts(judge_prompts, "train")
          == prompt_split.task_prompts(judge, "train"))
  # The split keeps what the task feeds a model: tokenized pairs, lengths checked.
  ds = seqio.get_mixture_or_task(rest).get_dataset({"inputs": 64, "targets": 16},
                                                   split="train", shuffle=False)
  ex = next(ds.as_numpy_iterator())
  assert {"inputs", "chosen", "rejected"} <= set(ex)
  assert ex["inputs_pretokenized"].decode() in prompt_split.task_prompts(rest)


def test_a_ranking_task_splits_by_its_prompt_not_its_formatted_input(pairs):
  ranking = tasks.ranking_task("t_split_pairs")
  judge = prompt_split.split_task(ranking, 0.25, "judge")
  assert prompt_split.task_prompts(judge) == prompt_split.task_prompts(
      prompt_split.split_task("t_split_pairs", 0.25, "judge"))
  ex = next(seqio.get_mixture_or_task(judge).get_dataset(
      None, split="train", shuffle=False).as_numpy_iterator())
  assert ex["inputs_pretokenized"].startswith(b"[CONTEXT]")
  assert ex["targets_pretokenized"] in (b"A", b"B")


def test_fraction_zero_is_no_split_and_bad_values_name_themselves(pairs):
  assert prompt_split.split_task("t_split_pairs", 0.0, "judge") == "t_split_pairs"
  assert prompt_split.split_spec("t_split_pairs") is None
  for bad in (1.0, -0.1, "0.2", True):
    with pytest.raises(ConfigError, match=f"JUDGE_PROMPT_FRACTION={bad!r}"):
      prompt_split.split_task("t_split_pairs", bad)
  with pytest.raises(ConfigError, match="side='both'"):
    prompt_split.split_task("t_split_pairs", 0.2, "both")


def test_the_split_is_recorded_for_the_manifest(pairs):
  judge = prompt_split.split_task("t_split_pairs", 0.25, "judge")
  spec = prompt_split.split_spec(judge)
  assert spec["source"] == "t_split_pairs" and spec["side"] == "judge"
  assert spec["fraction"] == 0.25 and spec["salt"] == prompt_split.SALT
  assert prompt_split.split_spec(judge + "_ranking") == spec
  assert prompt_split.split_spec(prompt_split.split_task("t_split_pairs", 0.25))["side"] == (
      "rest")


def test_check_disjoint_passes_the_split_and_fails_when_it_is_bypassed(pairs):
  judge = prompt_split.split_task("t_split_pairs", 0.25, "judge")
  rest = prompt_split.split_task("t_split_pairs", 0.25, "rest")
  prompts_rest = prompt_split.split_task("t_split_prompts", 0.25, "rest")
  record = prompt_split.check_disjoint(
      (judge, ("train", "validation")),
      {"the proxy's training pairs": (rest, "train", None),
       "the sampled prompts": (prompts_rest, "train", 50)})
  assert record["judge_prompts"] > 0
  assert record["the sampled prompts"]["prompts"] == 50
  assert record["the proxy's training pairs"]["shared_with_judge"] == 0
  # The proxy trained on the whole task (the split bypassed): the check reads the data and
  # fails, naming the set.
  with pytest.raises(ConfigError, match="not held out: .* in the proxy's training pairs"):
    prompt_split.check_disjoint((judge, ("train",)),
                                {"the proxy's training pairs": ("t_split_pairs", "train", None)})
  with pytest.raises(ConfigError, match="in the sampled prompts"):
    prompt_split.check_disjoint((judge, ("train",)),
                                {"the sampled prompts": ("t_split_prompts", "train", None)})
