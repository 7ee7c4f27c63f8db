"""rso_jax.tasks.subsets: the first examples of an embedded task as a task of its own."""
import pytest
import seqio

from rso_jax.errors import ConfigError
from rso_jax.tasks import embedded, subsets, synthetic


def test_the_first_pairs_of_d_hf_in_order_and_only_them():
  name = subsets.first_examples("synthetic_dhf", 10)
  assert name == "synthetic_dhf.first10"
  want = synthetic.build_environment(embedded.registered_config()).dhf["train"][:10]
  cols = subsets.columns(name)
  assert [str(x) for x in cols["chosen"]] == [q.chosen for q in want]
  ds = seqio.get_mixture_or_task(name).get_dataset(
      {"inputs": 32, "targets": 32}, split="train", shuffle=False)
  got = [ex["chosen_pretokenized"].decode() for ex in ds.as_numpy_iterator()]
  assert got == [q.chosen for q in want]
  with pytest.raises(ConfigError, match="fewer than 99999"):
    subsets.columns(subsets.first_examples("synthetic_dhf", 99999))


def test_only_in_memory_tasks_and_positive_counts():
  with pytest.raises(ConfigError, match="num=0"):
    subsets.first_examples("synthetic_dhf", 0)
  seqio.TaskRegistry.remove("files_task")
  seqio.TaskRegistry.add("files_task", source=seqio.TFExampleDataSource(
      {"train": "/nonexistent/*"}, feature_description={}), preprocessors=[],
      output_features={})
  with pytest.raises(ConfigError, match="not an in-memory task"):
    subsets.first_examples("files_task", 3)
