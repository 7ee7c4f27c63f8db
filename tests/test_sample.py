"""Sampling stage: shards, resumption without recomputation or duplicates, pair task."""

import glob
import json
import os

import jax
import numpy as np
import pytest
import seqio

from rso_jax import checkpoints, models, network, sample, trainer
from rso_jax.tasks import generated, synthetic

CFG = network.T5Config(vocab_size=384, emb_dim=32, num_heads=2, head_dim=16, mlp_dim=64,
                       num_encoder_layers=1, num_decoder_layers=1)


class GoldenScorer:
  """Stands in for a reward model: the golden reward plus a length bonus (a 'proxy')."""

  def score(self, prompts, responses, baselines=None):
    r = synthetic.golden_rewards(prompts, responses)
    lens = np.array([[len(y) for y in row] for row in responses], np.float32)
    return (r + 0.01 * lens).astype(np.float32)

  def prefer(self, prompts, y1, y2):
    a = self.score(prompts, [[y] for y in y1])[:, 0]
    b = self.score(prompts, [[y] for y in y2])[:, 0]
    return 1.0 / (1.0 + np.exp(-(a - b) * 10.0))


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory):
  d = tmp_path_factory.mktemp("policy")
  m = models.Seq2SeqModel(CFG)
  v = m.get_initial_variables(jax.random.key(0), m.input_shapes(1, {"inputs": 32,
                                                                    "targets": 8}))
  checkpoints.save_params(str(d), trainer.unbox(v["params"]), CFG)
  return str(d)


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
  task = generated.register_pair_task("test_sample_pairs", str(out))
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
