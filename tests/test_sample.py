"""Sampling stage: shards, resumption without recomputation or duplicates, pair task."""

import glob
import json
import os

import numpy as np
import pytest
import seqio

from helpers import CFG, save
from rso_jax import errors
from rso_jax import runs
from rso_jax import sample_batch
from rso_jax import checkpoints, export, models, reward_models, sample
from rso_jax.tasks import generated, synthetic


class GoldenScorer:
  """Stands in for a reward model: the golden reward plus a length bonus (a 'proxy')."""
  kind = "bt_rm"
  stats = {"contexts_truncated": 0, "responses_too_long": 0}

  def reward(self, prompts, responses, baselines=None, valid=None):
    r = synthetic.golden_rewards(prompts, responses)
    lens = np.array([[len(y) for y in row] for row in responses], np.float32)
    return (r + 0.01 * lens).astype(np.float32)

  def prefer(self, prompts, y1, y2):
    a = self.reward(prompts, [[y] for y in y1])[:, 0]
    b = self.reward(prompts, [[y] for y in y2])[:, 0]
    return 1.0 / (1.0 + np.exp(-(a - b) * 10.0))


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory):
  return save(tmp_path_factory.mktemp("policy"), models.Seq2SeqModel(CFG),
              {"inputs": 32, "targets": 8})


def _run(policy_dir, out, **kw):
  args = dict(policy_checkpoint=policy_dir, reward_checkpoint=None, output_dir=str(out),
              scorer=GoldenScorer(), prompts_task="synthetic_prompts", split="validation", max_prompts=12, prompts_per_shard=4,
              batch_prompts=4, num_candidates=8, num_samples=4, max_decode_length=8,
              keep_unfinished=True, mesh_shape=(2, 1, 1), progress=False)
  args.update(kw)
  if "mesh_shape" in args and args["mesh_shape"] == (2, 1, 1):
    args["mesh_shape"] = (-1, 1, 1)
  return sample.run(**args)


def _records(out):
  import tensorflow as tf
  rows = []
  for f in sorted(glob.glob(os.path.join(out, "pairs-*.tfrecord"))):
    for raw in tf.data.TFRecordDataset(f).as_numpy_iterator():
      rows.append(raw)
  return rows


def test_killed_stage_resumes_without_recompute_or_duplicates(policy_dir, tmp_path):
  full, part = tmp_path / "full", tmp_path / "part"
  s_full = _run(policy_dir, full)
  assert runs.is_complete(str(full))
  assert s_full["prompts"] == 12 and s_full["pairs"] > 0
  _run(policy_dir, part, stop_after_shards=1)  # "killed" after one shard
  shards = sorted(glob.glob(str(part / "pairs-*.tfrecord")))
  assert len(shards) == 1 and not runs.is_complete(str(part))
  mtime = os.stat(shards[0]).st_mtime_ns
  s_part = _run(policy_dir, part)
  assert os.stat(shards[0]).st_mtime_ns == mtime  # finished shard not recomputed
  assert runs.is_complete(str(part))
  a, b = _records(str(full)), _records(str(part))
  assert a == b  # same pairs, bit for bit, no duplicates
  assert len(set(b)) == len(b)
  for k in ("pairs", "accepted", "visited", "prompts"):
    assert s_part[k] == s_full[k]


def test_pair_task_feeds_the_policy_converter(policy_dir, tmp_path):
  out = tmp_path / "s"
  summary = _run(policy_dir, out, data_setting="sft_sample_rank")
  generated.register_pair_task("test_sample_pairs", str(out))
  ds = seqio.get_dataset("test_sample_pairs", {"inputs": 32, "targets": 8},
                         models.PolicyModel(CFG).feature_converter, shuffle=False)
  batch = next(ds.batch(4).as_numpy_iterator())
  assert batch["chosen_decoder_target_tokens"].shape == (4, 8)
  assert batch["ref_chosen_logps"].shape[0] == 4
  # The stored reference log-probs are log π_sft of exactly these tokens.
  m = models.PolicyModel(CFG)
  params = checkpoints.load_params(policy_dir)
  got = np.asarray(m.score_batch(params, batch))
  np.testing.assert_allclose(got[:, 0], batch["ref_chosen_logps"].reshape(-1), atol=1e-4)
  np.testing.assert_allclose(got[:, 1], batch["ref_rejected_logps"].reshape(-1), atol=1e-4)
  stats = json.loads((out / "stats.json").read_text())
  assert stats["pairs"] == summary["pairs"] > 0
  assert stats["rejection/rounds"] == 1.0  # the random baseline takes one round
  # Exported for TRL: one preference line per pair, texts and reference log-probs as stored.
  assert export.main(["--samples", str(out), "--out", str(tmp_path / "pairs.jsonl")]) == 0
  lines = [json.loads(l) for l in (tmp_path / "pairs.jsonl").read_text().splitlines()]
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  raw = [tf.io.parse_single_example(r, generated.feature_description()) for r in _records(str(out))]
  assert len(lines) == len(raw) == stats["pairs"]
  for line, ex in zip(lines, raw):
    assert line["prompt"] == ex["inputs_pretokenized"].numpy().decode()
    assert (line["chosen"], line["rejected"]) == (ex["chosen_pretokenized"].numpy().decode(),
                                                  ex["rejected_pretokenized"].numpy().decode())
    assert line["ref_chosen_logps"] == float(ex["ref_chosen_logps"])
    assert line["ref_rejected_logps"] == float(ex["ref_rejected_logps"])
    assert line["chosen_golden_reward"] == float(ex["chosen_golden_reward"])
  assert export.main(["--samples", str(tmp_path / "none"), "--out", str(tmp_path / "x")]) == 2


def test_changed_configuration_is_refused(policy_dir, tmp_path):
  out = tmp_path / "c"
  _run(policy_dir, out, stop_after_shards=1)
  with pytest.raises(ValueError, match="different configuration"):
    _run(policy_dir, out, beta=5.0)


def test_bad_settings(policy_dir, tmp_path):
  with pytest.raises(ValueError, match="direct"):
    _run(policy_dir, tmp_path / "d", data_setting="direct")
  with pytest.raises(ValueError, match="num_samples"):
    _run(policy_dir, tmp_path / "e", num_samples=9)


def test_checkpoint_kinds_are_checked(policy_dir, tmp_path):
  rm_dir = save(tmp_path / "rm", reward_models.BradleyTerryRewardModel(CFG),
                {"inputs": 32, "targets": 32})
  with pytest.raises(errors.CheckpointError, match="policy needs"):
    _run(rm_dir, tmp_path / "a")
  with pytest.raises(errors.CheckpointError, match="reward model needs"):
    _run(policy_dir, tmp_path / "b", scorer=None, reward_checkpoint=policy_dir)


def test_real_reward_models_long_prompts_and_unreadable_candidates(policy_dir, tmp_path):
  """Real checkpoints end to end: a pairwise ρ labels pairs against a valid baseline; a BT
  model trained on 4-token responses reads the policy's 8-token ones whole (its response length
  widened to the decode length + EOS), so none is unscorable; prompts longer than the policy's
  input length are cut and counted, not dropped."""
  pw = save(tmp_path / "pw", reward_models.PairwiseRankingModel(CFG),
            {"inputs": 96, "targets": 8})
  s = _run(policy_dir, tmp_path / "pw_out", scorer=None, reward_checkpoint=pw, input_length=16)
  assert s["prompts"] == 12 and s["prompts_truncated"] > 0 and s["pairs"] > 0
  assert s["reward_unscorable"] == 0
  manifest = json.loads((tmp_path / "pw_out" / "manifest.json").read_text())
  assert manifest["reward_kind"] == "pairwise_rm" and manifest["label_with"] == "preference"
  assert manifest["input_length"] == 16 and manifest["max_decode_length"] == 8
  bt = save(tmp_path / "bt", reward_models.BradleyTerryRewardModel(CFG),
            {"inputs": 32, "targets": 4})
  s = _run(policy_dir, tmp_path / "bt_out", scorer=None, reward_checkpoint=bt)
  assert s["reward_unscorable"] == 0 and s["pairs"] > 0
  vocab = seqio.ByteVocabulary()
  longest = max(len(vocab.encode(tf_example(raw)[f + "_pretokenized"]))
                for raw in _records(str(tmp_path / "bt_out")) for f in ("chosen", "rejected"))
  assert 4 <= longest <= 8  # longer than the reward model's training responses, read whole


def tf_example(raw):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  ex = tf.io.parse_single_example(raw, generated.feature_description())
  return {f: ex[f].numpy().decode("utf-8") for f in generated.TEXT_FEATURES}


# ---------------------------------------------------------------------------
# process_batch: pairs are a uniformly random matching of the selected set
# whatever the selector's order; only valid candidates are paired.
# ---------------------------------------------------------------------------

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position

from rso_jax import inference  # pylint: disable=g-import-not-at-top,wrong-import-position

# Candidates 0-3 are valid with rewards [5, 0, 5, 0]: at beta = 0.01 rso accepts 0 and 2 in
# round 1 (ratio exactly 1) and 1, 3 in round 2 (ratio exp(-500) before): acceptance order
# [0, 2, 1, 3], so pairing consecutive slots would always give {0, 2}, {1, 3}. Candidate 4 is
# unfinished and 5 empty (both invalid) with the highest rewards. num_samples=6 > 4 valid:
# the selection has 2 padding slots (index 0, valid=False).
FIXED_REWARDS = np.array([5.0, 0.0, 5.0, 0.0, 50.0, 60.0], np.float32)
FIXED_TEXTS = ["y0", "y1", "y2", "y3", "y4 unfinished", ""]
CHI2_CRIT_DF2 = 23.0  # p = 1e-5


class FixedPolicy:
  """Always the same 6 decodes per prompt (no model)."""
  eos_id = 1

  def generate(self, prompts, key, num_decodes, max_decode_length=None, batch_size=None,
               **kwargs):
    del key, max_decode_length, batch_size, kwargs
    b, n, length = len(prompts), num_decodes, 4
    assert n == len(FIXED_TEXTS)
    tokens = np.zeros((b, n, length), np.int32)
    lengths = np.full((b, n), 2, np.int32)
    finished = np.ones((b, n), bool)
    for j in range(n):
      tokens[:, j, :2] = [j + 2, 1]
    tokens[:, 4] = 6  # unfinished: no EOS within the length
    lengths[:, 4], finished[:, 4] = length, False
    tokens[:, 5, :] = [1, 0, 0, 0]  # empty: EOS only
    lengths[:, 5] = 1
    zeros = np.zeros((b, n), np.float32)
    return inference.Generation(
        texts=[list(FIXED_TEXTS) for _ in range(b)], tokens=tokens, lengths=lengths,
        finished=finished, proposal_logps=zeros, model_logps=zeros,
        prompt_tokens=np.ones((b, 2), np.int32), prompt_truncated=np.zeros((b,), bool))


class FixedScorer:
  kind = "bt_rm"
  stats = {"contexts_truncated": 0, "responses_too_long": 0}

  def reward(self, prompts, responses, baselines=None, valid=None):
    del baselines, valid
    return np.tile(FIXED_REWARDS, (len(prompts), 1))

  def prefer(self, prompts, y1, y2):
    raise AssertionError("labels come from the rewards here")


def _process(key, strategy, pair_method="first_round", rows=64):
  return sample_batch.process_batch(
      FixedPolicy(), FixedScorer(), [f"p{i}" for i in range(rows)], key,
      num_candidates=6, max_decode_length=None, temperature=0.7, top_k=None, top_p=None,
      strategy=strategy, num_samples=6, beta=0.01, rejection_mode="paper",
      proposal_correction=False, pair_method=pair_method, label_with="reward")


def _row_matchings(records, rows, per_row):
  assert len(records) == rows * per_row
  out = []
  for i in range(rows):
    recs = records[i * per_row:(i + 1) * per_row]
    assert {r["inputs_pretokenized"] for r in recs} == {f"p{i}"}
    out.append(frozenset(frozenset((r["chosen_pretokenized"], r["rejected_pretokenized"]))
                         for r in recs))
  return out


def _matching_counts(strategy, seeds):
  counts = {}
  for seed in seeds:
    recs, acc = _process(jax.random.key(seed), strategy)
    assert acc.accepted == 64 * 4 and acc.pairs == 64 * 2
    for m in _row_matchings(recs, 64, 2):
      counts[m] = counts.get(m, 0) + 1
  return counts


def _chi2(table):
  """Pearson chi-square of a contingency table (rows: samples, cols: categories)."""
  t = np.asarray(table, np.float64)
  expected = t.sum(1, keepdims=True) * t.sum(0, keepdims=True) / t.sum()
  return float(np.sum((t - expected) ** 2 / expected))


def test_process_batch_pairs_a_uniform_random_matching_of_the_selected_set():
  seeds = range(10)
  rso = _matching_counts("rso", seeds)
  rnd = _matching_counts("random", [100 + s for s in seeds])
  keys = sorted(set(rso) | set(rnd), key=sorted)
  valid_texts = {"y0", "y1", "y2", "y3"}
  for m in keys:  # perfect matchings of the 4 valid candidates only
    assert set().union(*m) == valid_texts and len(m) == 2
  assert len(keys) == 3 and set(rso) == set(rnd) == set(keys)
  total = 64 * len(seeds)
  # Each matching equally likely (not rso's acceptance-order pairs {y0,y2},{y1,y3} always) ...
  for counts in (rso, rnd):
    obs = np.array([counts[m] for m in keys], np.float64)
    assert np.sum((obs - total / 3) ** 2 / (total / 3)) < CHI2_CRIT_DF2, counts
  # ... and rso and random selection of the same set pair it with the same law.
  assert _chi2([[rso[m] for m in keys], [rnd[m] for m in keys]]) < CHI2_CRIT_DF2, (rso, rnd)
  # Each of the 6 candidate pairs appears in about a third of the prompts.
  for a in valid_texts:
    for b in valid_texts - {a}:
      share = sum(n for m, n in rso.items() if frozenset((a, b)) in m) / total
      assert abs(share - 1 / 3) < 0.06, (a, b, share)


def test_process_batch_pairs_are_deterministic_in_the_key():
  key = jax.random.key(5)
  a, acc_a = _process(key, "rso", rows=16)
  b, acc_b = _process(key, "rso", rows=16)
  assert a == b and acc_a == acc_b
  c, _ = _process(jax.random.key(6), "rso", rows=16)
  assert _row_matchings(a, 16, 2) != _row_matchings(c, 16, 2)


@pytest.mark.parametrize("strategy", ["rso", "random", "top_k_over_n", "best_of_n"])
@pytest.mark.parametrize("pair_method", ["first_round", "tournament"])
def test_process_batch_never_pairs_invalid_candidates(strategy, pair_method):
  recs, acc = _process(jax.random.key(2), strategy, pair_method, rows=16)
  sel = acc.accepted // 16  # valid selected per prompt
  want = sel // 2 if pair_method == "first_round" else max(sel - 1, 0)
  assert acc.pairs == len(recs) == 16 * want
  for r in recs:
    assert {r["chosen_pretokenized"], r["rejected_pretokenized"]} <= {"y0", "y1", "y2", "y3"}
    assert r["chosen_pretokenized"] != r["rejected_pretokenized"]
    assert r["chosen_reward"] >= r["rejected_reward"]


# ---------------------------------------------------------------------------
# RAFT / ReST: the selected responses themselves, as SFT data.
# ---------------------------------------------------------------------------


def _selected(records, rows):
  """Per prompt: the candidate texts its records hold, in record order."""
  out = {}
  for rec in records:
    assert rec["rejected"] == [] and rec["rejected_pretokenized"] == ""
    out.setdefault(rec["inputs_pretokenized"], []).append(rec["chosen_pretokenized"])
  assert len(out) == rows
  return out


@pytest.mark.parametrize("strategy,num_samples,threshold,want", [
    ("best_of_n", 1, 0.7, ["y0"]),  # RAFT: the best valid candidate (first of the tied 5s)
    ("rest", 6, 0.7, ["y0", "y2"]),  # ReST: rescaled [1, 0, 1, 0] over the valid ones
    ("rest", 6, 0.0, ["y0", "y2", "y1", "y3"]),  # every valid one, best first
    ("rest", 1, 0.0, ["y0"]),  # at most num_samples
])
def test_process_batch_writes_the_selected_responses(strategy, num_samples, threshold, want):
  """Invalid candidates (unfinished, empty) are never written, whatever their reward."""
  records, acc = sample_batch.process_batch(
      FixedPolicy(), FixedScorer(), [f"p{i}" for i in range(3)], jax.random.key(0),
      num_candidates=6, max_decode_length=None, temperature=0.7, top_k=None, top_p=None,
      strategy=strategy, num_samples=num_samples, beta=0.01, rejection_mode="paper",
      proposal_correction=False, pair_method="first_round", label_with="reward",
      responses_only=True, rest_threshold=threshold)
  assert _selected(records, 3) == {f"p{i}": want for i in range(3)}
  assert acc.responses == 3 * len(want) and acc.pairs == 0
  assert [r["chosen_reward"] for r in records[:len(want)]] == [
      float(FIXED_REWARDS[int(y[1])]) for y in want]


def test_raft_task_is_sft_data_of_the_best_candidate(policy_dir, tmp_path):
  """`raft`: one response per prompt, the reward model's best, registered as an inputs ->
  targets task whose targets are exactly the sampled tokens (their log π_sft as stored)."""
  out = tmp_path / "raft"
  summary = _run(policy_dir, out, data_setting="raft", num_samples=1, keep_unfinished=False)
  assert summary["responses"] == summary["accepted"] > 0 and summary["pairs"] == 0
  recs = [tf_example(r) for r in _records(str(out))]
  assert len({r["inputs_pretokenized"] for r in recs}) == len(recs)  # one per prompt
  generated.register_pair_task("test_raft_responses", str(out))
  m = models.Seq2SeqModel(CFG)
  ds = seqio.get_dataset("test_raft_responses", {"inputs": 32, "targets": 8},
                         m.feature_converter, shuffle=False)
  batch = next(ds.batch(len(recs)).as_numpy_iterator())
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  raw = [tf.io.parse_single_example(r, generated.feature_description()) for r in _records(str(out))]
  ref = np.array([float(ex["ref_chosen_logps"]) for ex in raw], np.float32)
  got = np.asarray(m.score_batch(checkpoints.load_params(policy_dir), batch))
  np.testing.assert_allclose(got, ref, atol=1e-4)
  assert export.main(["--samples", str(out), "--out", str(tmp_path / "raft.jsonl")]) == 0
  lines = [json.loads(l) for l in (tmp_path / "raft.jsonl").read_text().splitlines()]
  assert [set(l) for l in lines] == [{"prompt", "completion", "reward"}] * len(recs)
  assert [l["completion"] for l in lines] == [r["chosen_pretokenized"] for r in recs]
  with pytest.raises(ValueError, match="DATA_SETTING='raft' keeps the best of N"):
    _run(policy_dir, tmp_path / "bad", data_setting="raft", num_samples=4)
