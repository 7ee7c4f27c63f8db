"""Evaluation: win-rate arithmetic, KL estimate, policy == π_sft, reports, summary and plot."""

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
  diff = evaluate.evaluate_policy(other, sft, scorer=LengthScorer(), num_prompts=13,
                                  output_dir=out, name="other", num_examples=13, **KW)
  return dict(sft=sft, other=other, out=out, same=same, diff=diff)


# ---------------------------------------------------------------------------------- pure parts


def test_win_rate_matches_hand_computation():
  # a > b, tie, a < b, tie -> (1 + 0.5 + 0 + 0.5) / 4.
  assert evaluate.win_rate([1, 2, 3, 4], [0, 2, 5, 4]) == 0.5
  # 2 wins, 1 tie of 3 -> 2.5 / 3.
  assert evaluate.win_rate([3.0, 1.0, 2.0], [1.0, 1.0, 1.0]) == pytest.approx(2.5 / 3)
  assert evaluate.win_rate([0.0], [1.0]) == 0.0
  np.testing.assert_array_equal(evaluate.win_outcomes([1, 1, 1], [0, 1, 2]), [1, 0.5, 0])
  # Pairwise judge: > 0.5 wins, == 0.5 ties, identical texts tie whatever the judge says.
  np.testing.assert_array_equal(
      evaluate.proxy_outcomes([0.9, 0.5, 0.2, 0.1], [False, False, False, True]),
      [1.0, 0.5, 0.0, 0.5])


def test_win_rate_rejects_bad_input():
  with pytest.raises(ValueError, match="non-finite score at index 1"):
    evaluate.win_rate([1.0, np.nan], [0.0, 0.0])
  with pytest.raises(ValueError, match="zero comparisons"):
    evaluate.win_rate([], [])


def test_kl_estimate_matches_numpy_oracle():
  rng = np.random.default_rng(0)
  lp, ls = rng.normal(size=(5, 3)), rng.normal(size=(5, 3))
  mean, se = evaluate.kl_estimate(lp, ls)
  per_prompt = [np.mean(lp[i] - ls[i]) for i in range(5)]
  m = sum(per_prompt) / 5
  oracle_se = np.sqrt(sum((p - m) ** 2 for p in per_prompt) / 4 / 5)
  assert mean == pytest.approx(np.mean(lp - ls))
  assert se == pytest.approx(oracle_se)
  with pytest.raises(ValueError, match="equal"):
    evaluate.kl_estimate(lp, ls[:, :2])


def test_format_table_lists_every_policy_and_decoding():
  rep = {"name": "p1", "kl/mean": 0.25, "kl/stderr": 0.01, "golden/sft_targets": 0.6,
         "results": {"greedy": {"vs_sft/proxy": 0.75, "vs_sft/golden": 0.5,
                                "golden/policy": 0.7, "golden/sft": 0.65}}}
  table = reports.format_table([rep, dict(rep, name="p2", results={})])
  assert "p1" in table and "greedy" in table and "75.0" in table and "0.250 ± 0.010" in table
  assert reports.format_table({"p1": rep}) == reports.format_table(rep)


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
    for other, key in ((f"sft_{mode}", "vs_sft"), ("sft_target", "vs_sft_targets")):
      lens = [(len(e[f"policy_{mode}"]), len(e[other])) for e in ex]
      gold = [(synthetic.golden_reward(e["prompt"], e[f"policy_{mode}"]),
               synthetic.golden_reward(e["prompt"], e[other])) for e in ex]
      assert res[f"{key}/proxy"] == pytest.approx(_oracle_win_rate(lens)), (mode, key)
      assert res[f"{key}/golden"] == pytest.approx(_oracle_win_rate(gold)), (mode, key)
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
  assert res["vs_sft_targets/golden"] == pytest.approx(evaluate.win_rate(g_pol, g_tgt))
  assert [e["policy_greedy"] for e in runs["diff"]["examples"]] == ys


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
