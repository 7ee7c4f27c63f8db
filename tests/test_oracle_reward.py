"""rso_jax.oracle_reward, tasks.oracle and inference.OracleRewardModel: the embedded task's
oracle reward r*/τ and the noisy proxies calibrated to an accuracy on π_sft's samples."""
import math

import numpy as np
import pytest
import tensorflow as tf

import helpers
from rso_jax import checkpoints, inference, models, oracle_reward, pipeline, reward_models
from rso_jax import sample
from rso_jax.errors import CheckpointError, ConfigError
from rso_jax.tasks import generated, oracle, synthetic

LENGTHS = {"inputs": 8, "targets": 8}
PROMPTS = ["owl cat ram", "ant bee", "pig dog hog hen"]
RESPONSES = [["owl cat ram", "cat owl", "owl dog"], ["ant bee", "bee bee", "cow"],
             ["pig dog", "hog hen pig dog", "pig pig pig"]]


@pytest.fixture(scope="module")
def sft(tmp_path_factory):
  """A tiny π_sft of the embedded task (its word vocabulary), trained 300 steps: its samples
  are lexicon words with EOS, like the real one's."""
  return helpers.shared_words_sft(tmp_path_factory)


def test_the_oracle_scores_r_star_over_tau_and_prefers_as_the_annotator(tmp_path, capsys):
  path = str(tmp_path / "oracle")
  settings = oracle_reward.build(path, task="synthetic_prompts")
  assert settings["noise_std"] == 0.0 and settings["tau"] == synthetic.BT_TEMPERATURE
  rm = inference.load(path, expect=checkpoints.REWARD_KINDS, role="reward model")
  assert rm.kind == "oracle_rm" and checkpoints.read_manifest(path).network is None
  want = synthetic.golden_rewards(PROMPTS, RESPONSES).astype(np.float64) / 0.15
  np.testing.assert_allclose(rm.reward(PROMPTS, RESPONSES), want, rtol=1e-6)
  shifted = rm.reward(PROMPTS, RESPONSES, baselines=[r[0] for r in RESPONSES])
  np.testing.assert_allclose(shifted, want - want[:, :1], rtol=1e-5, atol=1e-5)
  x = [p for p, row in zip(PROMPTS, RESPONSES) for _ in row]
  y1 = [y for row in RESPONSES for y in row]
  y2 = [row[0] for row in RESPONSES for _ in row]
  r1, r2 = synthetic.golden_rewards(x, y1), synthetic.golden_rewards(x, y2)
  np.testing.assert_allclose(rm.prefer(x, y1, y2), synthetic.bt_probability(r1, r2), rtol=1e-5)
  # Rebuilding with the same settings reuses it; other settings are refused, naming both.
  assert oracle_reward.build(path, task="synthetic_prompts") == settings
  with pytest.raises(ConfigError, match="other settings"):
    oracle_reward.build(path, task="synthetic_prompts", tau=0.3)
  # It describes itself; it has no params to write for T5X.
  assert checkpoints.main(["describe", path]) == 0
  assert '"oracle_rm"' in capsys.readouterr().out
  assert checkpoints.main(["to-t5x", path, str(tmp_path / "t5x")]) == 2
  assert "no params to write" in capsys.readouterr().err


def test_an_oracle_of_a_task_without_r_star_or_a_bad_target_is_refused(tmp_path, capsys):
  with pytest.raises(ConfigError, match="no golden reward"):
    oracle_reward.build(str(tmp_path / "a"), task="tldr_prompts")
  with pytest.raises(ConfigError, match="target_accuracy=0.4"):
    oracle_reward.build(str(tmp_path / "b"), task="synthetic_prompts", target_accuracy=0.4)
  with pytest.raises(ConfigError, match="needs --sft_checkpoint"):
    oracle_reward.build(str(tmp_path / "c"), task="synthetic_prompts", target_accuracy=0.9)
  with pytest.raises(SystemExit) as exit_:  # a bad flag: one line, exit status 2
    oracle_reward.main(["--out", str(tmp_path / "d"), "--target_accuracy", "x"])
  assert exit_.value.code == 2 and not (tmp_path / "d").exists()
  helpers.one_line(capsys.readouterr().err, "rso_jax.oracle_reward: error:", "'x'")
  assert oracle_reward.main(["--out", str(tmp_path / "e"), "--target_accuracy", "0.9"]) == 2
  helpers.one_line(capsys.readouterr().err, "rso_jax.oracle_reward: error:", "--sft_checkpoint")
  with pytest.raises(CheckpointError, match="only 'oracle_rm' has no network"):
    checkpoints.Manifest(kind="bt_rm", network=None, vocabulary=None)


def test_the_noise_is_a_fixed_standard_normal_function_of_the_text():
  texts = [(f"p{i % 7}", f"y{i}") for i in range(4000)]
  z = oracle.text_normals(texts, seed=3)
  assert abs(z.mean()) < 0.05 and abs(z.std() - 1.0) < 0.05
  assert abs(np.mean(z > 1.0) - 0.1587) < 0.02  # the normal's tail, not just its moments
  np.testing.assert_array_equal(oracle.text_normals(texts[::-1], seed=3), z[::-1])
  assert not np.allclose(oracle.text_normals(texts, seed=4), z)
  m = inference.oracle_manifest("synthetic_prompts", noise_std=0.5, noise_seed=3)
  rm = inference.OracleRewardModel(m)
  a = rm.reward(PROMPTS, RESPONSES)
  np.testing.assert_array_equal(rm.reward(PROMPTS[::-1], RESPONSES[::-1]), a[::-1])
  exact = synthetic.golden_rewards(PROMPTS, RESPONSES) / 0.15
  z = oracle.text_normals([(p, y) for p, row in zip(PROMPTS, RESPONSES) for y in row], 3)
  np.testing.assert_allclose(a, exact + 0.5 * z.reshape(3, 3), rtol=1e-5)


def test_the_noise_level_solves_the_expected_accuracy_and_matches_a_simulation():
  rng = np.random.default_rng(0)
  gaps = rng.choice([0.0, 0.1, 0.2, 0.3, -0.1, -0.25], size=3000)
  for target in (0.95, 0.85, 0.78):
    sigma = oracle.noise_for_accuracy(gaps, 0.15, target)
    assert oracle.expected_accuracy(gaps, 0.15, sigma) == pytest.approx(target, abs=1e-4)
    g = np.abs(gaps[gaps != 0])
    # An independent oracle: draw the two noises and count the pairs the proxy ranks right.
    z = rng.standard_normal((200, len(g), 2))
    right = (g / 0.15 + sigma * (z[..., 0] - z[..., 1])) > 0
    assert right.mean() == pytest.approx(target, abs=0.005)
  assert oracle.noise_for_accuracy(gaps, 0.15, 1.0) == 0.0
  with pytest.raises(ValueError, match="no pair with unequal r"):
    oracle.expected_accuracy(np.zeros(4), 0.15, 1.0)


def test_calibrated_proxies_reach_their_accuracy_on_held_out_pi_sft_samples(sft, tmp_path):
  """Calibrated on validation prompts' samples, measured on the test prompts' (never seen)."""
  for target in (0.95, 0.85, 0.78):
    path = str(tmp_path / f"proxy{target}")
    settings = oracle_reward.build(path, task="synthetic_prompts", target_accuracy=target,
                                   sft_checkpoint=sft, num_prompts=128)
    assert settings["calibration"]["pairs"] > 500 and settings["noise_std"] > 0
    measured = oracle_reward.measure(path, sft, split="test", num_prompts=128)
    assert measured["pairs"] > 500
    assert measured["accuracy"] == pytest.approx(target, abs=0.03), (target, measured)


def test_the_sampling_stage_labels_with_an_oracle_and_cells_take_exact_pair_counts(sft,
                                                                                     tmp_path):
  path = str(tmp_path / "oracle")
  oracle_reward.build(path, task="synthetic_prompts")
  out = str(tmp_path / "samples")
  summary = sample.run(policy_checkpoint=sft, reward_checkpoint=path, output_dir=out,
                       prompts_task="synthetic_prompts", data_setting="rso_sample_rank",
                       num_candidates=16, num_samples=4, max_prompts=24, batch_prompts=8,
                       prompts_per_shard=8, progress=False)
  records = list(generated.read_records(out))
  assert len(records) == summary["pairs"] >= 12
  for r in records:
    x, yc, yr = r["inputs_pretokenized"], r["chosen_pretokenized"], r["rejected_pretokenized"]
    assert r["chosen_reward"] == pytest.approx(synthetic.golden_reward(x, yc) / 0.15, rel=1e-5)
    assert synthetic.golden_reward(x, yc) >= synthetic.golden_reward(x, yr)
  # A cell's data: exactly the first n pairs, in the order they were sampled.
  taken = generated.take_pairs(out, str(tmp_path / "first"), 10)
  assert taken["pairs"] == 10 and taken["label_agreement"] == 1.0
  kept = list(generated.read_records(str(tmp_path / "first")))
  assert [k["chosen_pretokenized"] for k in kept] == [r["chosen_pretokenized"]
                                                      for r in records[:10]]
  ds = tf.data.TFRecordDataset(tf.io.gfile.glob(str(tmp_path / "first" / "pairs-*")))
  assert sum(1 for _ in ds) == 10
  with pytest.raises(ValueError, match=f"holds {len(records)} records, fewer than the 999"):
    generated.take_pairs(out, str(tmp_path / "more"), 999)


def test_a_pointed_to_oracle_serves_as_the_runs_reward_model(tmp_path):
  path = str(tmp_path / "oracle")
  oracle_reward.build(path, task="synthetic_prompts")
  bt = reward_models.BradleyTerryRewardModel(helpers.CFG)
  pipeline.check_reusable("reward", path, bt, "synthetic_onpolicy_pairs", LENGTHS, own=False)
  with pytest.raises(ConfigError, match="oracle"):
    pipeline.check_reusable("reward", path, bt, "synthetic_onpolicy_pairs", LENGTHS, own=True)
  policy = models.PolicyModel(helpers.CFG)
  with pytest.raises(ConfigError, match="oracle"):  # not as a policy
    pipeline.check_reusable("sft", path, policy, "synthetic_sft", LENGTHS, own=False)
  assert math.isfinite(inference.load(path).reward(["owl cat"], [["owl"]])[0, 0])


def test_the_evaluation_grades_with_an_oracle_proxy(sft, tmp_path):
  from rso_jax import evaluate  # pylint: disable=g-import-not-at-top
  path = str(tmp_path / "oracle")
  oracle_reward.build(path, task="synthetic_prompts")
  report = evaluate.evaluate_policy(sft, sft, reward_path=path, num_prompts=8,
                                    decoding=("greedy",), kl_samples_per_prompt=0)
  greedy = report["results"]["greedy"]
  # π_sft against itself: identical greedy decodes, a tie on every prompt under both.
  assert greedy["vs_sft/proxy"] == pytest.approx(0.5)
  assert greedy["vs_sft/golden"] == pytest.approx(0.5)
  # Against the SFT targets the oracle proxy and r* agree on every prompt without a tie.
  assert greedy["vs_sft_targets/proxy"] == pytest.approx(greedy["vs_sft_targets/golden"])


def test_drawn_labels_follow_the_annotators_bradley_terry_probability(sft, tmp_path):
  """label_with='draw' with the oracle: each pair's chosen side is drawn with
  P = sigmoid((r*_a − r*_b)/τ); over many pairs the rate at which the higher-r* side wins
  matches the mean of those probabilities, and the draws follow the key."""
  path = str(tmp_path / "oracle")
  oracle_reward.build(path, task="synthetic_prompts")
  kw = dict(policy_checkpoint=sft, reward_checkpoint=path, prompts_task="synthetic_prompts",
            data_setting="sft_sample_rank", num_candidates=8, num_samples=8, max_prompts=96,
            batch_prompts=16, prompts_per_shard=96, progress=False, label_with="draw")
  sample.run(output_dir=str(tmp_path / "a"), **kw)
  records = list(generated.read_records(str(tmp_path / "a")))
  hi_wins, p_hi = [], []
  for r in records:
    x = r["inputs_pretokenized"]
    gc = synthetic.golden_reward(x, r["chosen_pretokenized"])
    gr = synthetic.golden_reward(x, r["rejected_pretokenized"])
    if gc != gr:
      hi_wins.append(gc > gr)
      p_hi.append(float(synthetic.bt_probability(max(gc, gr), min(gc, gr))))
  assert len(hi_wins) > 150
  se = math.sqrt(np.mean(p_hi) * (1 - np.mean(p_hi)) / len(p_hi))
  assert abs(np.mean(hi_wins) - np.mean(p_hi)) < 4 * se
  assert np.mean(hi_wins) < 0.99  # drawn, not the argmax
  sample.run(output_dir=str(tmp_path / "b"), **kw)
  again = list(generated.read_records(str(tmp_path / "b")))
  assert [r["chosen_pretokenized"] for r in again] == [r["chosen_pretokenized"] for r in records]
