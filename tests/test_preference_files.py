"""File-backed preference tasks: the bad-record policy (error with file:line, or skip + count +
budget) and its counts."""
import json

import pytest
import seqio

import rso_jax.tasks as tasks
from rso_jax.tasks import preference_files as pf

LENGTHS = {"inputs": 64, "targets": 32}
GOOD = {"prompt": "owl cat", "chosen": "ram", "rejected": "dog"}
# (raw line, reason the error names)
BAD_LINES = {
    "empty": (json.dumps({"prompt": "p", "chosen": " \n\t", "rejected": "r"}),
              "the chosen response is empty"),
    "identical": (json.dumps({"prompt": "p", "chosen": "same ", "rejected": "same"}),
                  "chosen and rejected responses are identical"),
    "utf8": (b'{"prompt": "p", "chosen": "caf\xe9", "rejected": "r"}',
             r"invalid UTF-8 at byte 31 \(0xe9\)"),
    "json": ('{"prompt": "p", "chosen": ', "invalid JSON"),
    "surrogate": ('{"prompt": "p", "chosen": "\\ud800", "rejected": "r"}',
                  "the chosen response is not valid Unicode text"),
}


def _write(path, lines):
  data = b"".join((l if isinstance(l, bytes) else
                   (l if isinstance(l, str) else json.dumps(l)).encode()) + b"\n" for l in lines)
  path.write_bytes(data)
  return str(path)


def _examples(name, split="train"):
  ds = seqio.get_mixture_or_task(name).get_dataset(LENGTHS, split=split, shuffle=False)
  return list(ds.as_numpy_iterator())


@pytest.mark.parametrize("kind", sorted(BAD_LINES))
def test_error_mode_names_file_line_and_reason(tmp_path, kind):
  line, reason = BAD_LINES[kind]
  path = _write(tmp_path / "bad.jsonl", [GOOD, "", line, GOOD])
  tasks.register_preference_file_task(f"t_pf_err_{kind}", path, "jsonl")
  with pytest.raises(ValueError, match=rf"bad\.jsonl:3: {reason}.*bad_records='skip'"):
    _examples(f"t_pf_err_{kind}")
  with pytest.raises(ValueError, match=rf"bad\.jsonl:3: {reason}"):
    pf.read_records(path, "jsonl")


def test_skip_mode_yields_the_good_records_and_counts_the_bad(tmp_path, caplog):
  good = [dict(GOOD, chosen=f"ram {i}") for i in range(200)]
  bad = [BAD_LINES[k][0] for k in sorted(BAD_LINES)]
  path = _write(tmp_path / "mixed.jsonl", good[:100] + bad + good[100:])
  name = "t_pf_skip"
  pf.reset_bad_record_stats(name)
  tasks.register_preference_file_task(name, path, "jsonl", bad_records="skip",
                                      max_bad_fraction=0.05)
  with caplog.at_level("WARNING"):
    ex = _examples(name)
  assert [e["chosen_pretokenized"].decode() for e in ex] == [g["chosen"] for g in good]
  stats = pf.bad_record_stats(name)
  assert (stats["records"], stats["kept"], stats["skipped"]) == (205, 200, 5)
  want = [f"mixed.jsonl:{101 + i}: " for i in range(5)]
  assert len(stats["reasons"]) == 5
  assert all(w in r for w, r in zip(want, stats["reasons"])), stats["reasons"]
  assert "empty" in stats["reasons"][0] and "identical" in stats["reasons"][1]
  assert stats["splits"]["train"]["skipped"] == 5
  assert pf.bad_record_stats()[name]["skipped"] == 5
  assert "skipped 5 of 205 records (2.44%) as bad" in caplog.text
  # Reading the split again (another epoch / stage) does not count the records twice.
  _examples(name)
  assert pf.bad_record_stats(name)["skipped"] == 5
  # The same rule works for reward-ranking tasks and for read_records.
  tasks.register_preference_file_task("t_pf_skip_rm", path, "jsonl", kind="rm_pairwise",
                                      bad_records="skip", max_bad_fraction=0.05)
  assert len(_examples("t_pf_skip_rm")) == 200
  assert len(pf.read_records(path, "jsonl", bad_records="skip", max_bad_fraction=0.05)) == 200


def test_skip_mode_past_the_budget_fails_with_counts_and_reasons(tmp_path):
  lines = [GOOD] * 98 + [BAD_LINES["empty"][0], BAD_LINES["utf8"][0]]
  path = _write(tmp_path / "budget.jsonl", lines)
  tasks.register_preference_file_task("t_pf_budget", path, "jsonl", bad_records="skip")
  with pytest.raises(ValueError, match=(
      r"Task 't_pf_budget' split 'train': 2 of 100 records \(2\.00%\) are bad, more than "
      r"max_bad_fraction=0\.01; first: .*budget\.jsonl:99: the chosen response is empty; "
      r".*budget\.jsonl:100: invalid UTF-8 at byte 31")):
    _examples("t_pf_budget")
  assert pf.bad_record_stats("t_pf_budget")["skipped"] == 2  # Counted even when failing.
  tasks.register_preference_file_task("t_pf_budget2", path, "jsonl", bad_records="skip",
                                      max_bad_fraction=0.02)
  assert len(_examples("t_pf_budget2")) == 98  # 2% is within a 2% budget.
  all_bad = _write(tmp_path / "all_bad.jsonl", [BAD_LINES["empty"][0]])
  with pytest.raises(ValueError, match="no usable records"):
    pf.read_records(all_bad, "jsonl", bad_records="skip", max_bad_fraction=1.0)


def test_formats_share_the_rule_and_a_bom_is_accepted(tmp_path):
  hh = _write(tmp_path / "hh.jsonl", [
      {"chosen": "\n\nHuman: a\n\nAssistant: same", "rejected": "\n\nHuman: a\n\nAssistant: same"}])
  with pytest.raises(ValueError, match=r"hh\.jsonl:1: chosen and rejected responses are identical"):
    pf.read_records(hh, "hh")
  sft = _write(tmp_path / "sft.jsonl", [{"prompt": "p", "response": "  "}])
  with pytest.raises(ValueError, match=r"sft\.jsonl:1: the response is empty"):
    pf.read_records(sft, "jsonl", kind="sft")
  bom = tmp_path / "bom.jsonl"
  bom.write_bytes(b"\xef\xbb\xbf" + json.dumps(GOOD).encode() + b"\n")
  assert pf.read_records(str(bom), "jsonl") == [
      {"inputs": "owl cat", "chosen": "ram", "rejected": "dog"}]


def test_parquet_bad_rows_name_the_row(tmp_path):
  import pyarrow as pa  # pylint: disable=g-import-not-at-top
  import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
  path = str(tmp_path / "p.parquet")
  pq.write_table(pa.Table.from_pylist([GOOD, dict(GOOD, rejected=""), GOOD]), path)
  with pytest.raises(ValueError, match=r"p\.parquet: row 1: the rejected response is empty"):
    pf.read_records(path, "parquet")
  assert len(pf.read_records(path, "parquet", bad_records="skip", max_bad_fraction=0.5)) == 2


def test_bad_policy_arguments_are_checked(tmp_path):
  path = _write(tmp_path / "ok.jsonl", [GOOD])
  with pytest.raises(ValueError, match="bad_records must be one of"):
    tasks.register_preference_file_task("t_pf_arg", path, "jsonl", bad_records="ignore")
  for frac in (-0.1, 1.5, "0.1", True):
    with pytest.raises(ValueError, match="max_bad_fraction must be a number in"):
      tasks.register_preference_file_task("t_pf_arg", path, "jsonl", max_bad_fraction=frac)
  with pytest.raises(ValueError, match="not to format 'tfds'"):
    tasks.register_preference_file_task("t_pf_tfds", None, "tfds", tfds_name="x",
                                        bad_records="skip")


# ----------------------------------------------------------------------------- kind "prompts"


def _tldr_comparison(post, i, choice=0):
  return {"info": {"id": f"p{post}", "subreddit": "cats", "title": f"title {post}",
                   "post": f"post number {post}"},
          "summaries": [{"text": f"a {i}"}, {"text": f"b {i}"}], "choice": choice}


def _inputs(name, split="train"):
  return [e["inputs_pretokenized"].decode() for e in _examples(name, split)]


def test_prompts_kind_dedups_tldr_comparisons_in_first_occurrence_order(tmp_path):
  order = [3, 1, 3, 2, 1, 3, 4, 2]  # posts, repeated across comparisons
  lines = [_tldr_comparison(p, i, choice=i % 2) for i, p in enumerate(order)]
  lines.insert(2, {"info": {"article": "cnn"}, "summaries": [], "choice": 0})  # CNN/DM: filtered
  path = _write(tmp_path / "comparisons.jsonl", lines)
  name = "t_pf_prompts_tldr"
  task = tasks.register_preference_file_task(name, path, "tldr_comparisons", kind="prompts")
  assert list(task.output_features) == ["inputs"]
  want = [pf.tldr_prompt("cats", f"title {p}", f"post number {p}") for p in (3, 1, 2, 4)]
  assert _inputs(name) == want
  stats = pf.bad_record_stats(name)
  assert {k: stats[k] for k in ("records", "kept", "skipped", "filtered", "duplicates")} == {
      "records": 9, "kept": 4, "skipped": 0, "filtered": 1, "duplicates": 4}
  assert stats["splits"]["train"]["duplicates"] == 4
  assert _inputs(name) == want  # A second read is the same and counts nothing twice.
  assert pf.bad_record_stats(name)["duplicates"] == 4
  # The same post from the SFT file gives the same prompt; read_records dedups too.
  sft = _write(tmp_path / "sft.jsonl", [{"subreddit": "cats", "title": f"title {p}",
                                         "post": f"post number {p}", "summary": "s"}
                                        for p in (3, 3, 1)])
  tasks.register_preference_file_task("t_pf_prompts_sft", sft, "tldr_sft", kind="prompts")
  assert _inputs("t_pf_prompts_sft") == want[:2]
  assert pf.read_records(path, "tldr_comparisons", kind="prompts") == [
      {"inputs": w} for w in want]
  # Pair tasks over the same file keep every comparison and count no duplicates.
  tasks.register_preference_file_task("t_pf_pairs_tldr", path, "tldr_comparisons")
  assert len(_examples("t_pf_pairs_tldr")) == 8
  assert pf.bad_record_stats("t_pf_pairs_tldr")["duplicates"] == 0


def test_prompts_kind_over_jsonl_parquet_and_hh(tmp_path):
  only = _write(tmp_path / "prompts.jsonl", [{"prompt": "b"}, {"prompt": "a"}, {"prompt": "b"}])
  tasks.register_preference_file_task("t_pf_prompts_only", only, "jsonl", kind="prompts")
  assert _inputs("t_pf_prompts_only") == ["b", "a"]
  assert pf.bad_record_stats("t_pf_prompts_only")["duplicates"] == 1
  # A TRL pairs file: responses not needed (and not checked) for prompts.
  pairs = _write(tmp_path / "pairs.jsonl", [GOOD, dict(GOOD, chosen="x"),
                                            {"prompt": "q", "chosen": "", "rejected": ""}])
  tasks.register_preference_file_task("t_pf_prompts_pairs", pairs, "jsonl", kind="prompts")
  assert _inputs("t_pf_prompts_pairs") == ["owl cat", "q"]
  # A record without a prompt is still a bad record, named by file and line.
  bad = _write(tmp_path / "noprompt.jsonl", [{"prompt": "a"}, {"text": "b"}])
  tasks.register_preference_file_task("t_pf_prompts_bad", bad, "jsonl", kind="prompts")
  with pytest.raises(ValueError, match=r"noprompt\.jsonl:2: missing field 'prompt'"):
    _examples("t_pf_prompts_bad")
  import pyarrow as pa  # pylint: disable=g-import-not-at-top
  import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
  pq_path = str(tmp_path / "p.parquet")
  pq.write_table(pa.Table.from_pylist([{"prompt": "z"}, {"prompt": "z"}, {"prompt": "y"}]),
                 pq_path)
  tasks.register_preference_file_task("t_pf_prompts_pq", pq_path, "parquet", kind="prompts")
  assert _inputs("t_pf_prompts_pq") == ["z", "y"]
  h = "\n\nHuman: hi\n\nAssistant:"
  hh = _write(tmp_path / "hh.jsonl", [{"chosen": h + " yes", "rejected": h + " no"},
                                      {"chosen": h + " ok", "rejected": h + " nope"}])
  tasks.register_preference_file_task("t_pf_prompts_hh", hh, "hh", kind="prompts")
  assert _inputs("t_pf_prompts_hh") == [h]
  with pytest.raises(ValueError, match="not format 'tfds'"):
    tasks.register_preference_file_task("t_pf_prompts_tfds", None, "tfds", kind="prompts",
                                        tfds_name="x")


# ----------------------------------------------------------------------------- validation_fraction


def test_validation_fraction_is_disjoint_by_prompt_and_agrees_across_kinds(tmp_path):
  n = 1000
  # 1000 prompts, each in 1-3 comparisons (shuffled), and an SFT file over the same prompts.
  rows = [{"prompt": f"prompt {i}", "chosen": f"g{j}", "rejected": f"b{j}"}
          for i in range(n) for j in range(1 + i % 3)]
  import random  # pylint: disable=g-import-not-at-top
  random.Random(0).shuffle(rows)
  pairs = _write(tmp_path / "pairs.jsonl", rows)
  sft = _write(tmp_path / "sft.jsonl", [{"prompt": f"prompt {i}", "response": f"r {i}"}
                                        for i in range(n)])
  frac = 0.2
  splits = {}
  for kind, path in (("pairs", pairs), ("prompts", pairs), ("sft", sft), ("rm_pairwise", pairs)):
    name = f"t_pf_val_{kind}"
    task = tasks.register_preference_file_task(name, path, "jsonl", kind=kind,
                                               validation_fraction=frac)
    assert sorted(task.splits) == ["train", "validation"]
    splits[kind] = {}
    for split in ("train", "validation"):
      if kind == "rm_pairwise":  # inputs are "[CONTEXT] prompt [RESPONSE A] ..."
        got = [x.split(" [RESPONSE A]")[0].removeprefix("[CONTEXT] ") for x in _inputs(name, split)]
      else:
        got = _inputs(name, split)
      splits[kind][split] = got
    train, val = set(splits[kind]["train"]), set(splits[kind]["validation"])
    assert not train & val
    assert train | val == {f"prompt {i}" for i in range(n)}
    assert 0.15 * n < len(val) < 0.25 * n, len(val)
  for kind in ("prompts", "sft", "rm_pairwise"):
    assert set(splits[kind]["validation"]) == set(splits["pairs"]["validation"]), kind
  # Each prompt once for kind "prompts", all comparisons for kind "pairs".
  assert len(splits["prompts"]["validation"]) == len(set(splits["prompts"]["validation"]))
  assert len(splits["pairs"]["train"]) + len(splits["pairs"]["validation"]) == len(rows)
  # The rule is the documented one, and the counts add up per split.
  assert all(pf.prompt_fraction(p) < frac for p in splits["sft"]["validation"])
  stats = pf.bad_record_stats("t_pf_val_prompts")
  assert stats["records"] == len(rows) and stats["kept"] == n
  assert stats["duplicates"] == len(rows) - n
  assert stats["splits"]["validation"]["kept"] == len(splits["prompts"]["validation"])
  # A mapping with "train" only carves the same way; other splits are kept as given.
  test_file = _write(tmp_path / "test.jsonl", [{"prompt": "owl cat", "response": "r"}])
  tasks.register_preference_file_task("t_pf_val_map", {"train": sft, "test": test_file}, "jsonl",
                                      kind="sft", validation_fraction=frac)
  assert _inputs("t_pf_val_map", "validation") == splits["sft"]["validation"]
  assert _inputs("t_pf_val_map", "test") == ["owl cat"]


def test_validation_fraction_bad_values_and_empty_split(tmp_path):
  path = _write(tmp_path / "ok.jsonl", [GOOD])
  for frac in (0, 0.0, 1, 1.5, -0.1, "0.1", True):
    with pytest.raises(ValueError, match=rf"validation_fraction must be a number in \(0, 1\).*"
                                         rf"got {frac!r}"):
      tasks.register_preference_file_task("t_pf_vf", path, "jsonl", validation_fraction=frac)
  # A given validation file wins over the fraction; a None one is no file (the fraction carves).
  other = _write(tmp_path / "other.jsonl", [dict(GOOD, prompt="a different prompt")])
  tasks.register_preference_file_task("t_pf_vf_given", {"train": path, "validation": other},
                                      "jsonl", validation_fraction=0.1)
  assert _inputs("t_pf_vf_given", "validation") == ["a different prompt"]
  assert _inputs("t_pf_vf_given", "train") == [GOOD["prompt"]]
  tasks.register_preference_file_task("t_pf_vf_none", {"train": path, "validation": None},
                                      "jsonl", validation_fraction=0.5)
  carved_to = "validation" if pf.prompt_fraction(GOOD["prompt"]) < 0.5 else "train"
  assert _inputs("t_pf_vf_none", carved_to) == [GOOD["prompt"]]
  with pytest.raises(ValueError, match="no 'train'"):
    tasks.register_preference_file_task("t_pf_vf", {"test": path}, "jsonl",
                                        validation_fraction=0.1)
  with pytest.raises(ValueError, match="not to format 'tfds'"):
    tasks.register_preference_file_task("t_pf_vf", None, "tfds", tfds_name="x",
                                        validation_fraction=0.1)
  # One prompt: one of the two splits is empty, and reading it says so.
  tasks.register_preference_file_task("t_pf_vf_empty", path, "jsonl", validation_fraction=0.5)
  empty = "validation" if pf.prompt_fraction(GOOD["prompt"]) >= 0.5 else "train"
  with pytest.raises(ValueError, match=rf"split '{empty}': no records: validation_fraction=0.5 "
                                       r"put none of the 1 usable records"):
    _examples("t_pf_vf_empty", empty)
  assert len(_examples("t_pf_vf_empty", {"train": "validation"}.get(empty, "train"))) == 1


def test_made_by_run_files_are_looked_up_when_first_read(tmp_path):
  """A file an earlier stage writes (the collect stage's pairs) can be registered before it
  exists; reading it then names the file, and once written it is read whole, both splits."""
  path = tmp_path / "collect" / "pairs.jsonl"
  with pytest.raises(ValueError, match="Preference data file not found"):
    tasks.register_preference_file_task("t_pf_missing", {"train": str(path)}, "jsonl")
  tasks.register_preference_file_task("t_pf_later", {"train": str(path)}, "jsonl",
                                      validation_fraction=0.5, made_by_run=True)
  with pytest.raises(ValueError, match=f"Preference data file not found: '{path}'"):
    _examples("t_pf_later")
  path.parent.mkdir()
  rows = [{"prompt": f"owl cat {i}", "chosen": "ram", "rejected": "dog"} for i in range(40)]
  _write(path, rows)
  got = _inputs("t_pf_later", "train") + _inputs("t_pf_later", "validation")
  assert sorted(got) == sorted(r["prompt"] for r in rows)
  assert 0 < len(_inputs("t_pf_later", "validation")) < 40


def test_bad_data_is_a_data_error_and_the_sft_kind_names_the_field_it_needs(tmp_path):
  """Every bad record or unusable file is a DataError (a ValueError the CLIs report as one
  line, exit 2); over a pairs file the SFT kind reads `chosen` and names it."""
  pairs_no_chosen = _write(tmp_path / "a.jsonl", [GOOD, {"prompt": "p", "rejected": "r"}])
  with pytest.raises(pf.DataError, match=r"a\.jsonl:2: missing field 'chosen' \("):
    pf.read_records(pairs_no_chosen, "jsonl", kind="sft")
  prompt_only = _write(tmp_path / "b.jsonl", [{"prompt": "p"}])
  with pytest.raises(pf.DataError, match=r"b\.jsonl:1: missing field 'response' \(an SFT "
                                         r"record\) or 'chosen' \(a pairs record\)"):
    pf.read_records(prompt_only, "jsonl", kind="sft")
  blank_chosen = _write(tmp_path / "c.jsonl", [{"prompt": "p", "chosen": " ", "rejected": "r"}])
  with pytest.raises(pf.DataError, match=r"c\.jsonl:1: the chosen response is empty"):
    pf.read_records(blank_chosen, "jsonl", kind="sft")
  empty, blank = tmp_path / "empty.jsonl", tmp_path / "blank.jsonl"
  empty.write_bytes(b"")
  blank.write_bytes(b"\n \n")
  for path, what in ((empty, "empty"), (blank, "blank")):
    with pytest.raises(pf.DataError, match=rf"{path.name}:1: no records: the file is {what}"):
      pf.read_records(str(path), "jsonl")
  bad_json = _write(tmp_path / "d.jsonl", ['{"prompt": "a\tb"}'])
  with pytest.raises(pf.DataError, match=r"d\.jsonl:1: invalid JSON \(Invalid control "
                                         r"character at column 14\)"):
    pf.read_records(bad_json, "jsonl", kind="prompts")


def test_validate_task_reads_every_split_once_without_tf_data(tmp_path, monkeypatch):
  """The cheap pass a stage runs before it builds its model: every split of a file-backed
  task (a validation file too), the same checks as reading it, nothing kept."""
  train = _write(tmp_path / "train.jsonl", [GOOD] * 3)
  val = _write(tmp_path / "val.jsonl", [GOOD, GOOD, BAD_LINES["utf8"][0]])
  tasks.register_preference_file_task("t_pf_check", {"train": train, "validation": val},
                                      "jsonl")
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  def no_tf_data(*args, **kwargs):
    raise AssertionError("tf.data used")
  monkeypatch.setattr(tf.data.Dataset, "from_tensor_slices", no_tf_data)
  with pytest.raises(pf.DataError, match=r"val\.jsonl:3: invalid UTF-8 at byte 31 \(0xe9\)"):
    pf.validate_task("t_pf_check")
  assert pf._load_columns.cache_info().currsize == 0  # pylint: disable=protected-access
  rows = _write(tmp_path / "rows.jsonl", [dict(GOOD, prompt=f"owl {i}") for i in range(40)])
  tasks.register_preference_file_task("t_pf_check", rows, "jsonl", validation_fraction=0.5)
  assert pf.validate_task("t_pf_check")  # both carved splits have records
  tasks.register_preference_file_task("t_pf_check", train, "jsonl", validation_fraction=0.5)
  with pytest.raises(pf.DataError, match="no records: validation_fraction=0.5 put none"):
    pf.validate_task("t_pf_check")  # one prompt: one of the carved splits is empty
  budget = _write(tmp_path / "budget.jsonl", [GOOD] * 9 + [BAD_LINES["json"][0]])
  tasks.register_preference_file_task("t_pf_check", budget, "jsonl", bad_records="skip",
                                      max_bad_fraction=0.05)
  with pytest.raises(pf.DataError, match=r"1 of 10 records \(10\.00%\) are bad.*"
                                         r"budget\.jsonl:10: invalid JSON"):
    pf.validate_task("t_pf_check")
  # Nothing to check up front: files the run writes, another task under the name, no task.
  tasks.register_preference_file_task("t_pf_check", str(tmp_path / "later.jsonl"), "jsonl",
                                      made_by_run=True)
  assert not pf.validate_task("t_pf_check")
  tasks.register_preference_file_task("t_pf_check2", train, "jsonl")
  from rso_jax.tasks import sources  # pylint: disable=g-import-not-at-top
  sources.add_task("t_pf_check2", seqio.get_mixture_or_task("t_pf_check").source, "pairs",
                   seqio.get_mixture_or_task("t_pf_check").output_features["inputs"].vocabulary)
  assert not pf.validate_task("t_pf_check2") and not pf.validate_task("t_pf_no_such_task")


def test_a_hf_tokenizer_task_reads_its_ids_and_its_chat_template(tmp_path):
  """spm_path naming a HF tokenizer: the task's features are the vocabulary's ids (HF id + 1)
  with its EOS; chat_template="tokenizer" renders message lists with its Jinja template, and is
  refused, naming chat_template and spm_path, for a vocabulary without one."""
  import helpers
  from rso_jax.tasks import vocab as vocab_lib
  hf = helpers.write_hf_tokenizer(tmp_path / "tok", helpers.WORDS)
  vocab = vocab_lib.get_vocabulary(hf)
  rows = [{"prompt": "owl cat", "chosen": " ram A", "rejected": "dog B"},
          {"prompt": [{"role": "user", "content": "owl?"}],
           "chosen": [{"role": "assistant", "content": "ram"}],
           "rejected": [{"role": "assistant", "content": "dog"}]}]
  path = _write(tmp_path / "data.jsonl", rows)
  tasks.register_preference_file_task("t_pf_hf", path, "jsonl", spm_path=hf,
                                      chat_template="tokenizer")
  got = _examples("t_pf_hf")
  prompts = ["owl cat", vocab.apply_chat_template([{"role": "user", "content": "owl?"}])]
  assert prompts[1] == "<|im_start|>user\nowl?<|im_end|>\n<|im_start|>assistant\n"
  for ex, prompt, row in zip(got, prompts, rows):
    chosen = row["chosen"] if isinstance(row["chosen"], str) else row["chosen"][0]["content"]
    assert ex["inputs_pretokenized"].decode() == prompt
    assert ex["inputs"].tolist() == vocab.encode(prompt) + [vocab.eos_id]
    assert ex["chosen"].tolist() == vocab.encode(chosen) + [vocab.eos_id]
    assert vocab.decode(ex["chosen"]) == chosen
  assert len(got[0]["chosen"]) == 3  # " ram", " A", EOS: the words and "A" / "B" are one token
  bare = helpers.write_hf_tokenizer(tmp_path / "bare", helpers.WORDS, chat_template=False)
  with pytest.raises(ValueError, match=r"chat_template='tokenizer': the HF tokenizer spm_path="
                                       r"'.*bare' has no chat template"):
    tasks.register_preference_file_task("t_pf_hf_bare", path, "jsonl", spm_path=bare,
                                        chat_template="tokenizer")
  with pytest.raises(ValueError, match=r"chat_template='tokenizer' .* but spm_path=None is not "
                                       r"a HF tokenizer \(ByteVocabulary\)"):
    tasks.register_preference_file_task("t_pf_hf_bytes", path, "jsonl",
                                        chat_template="tokenizer")
