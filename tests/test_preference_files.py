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
             r"not valid UTF-8 \(byte 0xe9 at byte 31 of the line\)"),
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
      r".*budget\.jsonl:100: not valid UTF-8")):
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
