"""seqio tasks: synthetic registrations, reward-ranking format, file-backed formats, truncation."""
import json
import math

import helpers
import numpy as np
import pytest
import seqio
import tensorflow as tf

from helpers import CFG, manifest, one_device_mesh, train_spm, word_texts
from rso_jax import inference
from rso_jax import reward_models as rm
import rso_jax.tasks as tasks
from rso_jax.tasks import preprocessors as prep
from rso_jax.tasks import synthetic as syn
from rso_jax.tasks import text_formats

SMALL = dict(num_train_prompts=500, num_validation_prompts=20, num_test_prompts=20)
LENGTHS = {"inputs": 32, "targets": 32}


def _examples(name, split="train", lengths=LENGTHS, **kw):
  ds = seqio.get_mixture_or_task(name).get_dataset(lengths, split=split, shuffle=False, **kw)
  return list(ds.as_numpy_iterator())


def _text(x):
  return x.decode() if isinstance(x, bytes) else x


@pytest.fixture(scope="module")
def small_env():
  tasks.register_synthetic_tasks(seed=5, prefix="tsmall", **SMALL)
  return syn.build_environment(syn.EnvConfig(seed=5, **SMALL))


def test_default_tasks_registered_on_import():
  for name in tasks.SYNTHETIC_TASKS:
    task = seqio.get_mixture_or_task(name)
    assert {"train", "validation"} <= set(task.splits)
  assert set(seqio.get_mixture_or_task("synthetic_dhf").output_features) == {
      "inputs", "chosen", "rejected"}
  assert isinstance(tasks.get_vocabulary(), seqio.ByteVocabulary)
  v = tasks.get_vocabulary()
  assert (v.pad_id, v.eos_id, v.unk_id, v.vocab_size) == (0, 1, 2, 259)
  assert v.encode("a") == [ord("a") + 3]


def test_registration_is_idempotent_and_replaces(small_env):
  tasks.register_synthetic_tasks(seed=5, prefix="tsmall", **SMALL)  # Again: no error.
  assert seqio.get_mixture_or_task("tsmall_sft").source.num_input_examples("train") == 500


def test_synthetic_tasks_serve_the_environment_deterministically(small_env):
  sft = _examples("tsmall_sft")
  assert [_text(e["inputs_pretokenized"]) for e in sft] == list(small_env.prompts["train"])
  assert [_text(e["targets_pretokenized"]) for e in sft] == list(small_env.sft["train"])
  v = tasks.get_vocabulary()
  e = sft[0]
  assert e["inputs"].tolist() == v.encode(small_env.prompts["train"][0]) + [1]  # EOS appended.
  dhf = _examples("tsmall_dhf", split="validation")
  assert [(_text(e["chosen_pretokenized"]), _text(e["rejected_pretokenized"])) for e in dhf] == [
      (p.chosen, p.rejected) for p in small_env.dhf["validation"]]
  np.testing.assert_allclose([e["chosen_golden_reward"] for e in dhf],
                             [p.chosen_reward for p in small_env.dhf["validation"]], rtol=1e-6)
  prompts = _examples("tsmall_prompts", split="test", lengths={"inputs": 32})
  assert [_text(e["inputs_pretokenized"]) for e in prompts] == list(small_env.prompts["test"])
  assert set(prompts[0]) >= {"inputs", "sft_target_pretokenized"}
  again = _examples("tsmall_sft")
  assert all(np.array_equal(a["targets"], b["targets"]) for a, b in zip(sft, again))
  def shuffled(seed):
    ds = seqio.get_mixture_or_task("tsmall_sft").get_dataset(
        LENGTHS, split="train", shuffle=True, seed=seed)
    return [_text(e["inputs_pretokenized"]) for e in ds.take(20).as_numpy_iterator()]
  first = shuffled(3)
  assert first == shuffled(3) and first != shuffled(4)
  assert first != [_text(e["inputs_pretokenized"]) for e in sft[:20]]


def _split_rm_inputs(text):
  assert text.startswith("[CONTEXT] ")
  ctx, rest = text[len("[CONTEXT] "):].split(" [RESPONSE A] ")
  a, b = rest.split(" [RESPONSE B] ")
  return ctx, a, b


def test_rm_pairwise_flips_are_fair_deterministic_and_consistent(small_env):
  ex = _examples("tsmall_rm_pairwise", lengths=tasks.RM_FEATURE_LENGTHS)
  assert len(ex) == 1000
  flips = np.array([e["flipped"] for e in ex])
  # Fair coin: n = 1000, |rate - 0.5| <= 4 sqrt(0.25 / n) = 0.063.
  assert abs(flips.mean() - 0.5) <= 4 * math.sqrt(0.25 / len(ex))
  for e, pair in zip(ex, small_env.dhf["train"]):
    ctx, a, b = _split_rm_inputs(_text(e["inputs_pretokenized"]))
    target = _text(e["targets_pretokenized"])
    assert ctx == pair.prompt
    assert target == ("B" if e["flipped"] else "A")
    assert (a, b) == ((pair.chosen, pair.rejected) if target == "A" else
                      (pair.rejected, pair.chosen))
  assert np.array_equal(flips, [e["flipped"] for e in _examples(
      "tsmall_rm_pairwise", lengths=tasks.RM_FEATURE_LENGTHS)])
  tasks.register_synthetic_tasks(seed=5, prefix="tflip", flip_seed=99, **SMALL)
  other = np.array([e["flipped"] for e in _examples("tflip_rm_pairwise",
                                                    lengths=tasks.RM_FEATURE_LENGTHS)])
  assert 0.3 < np.mean(other != flips) < 0.7  # A different seed: independent flips.


# ----------------------------------------------------------------------------- file formats


def _write_jsonl(path, records):
  path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in records) + "\n")
  return str(path)


def _tldr_comparison(post, title, sub, texts, choice):
  return {"info": {"id": "t3_1", "post": post, "title": title, "subreddit": sub},
          "summaries": [{"text": t, "policy": "sup"} for t in texts], "choice": choice,
          "worker": "w1", "batch": "batch3", "split": "train"}


def test_tldr_comparisons_fixture(tmp_path):
  path = _write_jsonl(tmp_path / "comparisons.jsonl", [
      _tldr_comparison("My cat sits.", "Cat help", "cats", [" cat sits", " cat runs"], 1),
      {"info": {"id": "cnn1", "article": "News.", "site": "cnn"},
       "summaries": [{"text": "a"}, {"text": "b"}], "choice": 0},  # CNN/DM: skipped.
      "",
      _tldr_comparison("Dog barks.", "Dog", "dogs", ["barks", "quiet"], 0),
  ])
  tasks.register_preference_file_task("t_tldr_cmp", path, "tldr_comparisons")
  ex = _examples("t_tldr_cmp", lengths={"inputs": 128, "targets": 32})
  assert len(ex) == 2
  assert _text(ex[0]["inputs_pretokenized"]) == (
      "SUBREDDIT: r/cats\nTITLE: Cat help\nPOST: My cat sits.\nTL;DR:")
  assert (_text(ex[0]["chosen_pretokenized"]), _text(ex[0]["rejected_pretokenized"])) == (
      "cat runs", "cat sits")
  assert (_text(ex[1]["chosen_pretokenized"]), _text(ex[1]["rejected_pretokenized"])) == (
      "barks", "quiet")
  tasks.register_preference_file_task("t_tldr_rm", {"validation": path}, "tldr_comparisons",
                                      kind="rm_pairwise", rm_response_label="SUMMARY")
  rm = _examples("t_tldr_rm", split="validation", lengths={"inputs": 256, "targets": 4})
  assert {_text(e["targets_pretokenized"]) for e in rm} <= {"A", "B"}
  assert " [SUMMARY A] " in _text(rm[0]["inputs_pretokenized"])


def test_tldr_sft_and_hh_fixtures(tmp_path):
  sft_path = _write_jsonl(tmp_path / "sft.jsonl", [
      {"id": "1", "subreddit": "pets", "title": " T ", "post": "P body", "summary": " short"}])
  tasks.register_preference_file_task("t_tldr_sft", sft_path, "tldr_sft")
  (ex,) = _examples("t_tldr_sft", lengths={"inputs": 64, "targets": 16})
  assert _text(ex["inputs_pretokenized"]) == "SUBREDDIT: r/pets\nTITLE: T\nPOST: P body\nTL;DR:"
  assert _text(ex["targets_pretokenized"]) == "short"

  hh_path = _write_jsonl(tmp_path / "hh.jsonl", [
      {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Joke?\n\nAssistant: Sure, one.",
       "rejected": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Joke?\n\nAssistant: No."},
      # Common prefix runs into the response ("A" of "Absolutely"/"Always"): cut at the marker.
      {"chosen": "\n\nHuman: Q\n\nAssistant: Absolutely", "rejected": "\n\nHuman: Q\n\nAssistant: Always"},
  ])
  tasks.register_preference_file_task("t_hh", hh_path, "hh")
  ex = _examples("t_hh", lengths={"inputs": 128, "targets": 32})
  assert _text(ex[0]["inputs_pretokenized"]) == (
      "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Joke?\n\nAssistant:")
  assert (_text(ex[0]["chosen_pretokenized"]), _text(ex[0]["rejected_pretokenized"])) == (
      "Sure, one.", "No.")
  assert _text(ex[1]["inputs_pretokenized"]) == "\n\nHuman: Q\n\nAssistant:"
  assert _text(ex[1]["chosen_pretokenized"]) == "Absolutely"
  tasks.register_preference_file_task("t_hh_sft", hh_path, "hh", kind="sft")
  assert _text(_examples("t_hh_sft", lengths={"inputs": 128, "targets": 32})[0][
      "targets_pretokenized"]) == "Sure, one."


def test_generic_jsonl_and_parquet_fixtures(tmp_path):
  import pyarrow as pa  # pylint: disable=g-import-not-at-top
  import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
  rows = [{"prompt": "cat dog", "chosen": "cat dog", "rejected": "dog"},
          {"prompt": "owl", "chosen": "owl", "rejected": "ram ram"}]
  jl = _write_jsonl(tmp_path / "pairs.jsonl", rows)
  pq_path = str(tmp_path / "pairs.parquet")
  pq.write_table(pa.Table.from_pylist(rows), pq_path)
  sft_path = str(tmp_path / "sft.parquet")
  pq.write_table(pa.Table.from_pylist([{"prompt": "x", "response": "y"}]), sft_path)
  tasks.register_preference_file_task("t_jsonl", {"train": jl, "validation": [jl]}, "jsonl")
  tasks.register_preference_file_task("t_parquet", str(tmp_path / "pairs.parq*"), "parquet")
  tasks.register_preference_file_task("t_parquet_sft", sft_path, "parquet", kind="sft")
  for name in ("t_jsonl", "t_parquet"):
    ex = _examples(name)
    assert [(_text(e["inputs_pretokenized"]), _text(e["chosen_pretokenized"]),
             _text(e["rejected_pretokenized"])) for e in ex] == [tuple(r.values()) for r in rows]
  assert len(_examples("t_jsonl", split="validation")) == 2
  (ex,) = _examples("t_parquet_sft")
  assert (_text(ex["inputs_pretokenized"]), _text(ex["targets_pretokenized"])) == ("x", "y")


@pytest.mark.parametrize("fmt,lines,match", [
    ("jsonl", [{"prompt": "a", "chosen": "b", "rejected": "c"}, {"prompt": "a", "chosen": "b"}],
     r"bad\.jsonl:2: missing field 'rejected'"),
    ("jsonl", [{"prompt": "a", "chosen": "b", "rejected": "c"}, "", '{"prompt": "a", '],
     r"bad\.jsonl:3: invalid JSON"),
    ("jsonl", [{"prompt": 5, "chosen": "b", "rejected": "c"}],
     r"bad\.jsonl:1: field 'prompt' must be a string"),
    ("jsonl", ["[1, 2]"], r"bad\.jsonl:1: record must be a JSON object"),
    ("tldr_comparisons", [_tldr_comparison("p", "t", "s", ["a", "b"], 2)],
     r"bad\.jsonl:1: field 'choice' must be 0 or 1"),
    ("tldr_comparisons", [{"info": {"post": "p", "title": "t", "subreddit": "s"},
                           "summaries": [{"text": "a"}], "choice": 0}],
     r"bad\.jsonl:1: field 'summaries.1.text': list has 1 items"),
    ("hh", [{"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "Human: x"}],
     r"bad\.jsonl:1: chosen and rejected share no prefix"),
    ("tldr_sft", [{"subreddit": "s", "title": "t", "post": "p", "summary": "  "}],
     r"bad\.jsonl:1: field 'summary' is empty"),
])
def test_malformed_records_name_file_and_line(tmp_path, fmt, lines, match):
  path = _write_jsonl(tmp_path / "bad.jsonl", lines)
  name = f"t_bad_{fmt}"
  tasks.register_preference_file_task(name, path, fmt)
  with pytest.raises(ValueError, match=match):
    _examples(name)


def test_malformed_parquet_row_and_bad_arguments(tmp_path):
  import pyarrow as pa  # pylint: disable=g-import-not-at-top
  import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
  path = str(tmp_path / "bad.parquet")
  pq.write_table(pa.Table.from_pylist([{"prompt": "a", "chosen": "b", "rejected": "c"},
                                       {"prompt": "a", "chosen": None, "rejected": "c"}]), path)
  tasks.register_preference_file_task("t_bad_parquet", path, "parquet")
  with pytest.raises(ValueError, match=r"bad\.parquet: row 1: field 'chosen' must be a string"):
    _examples("t_bad_parquet")
  with pytest.raises(ValueError, match="not found"):
    tasks.register_preference_file_task("t_missing", str(tmp_path / "nope.jsonl"), "jsonl")
  with pytest.raises(ValueError, match="Unknown preference file format 'csv'"):
    tasks.register_preference_file_task("t_csv", path, "csv")
  with pytest.raises(ValueError, match="kind must be 'sft'"):
    tasks.register_preference_file_task("t_sft_pairs", path, "tldr_sft", kind="pairs")
  with pytest.raises(ValueError, match="SentencePiece model file not found"):
    tasks.get_vocabulary(str(tmp_path / "missing.model"))


def test_tfds_pass_through_registration():
  task = tasks.register_preference_file_task(
      "t_tfds", None, "tfds", tfds_name="my_prefs:1.0.0",
      tfds_field_map={"prompt": "context/text", "chosen": "a", "rejected": "b"})
  assert isinstance(task.source, seqio.TfdsDataSource)
  assert task.source.tfds_dataset.name == "my_prefs:1.0.0"
  ds = tf.data.Dataset.from_tensors({"context": {"text": "x"}, "a": "y", "b": "z"})
  (ex,) = list(task.preprocessors[0](ds).as_numpy_iterator())
  assert ex == {"inputs": b"x", "chosen": b"y", "rejected": b"z"}
  with pytest.raises(ValueError, match="lacks"):
    tasks.register_preference_file_task("t_tfds2", None, "tfds", tfds_name="x",
                                        tfds_field_map={"prompt": "p"})


# ----------------------------------------------------------------------------- truncation


def test_truncation_is_counted_and_reported(tmp_path, caplog):
  rows = [{"prompt": "p" * n, "chosen": "c" * m, "rejected": "r"} for n, m in
          [(3, 3), (10, 2), (2, 12), (20, 20), (5, 5)]]
  path = _write_jsonl(tmp_path / "long.jsonl", rows)
  lengths = {"inputs": 8, "targets": 8}
  tasks.register_preference_file_task("t_long", path, "jsonl")
  tasks.reset_truncation_stats("t_long")
  with caplog.at_level("WARNING"):
    ex = _examples("t_long", lengths=lengths)
  # Oracle: bytes + EOS > 8 -> inputs over in rows 1, 3; chosen over in rows 2, 3.
  stats = tasks.truncation_stats("t_long")
  assert stats["examples"] == 5 and stats["truncated_examples"] == 3
  assert stats["truncated"] == {"inputs": 2, "chosen": 2, "rejected": 0}
  assert stats["max_length"] == {"inputs": 21, "chosen": 21, "rejected": 2}
  assert "exceed the feature length" in caplog.text
  assert all(len(e["inputs"]) <= 8 and e["inputs"][-1] == 1 for e in ex)  # Trimmed, EOS kept.
  raw = seqio.get_mixture_or_task("t_long").get_dataset(None, split="train", shuffle=False)
  counted = tasks.count_truncated(raw, lengths)
  assert counted["truncated"] == stats["truncated"]
  assert counted["truncated_examples"] == 3 and counted["examples"] == 5
  # Iterating again counts the examples again (all epochs are counted).
  _examples("t_long", lengths=lengths)
  assert tasks.truncation_stats("t_long")["examples"] == 10


def test_truncate_error_policy_fails_with_feature_name(tmp_path):
  path = _write_jsonl(tmp_path / "long.jsonl", [{"prompt": "ppp", "chosen": "c" * 30,
                                                 "rejected": "r"}])
  tasks.register_preference_file_task("t_long_err", path, "jsonl", truncate="error")
  with pytest.raises(tf.errors.InvalidArgumentError, match="t_long_err: feature chosen is longer than its feature length 8"):
    _examples("t_long_err", lengths={"inputs": 8, "targets": 8})
  assert len(_examples("t_long_err", lengths={"inputs": 8, "targets": 64})) == 1
  with pytest.raises(ValueError, match="truncate must be one of"):
    tasks.register_preference_file_task("t_long_bad", path, "jsonl", truncate="silent")


def test_counting_pipeline_iterator_can_be_checkpointed(small_env, tmp_path):
  ds = seqio.get_mixture_or_task("tsmall_sft").get_dataset(LENGTHS, split="train",
                                                           shuffle=False)
  it = iter(ds)
  next(it)
  ckpt = tf.train.Checkpoint(it=it)
  save_path = ckpt.save(str(tmp_path / "it"))
  after = next(it)["targets"].numpy()
  ckpt.restore(save_path)
  np.testing.assert_array_equal(next(it)["targets"].numpy(), after)


def test_count_truncated_rejects_unknown_lengths():
  ds = tf.data.Dataset.from_tensors({"foo": tf.constant([1, 2, 3])})
  with pytest.raises(ValueError, match="none of the dataset features"):
    prep.count_truncated(ds, {"inputs": 4})


# ----------------------------------------------------------------------------- reward-ranking over-length rule

RM_LENGTHS = {"inputs": 128, "targets": 8}


def _zero_pw_params():
  """Zero params of the pairwise ranking model (`ranking_tokens` reads none)."""
  return helpers.zero_params(rm.PairwiseRankingModel(CFG), {"inputs": 32, "targets": 8})


@pytest.fixture(scope="module")
def pw_params():
  return _zero_pw_params()


def _scorer(params, length, vocabulary=None, **kw):
  return inference.load(None, manifest=manifest("pairwise_rm", {"inputs": length, "targets": 8},
                                                vocabulary=vocabulary),
                        params=params, mesh=one_device_mesh(), **kw)


def _order(e):
  """(y_a, y_b) of a ranking example, from its raw pair and flip."""
  c, r = _text(e["chosen_pretokenized"]), _text(e["rejected_pretokenized"])
  return (r, c) if e["flipped"] else (c, r)


def test_rm_pairwise_long_prompt_cuts_the_context_never_the_responses(tmp_path, caplog):
  prompt = ("owl cat ram " * 1000)[:10_000]
  rows = [{"prompt": prompt, "chosen": "the cat sat", "rejected": "a dog ran off"},
          {"prompt": "short", "chosen": "c" * 60, "rejected": "r" * 60},  # Tags + responses: 149.
          {"prompt": "owl", "chosen": "yes", "rejected": "no"}]
  path = _write_jsonl(tmp_path / "rm_long.jsonl", rows)
  tasks.register_preference_file_task("t_rm_long", path, "jsonl", kind="rm_pairwise")
  tasks.reset_truncation_stats("t_rm_long")
  with caplog.at_level("WARNING"):
    ex = _examples("t_rm_long", lengths=RM_LENGTHS)
  assert len(ex) == 2  # The example whose responses alone do not fit is dropped.
  v = tasks.get_vocabulary()
  long, short = ex
  a, b = _order(long)
  tail = f" [RESPONSE A] {a} [RESPONSE B] {b}"
  assert len(long["inputs"]) == 128 and long["inputs"][-1] == 1
  text = v.decode(long["inputs"][:-1].tolist())
  assert text.endswith(tail)  # Both responses whole, at the end of the input.
  assert text == "[CONTEXT]" + (" " + prompt)[:127 - len("[CONTEXT]") - len(tail)] + tail
  # The label still names the chosen response's position.
  label = "B" if long["flipped"] else "A"
  assert _text(long["targets_pretokenized"]) == label
  assert long["targets"].tolist() == [ord(label) + 3, 1]
  assert (a if label == "A" else b) == "the cat sat"
  assert short["inputs"].tolist() == v.encode(text_formats.ranking_input_text("owl", *_order(short))) + [1]
  stats = tasks.truncation_stats("t_rm_long")
  assert stats["examples"] == 3 and stats["truncated_examples"] == 1 and stats["dropped"] == 1
  assert stats["truncated"] == {"inputs": 1, "targets": 0}
  assert stats["max_length"]["inputs"] == len(text_formats.ranking_input_text(prompt, a, b)) + 1
  assert "were DROPPED: their responses alone" in caplog.text
  # truncate="error" still refuses any over-long input.
  tasks.register_preference_file_task("t_rm_long_err", path, "jsonl", kind="rm_pairwise",
                                      truncate="error")
  with pytest.raises(tf.errors.InvalidArgumentError, match="feature inputs is longer"):
    _examples("t_rm_long_err", lengths=RM_LENGTHS)


@pytest.mark.parametrize("vocabulary", ["bytes", "sentencepiece"])
def test_rm_pairwise_tokens_equal_the_inference_rule(tmp_path, pw_params, vocabulary):
  """Task tokens == `RewardModel.ranking_tokens` for whole, cut and dropped inputs."""
  length, spm_path, spec = (128, None, None) if vocabulary == "bytes" else (48, None, None)
  if vocabulary == "sentencepiece":
    tags = "[CONTEXT] owl cat [RESPONSE A] ram dog [RESPONSE B] yak A B"
    spm_path = train_spm(tmp_path, word_texts(400, seed=3) + [tags] * 20, vocab_size=96)
    spec = {"type": "sentencepiece", "path": spm_path, "extra_ids": 0}
  prompts = word_texts(6, lo=1, hi=4, seed=7) + word_texts(6, lo=40, hi=70, seed=9)
  responses = word_texts(24, lo=1, hi=5, seed=8)
  rows = [{"prompt": p, "chosen": responses[2 * i], "rejected": responses[2 * i + 1] + " owl"}
          for i, p in enumerate(prompts)]
  rows.append({"prompt": "owl", "chosen": "cat " * 40, "rejected": "dog " * 40})  # Dropped.
  path = _write_jsonl(tmp_path / "rm.jsonl", rows)
  name = f"t_rm_rule_{vocabulary}"
  tasks.register_preference_file_task(name, path, "jsonl", kind="rm_pairwise", spm_path=spm_path)
  tasks.reset_truncation_stats(name)
  ex = _examples(name, lengths={"inputs": length, "targets": 8})
  assert len(ex) == len(rows) - 1
  scorer = _scorer(pw_params, length, spec)
  for e in ex:
    a, b = _order(e)
    want, fits = scorer.ranking_tokens([_text(e["prompt_pretokenized"])], [a], [b])
    assert fits[0]
    got = np.zeros(length, np.int32)
    got[:len(e["inputs"])] = e["inputs"]
    np.testing.assert_array_equal(got, want[0])
  _, fits = scorer.ranking_tokens(["owl"], ["cat " * 40], ["dog " * 40])
  assert not fits[0]
  stats = tasks.truncation_stats(name)
  assert stats["truncated"]["inputs"] == scorer.stats["contexts_truncated"] >= 3
  assert stats["dropped"] == scorer.stats["responses_too_long"] == 1
  assert stats["examples"] - stats["truncated_examples"] - stats["dropped"] >= 3  # Whole ones.
  assert stats["examples"] == len(rows)
