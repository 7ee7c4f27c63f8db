"""The experiment files end to end on real-shaped data made here (no download).

tldr.gin: a SentencePiece model trained on generated text, a random-init HuggingFace T5 with
that vocabulary saved by transformers and imported, TL;DR-format SFT and comparison files whose
posts are 100-300 tokens; every stage runs at tiny sizes from the one experiment file, and the
test checks that every stage used the experiment's lengths and vocabulary. hh.gin: its tasks
(prompt = shared prefix, a validation split carved). (jsonl.gin runs end to end from an
installed wheel: tests/test_package.py.)
"""

import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import helpers
import realdata
from rso_jax import errors
from rso_jax import runs
from rso_jax import checkpoints, cli, pipeline, train
from rso_jax.tasks import preference_files, prompt_split, vocab as vocab_lib

LENGTHS = {"inputs": 256, "targets": 24}  # posts + header are 120-330 tokens: some are cut
TINY_RUN = [*helpers.TINY_EXPERIMENT, f"--gin.TASK_FEATURE_LENGTHS={LENGTHS!r}"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  d = tmp_path_factory.mktemp("realdata")
  spm = realdata.make_spm(d / "spm")
  files = realdata.make_tldr_files(d / "tldr", spm, n_train=20, n_val=6)
  return {"spm": spm, "tldr": files, "t5": realdata.make_hf_t5(d / "t5", spm),
          "trl": realdata.make_trl_jsonl(d / "trl", n=40), "hh": realdata.make_hh_jsonl(d / "hh")}


def _unique_posts(path):
  seen = []
  with open(path, encoding="utf-8") as f:
    for line in f:
      o = json.loads(line)
      p = preference_files.tldr_prompt(o["info"]["subreddit"], o["info"]["title"],
                                       o["info"]["post"])
      if p not in seen:
        seen.append(p)
  return seen


def _tldr_argv(data, run_dir, *extra):
  f = data["tldr"]
  return ["--gin_file=experiments/tldr.gin", f'--gin.RUN_DIR="{run_dir}"',
          f'--gin.TLDR_SFT_TRAIN="{f["sft_train"]}"',
          f'--gin.TLDR_SFT_VALIDATION="{f["sft_validation"]}"',
          f'--gin.COMPARISONS_TRAIN="{f["comparisons_train"]}"',
          f'--gin.COMPARISONS_VALIDATION="{f["comparisons_validation"]}"',
          f'--gin.SPM_PATH="{data["spm"]}"', f'--gin.PRETRAINED_CHECKPOINT="{data["t5"]}"',
          *TINY_RUN, *extra]


def test_tldr_experiment_runs_every_stage_on_its_own_configuration(data, tmp_path, capsys):
  run = tmp_path / "tldr"
  assert train.main(_tldr_argv(data, run)) == 0, capsys.readouterr().err
  out = capsys.readouterr().out
  vocab = vocab_lib.get_vocabulary(data["spm"])
  spec = {"sentencepiece"}

  # SFT, reward model, policy: the experiment's tasks, lengths, vocabulary and network.
  t5 = checkpoints.read_manifest(data["t5"])
  expected = {"sft": ("seq2seq", "tldr_sft", LENGTHS),
              "reward_bt": ("bt_rm", "tldr_comparisons.rest0.2", dict(LENGTHS, targets=25)),
              "judge": ("bt_rm", "tldr_comparisons.judge0.2", dict(LENGTHS, targets=25)),
              "rso_hinge": ("policy", "rso_pairs", LENGTHS)}
  for d, (kind, task, lengths) in expected.items():
    m = checkpoints.read_manifest(str(run / d))
    assert (m.kind, m.task, dict(m.feature_lengths)) == (kind, task, lengths), d
    assert {m.vocabulary["type"]} == spec and m.network == t5.network, d
    assert open(m.get_vocabulary().sentencepiece_model_file, "rb").read() == open(
        data["spm"], "rb").read(), d
  assert "initialized params from" in out  # SFT and reward model start from the import
  # The judge and the proxy: two sides of one prompt split, recorded in both manifests.
  splits = {d: checkpoints.read_manifest(str(run / d)).data_split for d in ("reward_bt", "judge")}
  assert splits["judge"]["side"] == "judge" and splits["reward_bt"]["side"] == "rest"
  assert {k: v for k, v in splits["judge"].items() if k != "side"} == {
      k: v for k, v in splits["reward_bt"].items() if k != "side"}
  assert splits["judge"]["source"] == "tldr_comparisons" and splits["judge"]["fraction"] == 0.2

  # Sampling: every train post once (deduplicated), cut ones counted, none dropped.
  samples = glob.glob(str(run / "samples" / "rso_sample_rank-*"))
  assert len(samples) == 1
  manifest = json.loads(open(os.path.join(samples[0], "manifest.json")).read())
  stats = json.loads(open(os.path.join(samples[0], "stats.json")).read())
  all_posts = _unique_posts(data["tldr"]["comparisons_train"])
  n_comparisons = sum(1 for _ in open(data["tldr"]["comparisons_train"]))
  assert len(all_posts) == 20 < n_comparisons  # the comparisons repeat posts
  # The judge's posts (a hash of the prompt below 0.2) are held out of the sampling.
  held_out = prompt_split.sides(all_posts, 0.2)
  posts = held_out["rest"]
  assert 0 < len(held_out["judge"]) < len(all_posts)
  assert manifest["prompts_task"] == "tldr_posts.rest0.2"
  assert manifest["num_prompts"] == len(posts)
  assert (manifest["input_length"], manifest["max_decode_length"]) == (256, 24)
  assert manifest["vocabulary"]["type"] == "sentencepiece"
  too_long = sum(len(vocab.encode(p)) + 1 > LENGTHS["inputs"] for p in posts)
  assert 0 < too_long < len(posts)
  assert stats["prompts"] == len(posts) and stats["prompts_truncated"] == too_long
  assert stats["reward_unscorable"] == 0 and stats["pairs"] > 0
  assert not any(k.startswith("golden/") for k in stats)  # no golden reward on real data

  # The pairs: every candidate text re-encodes to exactly its tokens under the experiment's
  # SentencePiece model (the random T5's decodes that did not were retokenized and counted);
  # rewards differ between the candidates of one prompt.
  records = helpers.sample_records(samples[0])
  assert len(records) == stats["pairs"]
  assert 0 < stats["retokenized"] <= stats["candidates"]
  assert stats["not_retokenizable"] < stats["candidates"]
  by_prompt = {}
  for r in records:
    for side in ("chosen", "rejected"):
      tokens = [int(t) for t in r[side] if t != vocab.eos_id]
      text = r[f"{side}_pretokenized"].decode()
      assert list(vocab.encode(text)) == tokens and vocab.decode(tokens) == text
    prompt = r["inputs_pretokenized"].decode()
    assert prompt in posts or any(p.startswith(prompt[:200]) for p in posts)
    by_prompt.setdefault(prompt, set()).update(
        {float(r["chosen_reward"]), float(r["rejected_reward"])})
  assert all(np.isfinite(list(v)).all() for v in by_prompt.values())
  assert all(len(v) > 1 for v in by_prompt.values()), by_prompt  # per-prompt rewards differ

  # Evaluation: the filtered validation posts with their human summaries (the references), at
  # the experiment's lengths, under the proxy and the judge.
  report = json.loads((run / "eval_rso_hinge.json").read_text())
  assert report["prompts_task"] == "tldr_sft" and report["split"] == "validation"
  assert report["num_prompts"] == 6 and report["prompts_in_split"] == 6
  assert (report["input_length"], report["max_decode_length"]) == (256, 24)
  assert report["has_proxy"] and report["has_judge"] and report["has_references"]
  assert not report["has_golden"]
  assert report["judge_path"] == str(run / "judge")
  for decoding in ("greedy", "sample"):
    res = report["results"][decoding]
    for vs in ("vs_sft", "vs_sft_targets"):
      for who in ("proxy", "judge"):  # every response read whole by both reward models
        assert res[f"{vs}/{who}_unscorable"] == 0 and res[f"{vs}/{who}_coverage"] == 1.0
        lo, hi = res[f"{vs}/{who}_ci"]
        assert 0.0 <= lo <= res[f"{vs}/{who}"] <= hi <= 1.0, (decoding, vs, who)
      assert 0.0 <= res[f"{vs}/judge_lc"] <= 1.0
  assert report["reward_model/responses_too_long"] == 0
  # The judge's prompts were read and found in no other stage's data.
  check = report["judge/split"]
  val_posts = _unique_posts(data["tldr"]["comparisons_validation"])
  assert check["judge_prompts"] == len(held_out["judge"]) + len(
      prompt_split.sides(val_posts, 0.2)["judge"])
  assert check["the sampled prompts"]["prompts"] == len(posts)
  assert all(check[w]["shared_with_judge"] == 0 for w in
             ("the proxy's training pairs", "the sampled prompts", "the policy's pairs"))
  assert "judge/heldout_pairs" in report
  # Every evaluation prompt in the examples file; the table carries the judge and coverage.
  rows = (run / "eval_rso_hinge_examples.jsonl").read_text().splitlines()
  assert len(rows) == 6 and all(json.loads(r)["reference"] for r in rows)
  assert "judge win% [95% CI]" in out and "judge LC%" in out and "cov%" in out
  assert "reference" in out
  assert report["results"]["sample"]["unfinished/policy"] > 0  # full-length responses among them

  # The policy starts at π_sft: the converted T5's dropout 0.1 stays out of the preference
  # loss, so hinge-norm is 1 and the implicit rewards 0 (two steps at a warm-up learning rate).
  first = json.loads((run / "rso_hinge" / "metrics.jsonl").read_text().splitlines()[0])
  assert checkpoints.read_manifest(str(run / "rso_hinge")).network.dropout_rate == 0.1
  assert abs(first["loss"] - 1.0) < 0.02 and abs(first["rewards/chosen"]) < 0.02, first
  assert "starts away from the reference" not in out


def test_a_reused_stage_must_match_the_experiment(data, tmp_path, capsys):
  """An SFT checkpoint trained for another task or lengths is not silently reused."""
  run = tmp_path / "tldr"
  argv = _tldr_argv(data, run)
  cli.configure_gin(cli.parse_flags(argv).files, cli.parse_flags(argv).bindings, [])
  sft = pipeline.stage_bindings(train.train, "sft")
  m = checkpoints.read_manifest(data["t5"])
  other = checkpoints.Manifest(kind="seq2seq", network=m.network, vocabulary=m.vocabulary,
                               feature_lengths={"inputs": 32, "targets": 32},
                               task="tldr_sft", directory=None)
  os.makedirs(sft["model_dir"])
  checkpoints.write_manifest(sft["model_dir"], other)
  open(os.path.join(sft["model_dir"], runs.COMPLETED), "w").write("4\n")
  rc = train.main(argv)
  err = capsys.readouterr().err
  assert rc == 2, err
  assert "stage 'sft'" in err and "its feature lengths are {'inputs': 32, 'targets': 32}" in err
  assert "the stage's are {'inputs': 256, 'targets': 24}" in err
  # The same checkpoint given by the user (outside RUN_DIR) is theirs to reuse: a note only.
  pipeline.check_reusable("sft", sft["model_dir"], sft["model"], "tldr_sft", LENGTHS, own=False)
  assert "note: " in capsys.readouterr().out


def test_hh_experiment_tasks(data, tmp_path):
  """hh.gin's tasks: prompt = the transcripts' shared prefix, a validation split carved from
  train by prompt, the prompts task deduplicated; the whole config parses and reads every macro."""
  cli.configure_gin(["experiments/hh.gin"], [
      f"HH_TRAIN = '{data['hh']}'", "VALIDATION_FRACTION = 0.3", f"SPM_PATH = '{data['spm']}'",
      f"PRETRAINED_CHECKPOINT = '{data['t5']}'", f"RUN_DIR = '{tmp_path}'"], [])
  assert not cli.unread_macros()
  import seqio  # pylint: disable=g-import-not-at-top
  def inputs(task, split):
    ds = seqio.get_mixture_or_task(task).get_dataset(None, split=split, shuffle=False)
    return [ex["inputs_pretokenized"].decode() for ex in ds.as_numpy_iterator()]
  train_p, val_p = inputs("hh_prompts", "train"), inputs("hh_prompts", "validation")
  assert train_p and val_p and not set(train_p) & set(val_p)
  assert all(p.endswith("\n\nAssistant:") for p in train_p + val_p)
  assert set(inputs("hh_pairs", "validation")) == set(val_p)
  args = pipeline.stage_bindings(train.train, "reward")
  assert args["mixture_or_task_name"] == "hh_pairs.rest0.2"  # less the judge's prompts
  assert dict(args["task_feature_lengths"]) == {"inputs": 1024, "targets": 257}


def _bad_trl_files(src, directory):
  """{kind: (file, the reason its line names, extra flags)}: the TRL file with one bad line."""
  lines = open(src, "rb").read().splitlines()
  row = json.loads(lines[2])
  def write(name, third, extra=()):
    path = directory / f"{name}.jsonl"
    path.write_bytes(b"\n".join(lines[:2] + ([third] if third is not None else [])
                                + lines[3:]) + b"\n" if third is not False else b"")
    return str(path)
  no_chosen = json.dumps({k: v for k, v in row.items() if k != "chosen"}).encode()
  same = json.dumps(dict(row, rejected=row["chosen"])).encode()
  blank = json.dumps(dict(row, chosen=" ")).encode()
  skip = ["--gin.tasks.register_preference_file_task.bad_records='skip'"]
  return {
      "empty": (write("empty", False), ":1: no records: the file is empty", []),
      "missing_field": (write("missing", no_chosen), ":3: missing field 'chosen'", []),
      "identical": (write("identical", same), ":3: chosen and rejected responses are identical",
                    []),
      "non_utf8": (write("non_utf8", lines[2].replace(b'"prompt": "', b'"prompt": "\xff', 1)),
                   ":3: invalid UTF-8 at byte 13 (0xff)", []),
      "invalid_json": (write("invalid_json", lines[2][:-1]), ":3: invalid JSON", []),
      "prompt_only": (write("prompt_only", json.dumps({"prompt": row["prompt"]}).encode()),
                      ":3: missing field 'response'", []),
      "skip_budget": (write("skip_budget", blank), ":3: the chosen response is empty", skip),
  }


def _jsonl_argv(data, run, path, *extra):
  return ["--gin_file=experiments/jsonl.gin", f'--gin.RUN_DIR="{run}"',
          f'--gin.DATA_TRAIN="{path}"', f'--gin.SPM_PATH="{data["spm"]}"',
          f'--gin.PRETRAINED_CHECKPOINT="{data["t5"]}"', *helpers.TINY_EXPERIMENT,
          "--gin.TASK_FEATURE_LENGTHS={'inputs': 96, 'targets': 24}", *extra]


BAD_KINDS = ["empty", "missing_field", "identical", "non_utf8", "invalid_json", "prompt_only",
             "skip_budget"]


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_a_bad_data_file_fails_the_stage_in_one_line_before_any_model(data, tmp_path, capsys,
                                                                       monkeypatch, kind):
  """Each kind of bad file through the main job, its first stage run in this process
  (`--stage=sft`, what the stage's own process runs): the stage exits 2 with one line
  `<file>:<line>: <reason>` before it builds a model; the main job exits 3 with one line that
  carries it; nothing is written. The pairs task is checked by the SFT stage too, so identical
  responses fail it."""
  path, reason, extra = _bad_trl_files(data["trl"], tmp_path)[kind]
  run = tmp_path / "run"
  argv = _jsonl_argv(data, run, path, *extra)
  rc = train.main([*argv, "--stage=sft"])
  out, err = capsys.readouterr()
  assert rc == 2, err
  lines = [l for l in err.strip().splitlines() if not cli.is_noise(l)]
  assert len(lines) == 1 and lines[0].startswith("rso_jax.train: error: "), err
  assert f"{path}{reason}" in lines[0], lines[0]
  if kind == "skip_budget":
    assert "1 of 40 records (2.50%) are bad, more than max_bad_fraction=0.01" in lines[0]
  assert "initialized params" not in out and not run.exists()

  stage_line = lines[0].split(": error: ", 1)[1]
  def stage_in_process(name, module, extra_bindings=(), flags=None):
    assert (name, module, tuple(extra_bindings), flags) == ("sft", "rso_jax.train", (), None)
    assert train.main([*cli.invocation_flags(), f"--stage={name}"]) == 2
    raise errors.StageFailed(name, 2, capsys.readouterr().err.split(": error: ", 1)[1].strip())
  monkeypatch.setattr(cli, "run_stage", stage_in_process)
  assert train.main(argv) == 3
  err = capsys.readouterr().err
  assert err.strip() == ("rso_jax.train: error: stage 'sft' failed with exit code 2: "
                         f"{stage_line} (its output is above, prefixed [sft]; fix it and rerun "
                         "the same command: finished stages are reused)"), err
  assert not run.exists()


def test_the_main_job_reports_a_bad_record_as_its_first_stage_failing(data, tmp_path):
  """`python -m rso_jax.train --gin_file=experiments/jsonl.gin` on a file with a bad line:
  the SFT stage checks the files before it builds a model and exits 2; the main job exits 3
  with one line that carries the stage's `<file>:<line>: <reason>`."""
  path, reason, _ = _bad_trl_files(data["trl"], tmp_path)["missing_field"]
  run = tmp_path / "run"
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  proc = subprocess.run([sys.executable, "-m", "rso_jax.train", *_jsonl_argv(data, run, path)],
                        cwd=repo, capture_output=True, text=True, timeout=300,
                        env=dict(os.environ, PYTHONPATH=repo))
  assert proc.returncode == 3, proc.stderr
  lines = [l for l in proc.stderr.strip().splitlines() if l.startswith("rso_jax.")]
  assert len(lines) == 1, proc.stderr
  assert lines[0].startswith("rso_jax.train: error: stage 'sft' failed with exit code 2: "
                             f"{path}{reason} (format 'jsonl'"), lines[0]
  assert f"[sft] rso_jax.train: error: {path}{reason}" in proc.stdout
  assert "initialized params" not in proc.stdout and not (run / "sft").exists()

