"""Evaluation: policy == π_sft, win rates under the proxy, the judge and r* recomputed from the
examples, coverage, reports, the examples file, summary and plot (arithmetic: test_win_rates)."""

import json
import os

import numpy as np
import pytest

import helpers
from helpers import GoldenScorer, LengthScorer
from rso_jax import errors
from rso_jax import checkpoints, decoding, evaluate, models, network, reports, reward_models
from rso_jax.tasks import embedded, synthetic
from rso_jax.tasks import vocab as vocab_lib

CFG = network.T5Config(emb_dim=64, num_heads=2, head_dim=16, mlp_dim=64,
                       num_encoder_layers=1, num_decoder_layers=1)
TASK_PREFIX = "synthetic_evaltest"
TASK = f"{TASK_PREFIX}_prompts"
NUM_VALIDATION = 16
KW = dict(prompts_task=TASK, split="validation", batch_size=8, max_decode_length=12,
          kl_samples_per_prompt=8)


def _save(path, seed):
  return helpers.save(path, models.Seq2SeqModel(CFG), {"inputs": 32, "targets": 12}, seed=seed)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """Two evaluations into one output dir: policy == π_sft, then a different policy."""
  embedded.register_synthetic_tasks(num_train_prompts=20, num_validation_prompts=NUM_VALIDATION,
                                    num_test_prompts=4, prefix=TASK_PREFIX)
  root = tmp_path_factory.mktemp("eval")
  sft = _save(root / "sft", 0)
  other = _save(root / "other", 1)
  out = str(root / "out")
  same = evaluate.evaluate_policy(sft, sft, scorer=GoldenScorer(), num_prompts=20,
                                  output_dir=out, name="same", **KW)
  diff = evaluate.evaluate_policy(other, sft, scorer=LengthScorer(), judge=GoldenScorer(),
                                  num_prompts=13, output_dir=out, name="other",
                                  num_examples=13, **KW)
  return dict(sft=sft, other=other, out=out, same=same, diff=diff)


class HalfBlindScorer(LengthScorer):
  """Cannot read a response longer than 7 characters: NaN, as a reward model whose response
  length is too short."""

  def prefer(self, prompts, y1, y2):
    p = super().prefer(prompts, y1, y2)
    return np.where([len(a) > 7 or len(b) > 7 for a, b in zip(y1, y2)], np.nan, p)


# ---------------------------------------------------------------------------------- the table


def test_format_table_lists_every_policy_and_decoding():
  rep = {"name": "p1", "kl/mean": 0.25, "kl/stderr": 0.01, "golden/sft_targets": 0.6,
         "results": {"greedy": {"vs_sft/proxy": 0.75, "vs_sft/golden": 0.5,
                                "golden/policy": 0.7, "golden/sft": 0.65}}}
  table = reports.format_table([rep, dict(rep, name="p2", results={})])
  assert "p1" in table and "greedy" in table and "75.0" in table and "0.250 ± 0.010" in table
  assert reports.format_table({"p1": rep}) == reports.format_table(rep)


def test_format_table_prints_intervals_and_marks_low_coverage():
  res = {"vs_sft/proxy": 0.5, "vs_sft/proxy_ci": [0.2, 0.8], "vs_sft/proxy_coverage": 0.25,
         "vs_sft/judge": 0.625, "vs_sft/judge_ci": [0.5, 0.75], "vs_sft/judge_coverage": 1.0,
         "vs_sft/judge_lc": 0.55, "vs_sft/judge_lc_ci": [0.4, 0.7],
         "vs_sft_targets/judge": 0.4, "vs_sft_targets/judge_coverage": 0.95}
  rep = {"name": "p", "has_proxy": True, "has_judge": True, "results": {"sample": res},
         "judge/heldout_accuracy": 0.81, "judge/heldout_pairs": 120}
  table = reports.format_table(rep)
  rows = {line.split()[2]: line for line in table.splitlines() if line.startswith("p ")}
  assert "50.0 [20.0, 80.0]" in rows["π_sft"] and " 25*" in rows["π_sft"]
  assert "62.5 [50.0, 75.0]" in rows["π_sft"] and "55.0 [40.0, 70.0]" in rows["π_sft"]
  assert " 100 " in rows["π_sft"] and " 95 " in rows["reference"]
  assert "95*" not in table and "under 90%" in table
  assert "accuracy 0.810 on 120 held-out comparisons" in table
  # No judge in any report: no judge columns.
  no_judge = {k: v for k, v in res.items() if "judge" not in k}
  assert "judge" not in reports.format_table({"name": "q", "results": {"sample": no_judge}})


# ---------------------------------------------------------------------------------- end to end


def test_policy_equal_to_sft_ties_and_has_zero_kl(runs):
  r = runs["same"]
  assert r["num_prompts"] == NUM_VALIDATION  # 20 asked, the split has 16: all used, noted
  assert any("only 16" in n for n in r["notes"])
  for mode in ("greedy", "sample"):
    res = r["results"][mode]
    assert res["vs_sft/identical_fraction"] == 1.0
    assert res["vs_sft/golden"] == 0.5 and res["vs_sft/proxy"] == 0.5
    assert res["golden/policy"] == res["golden/sft"]
  assert abs(r["kl/mean"]) < 1e-4
  assert r["kl/num_samples"] == NUM_VALIDATION * 8


def _oracle_win_rate(pairs):
  """Plain-Python win rate: a point for a strictly better score, half a point for a tie."""
  return sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in pairs) / len(pairs)


def test_different_policy_gives_finite_kl_and_valid_rates(runs):
  r = runs["diff"]
  assert r["num_prompts"] == 13 and not any("only" in n for n in r["notes"])
  assert np.isfinite(r["kl/mean"]) and np.isfinite(r["kl/stderr"])
  assert r["kl/mean"] > 0.0  # two random networks: KL is large, its estimate positive
  ex = r["examples"]
  assert len(ex) == 13
  for mode in ("greedy", "sample"):
    res = r["results"][mode]
    for k in ("vs_sft/proxy", "vs_sft/golden", "vs_sft_targets/proxy",
              "vs_sft_targets/golden"):
      assert 0.0 <= res[k] <= 1.0, (mode, k, res[k])
    # Recomputed from the decoded texts: the length proxy and r*, ties (and identical texts)
    # count 1/2.
    for key, other in (("vs_sft", lambda e: e[mode]["sft"]),
                       ("vs_sft_targets", lambda e: e["reference"])):
      lens = [(len(e[mode]["policy"]), len(other(e))) for e in ex]
      gold = [(synthetic.golden_reward(e["prompt"], e[mode]["policy"]),
               synthetic.golden_reward(e["prompt"], other(e))) for e in ex]
      assert res[f"{key}/proxy"] == pytest.approx(_oracle_win_rate(lens)), (mode, key)
      assert res[f"{key}/golden"] == pytest.approx(_oracle_win_rate(gold)), (mode, key)
      # The judge is r* itself (GoldenScorer): its rate is the golden one, it always agrees
      # with r*, every comparison is scored.
      assert res[f"{key}/judge"] == pytest.approx(res[f"{key}/golden"]), (mode, key)
      assert res[f"{key}/judge_coverage"] == 1.0 and res[f"{key}/proxy_coverage"] == 1.0
      if any(a != b for a, b in gold):
        assert res[f"{key}/judge_agreement_with_golden"] == 1.0
      lo, hi = res[f"{key}/judge_ci"]
      assert lo <= res[f"{key}/judge"] <= hi
      assert 0.0 <= res[f"{key}/judge_lc"] <= 1.0
  # Random networks emit texts of varying length: the proxy comparison is not all ties.
  assert any(r["results"][m][f"{k}/proxy"] != 0.5 for m in ("greedy", "sample")
             for k in ("vs_sft", "vs_sft_targets"))


def test_results_match_independent_decoding_of_the_real_rows(runs):
  """13 prompts in batches of 8 (3 pad rows): r* means equal an unbatched recomputation."""
  data = synthetic.build_environment(synthetic.EnvConfig(
      num_train_prompts=20, num_validation_prompts=NUM_VALIDATION, num_test_prompts=4))
  prompts, targets = list(data.prompts["validation"][:13]), list(data.sft["validation"][:13])
  vocab = vocab_lib.get_vocabulary()
  toks = np.stack([np.pad(np.array(vocab.encode(p) + [1], np.int32), (0, 32 - len(p) - 1))
                   for p in prompts])
  manifest, params = checkpoints.load(runs["other"])
  out = decoding.greedy(network.Transformer(manifest.network), params, toks,
                        max_decode_length=12, vocab_size=vocab.vocab_size)
  ys = []
  for row in np.asarray(out.tokens[:, 0]).tolist():
    ys.append(vocab.decode(row[:row.index(1)] if 1 in row else [t for t in row if t]))
  g_pol = synthetic.golden_rewards(prompts, ys)
  g_tgt = synthetic.golden_rewards(prompts, targets)
  res = runs["diff"]["results"]["greedy"]
  assert res["golden/policy"] == pytest.approx(np.mean(g_pol), abs=1e-6)
  assert runs["diff"]["golden/sft_targets"] == pytest.approx(np.mean(g_tgt), abs=1e-6)
  assert res["vs_sft_targets/golden"] == pytest.approx(_oracle_win_rate(list(zip(g_pol, g_tgt))))
  assert [e["greedy"]["policy"] for e in runs["diff"]["examples"]] == ys


def test_writes_report_summary_and_plot(runs):
  out = runs["out"]
  for name in ("same", "other"):
    with open(os.path.join(out, f"eval_{name}.json")) as f:
      rep = json.load(f)
    assert rep["name"] == name and "greedy" in rep["results"]
  with open(os.path.join(out, "eval_summary.json")) as f:
    summary = json.load(f)
  assert sorted(summary) == ["other", "same"]
  assert summary["other"]["kl/mean"] == pytest.approx(runs["diff"]["kl/mean"])
  with open(os.path.join(out, "eval_plot.png"), "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  assert not [n for n in os.listdir(out) if ".tmp" in n]
  table = reports.format_table(reports.load_summary(out))
  assert "same" in table and "other" in table


def test_examples_file_has_one_line_per_prompt(runs):
  with open(os.path.join(runs["out"], "eval_other_examples.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  assert len(rows) == 13 and runs["diff"]["num_prompts"] == 13
  assert rows == runs["diff"]["examples"]  # num_examples=13: the report keeps them all
  for row in rows:
    assert row["prompt"] and "reference" in row
    for mode in ("greedy", "sample"):
      e = row[mode]
      assert e["policy_length"] >= 0 and e["sft_length"] >= 0
      assert e["golden_policy"] == pytest.approx(synthetic.golden_reward(row["prompt"],
                                                                         e["policy"]))
      for key in ("vs_sft", "vs_sft_targets"):
        assert set(e[key]) == {"proxy", "judge"}
  with open(os.path.join(runs["out"], "eval_same_examples.jsonl")) as f:
    assert len(f.readlines()) == NUM_VALIDATION


def test_coverage_counts_what_the_reward_model_could_not_read(runs):
  r = evaluate.evaluate_policy(runs["other"], runs["sft"], scorer=HalfBlindScorer(),
                               num_prompts=16, decoding=("sample",), num_examples=16, **KW)
  res = r["results"]["sample"]
  texts = [(e["sample"]["policy"], e["sample"]["sft"]) for e in r["examples"]]
  readable = [(a, b) for a, b in texts if a == b or (len(a) <= 7 and len(b) <= 7)]
  assert 0 < len(readable) < len(texts)  # some, not all, comparisons could be read
  assert res["vs_sft/proxy_coverage"] == pytest.approx(len(readable) / len(texts))
  assert res["vs_sft/proxy_unscorable"] == len(texts) - len(readable)
  assert res["vs_sft/proxy"] == pytest.approx(
      _oracle_win_rate([(len(a), len(b)) for a, b in readable]))
  marked = f"{100 * len(readable) / len(texts):.0f}" + (
      "*" if len(readable) / len(texts) < 0.9 else "")
  assert marked in reports.format_table(r)


def test_missing_checkpoint_names_the_path(runs, tmp_path):
  missing = str(tmp_path / "no_such_policy")
  with pytest.raises(errors.CheckpointError, match="not found.*no_such_policy"):
    evaluate.evaluate_policy(missing, runs["sft"], scorer=GoldenScorer(), **KW)
  with pytest.raises(ValueError, match="decoding='beam'"):
    evaluate.evaluate_policy(runs["sft"], runs["sft"], decoding=("beam",), **KW)


def test_cli_prints_table_without_reward_model(runs, tmp_path, capsys):
  rc = evaluate.main([f"--policy={runs['other']}", f"--sft={runs['sft']}",
                      f"--prompts_task={TASK}", "--num_prompts=8", "--batch_size=8",
                      "--max_decode_length=12", f"--output_dir={tmp_path}", "--name=cli"])
  out = capsys.readouterr().out
  assert rc == 0
  assert "no reward model given" in out and "cli" in out and "greedy" in out
  with open(tmp_path / "eval_cli.json") as f:
    rep = json.load(f)
  assert rep["has_proxy"] is False and "vs_sft/proxy" not in rep["results"]["sample"]
  assert 0.0 <= rep["results"]["sample"]["vs_sft/golden"] <= 1.0


def test_cli_refuses_checkpoints_of_the_wrong_kind(runs, tmp_path, capsys):
  bt = helpers.save(tmp_path / "bt", reward_models.BradleyTerryRewardModel(CFG),
                    {"inputs": 32, "targets": 32})
  args = [f"--prompts_task={TASK}", "--num_prompts=8", "--batch_size=8"]
  for bad in ([f"--policy={bt}", f"--sft={runs['sft']}"],
              [f"--policy={runs['sft']}", f"--sft={runs['sft']}", f"--reward={runs['sft']}"]):
    assert evaluate.main(bad + args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "checkpoint" in err and "needs" in err, err


def test_cli_reads_an_experiments_tasks_from_its_gin_file(runs, tmp_path, capsys):
  """--gin_file / --gin.X as for training: the experiment's tasks are registered, so
  --prompts_task can name one; without the file the task is unknown (exit 2)."""
  prompts = tmp_path / "prompts.jsonl"
  prompts.write_text("".join(json.dumps({"prompt": f"cow emu {i}"}) + "\n" for i in range(6)))
  exp = tmp_path / "exp.gin"
  exp.write_text(
      "from __gin__ import dynamic_registration\n"
      "from rso_jax import tasks\n"
      "PROMPTS = %gin.REQUIRED\n"
      "tasks.experiment_tasks.tasks = [@mine/tasks.register_preference_file_task()]\n"
      "mine/tasks.register_preference_file_task:\n"
      "  name = 'evaltest_file_prompts'\n"
      "  path = {'validation': %PROMPTS}\n"
      "  format = 'jsonl'\n"
      "  kind = 'prompts'\n")
  args = [f"--policy={runs['other']}", f"--sft={runs['sft']}", "--batch_size=8",
          "--prompts_task=evaltest_file_prompts", "--max_decode_length=12",
          "--kl_samples_per_prompt=0", "--decoding=greedy", f"--output_dir={tmp_path / 'out'}"]
  assert evaluate.main(args) == 2
  assert "evaltest_file_prompts" in capsys.readouterr().err
  assert evaluate.main([f"--gin_file={exp}", f"--gin.PROMPTS='{prompts}'", *args]) == 0
  report = json.loads((tmp_path / "out" / "eval_other.json").read_text())
  assert report["prompts_task"] == "evaltest_file_prompts" and report["num_prompts"] == 6
