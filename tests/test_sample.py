"""Sampling stage: shards, resumption without recomputation or duplicates, pair task."""

import glob
import json
import os

import numpy as np
import pytest
import seqio

from helpers import CFG, save
from rso_jax import checkpoints, models, reward_models, sample
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
              scorer=GoldenScorer(), split="validation", max_prompts=12, prompts_per_shard=4,
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
  assert sample.is_complete(str(full))
  assert s_full["prompts"] == 12 and s_full["pairs"] > 0
  _run(policy_dir, part, stop_after_shards=1)  # "killed" after one shard
  shards = sorted(glob.glob(str(part / "pairs-*.tfrecord")))
  assert len(shards) == 1 and not sample.is_complete(str(part))
  mtime = os.stat(shards[0]).st_mtime_ns
  s_part = _run(policy_dir, part)
  assert os.stat(shards[0]).st_mtime_ns == mtime  # finished shard not recomputed
  assert sample.is_complete(str(part))
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
  with pytest.raises(checkpoints.CheckpointError, match="policy needs"):
    _run(rm_dir, tmp_path / "a")
  with pytest.raises(checkpoints.CheckpointError, match="reward model needs"):
    _run(policy_dir, tmp_path / "b", scorer=None, reward_checkpoint=policy_dir)


def test_real_reward_models_long_prompts_and_unreadable_candidates(policy_dir, tmp_path):
  """Real checkpoints end to end: a pairwise ρ labels pairs against a valid baseline; a BT
  model that cannot read 8-token responses whole marks them invalid (counted, never paired);
  prompts longer than the policy's input length are cut and counted, not dropped."""
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
  assert s["reward_unscorable"] > 0
  assert s["valid_candidates"] + s["reward_unscorable"] <= s["candidates"]
  vocab = seqio.ByteVocabulary()
  for raw in _records(str(tmp_path / "bt_out")):
    ex = tf_example(raw)
    for f in ("chosen", "rejected"):  # only responses the reward model read whole (+ EOS)
      assert len(vocab.encode(ex[f + "_pretokenized"])) + 1 <= 4


def tf_example(raw):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  ex = tf.io.parse_single_example(raw, generated.feature_description())
  return {f: ex[f].numpy().decode("utf-8") for f in generated.TEXT_FEATURES}
