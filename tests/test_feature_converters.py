"""Feature converters: pairwise (with optional reference log-probs) and seq2seq, vs a NumPy oracle."""
import helpers
import numpy as np
import pytest
import seqio
import tensorflow as tf

from helpers import CFG, manifest, one_device_mesh
from rso_jax import feature_converters as fc
from rso_jax import inference
from rso_jax import reward_models as rm
import rso_jax.tasks as tasks

LI, LT = 6, 5
EXAMPLES = [
    {"inputs": [7, 8, 1], "chosen": [3, 9, 4, 1], "rejected": [5, 1]},
    {"inputs": [4, 4, 4, 4, 4, 1], "chosen": [2, 1], "rejected": [6, 6, 6, 6, 1]},
]


def _pad(x, n):
  x = np.asarray(x, np.int32)
  return np.concatenate([x, np.zeros(n - len(x), np.int32)])


def _oracle(ex):
  """Reference: pad to length; decoder inputs = [BOS=0] + targets[:-1]; weights = targets != 0."""
  out = {"encoder_input_tokens": _pad(ex["inputs"], LI)}
  for r in ("chosen", "rejected"):
    t = _pad(ex[r], LT)
    out[f"{r}_decoder_target_tokens"] = t
    out[f"{r}_decoder_input_tokens"] = np.concatenate([[0], t[:-1]]).astype(np.int32)
    out[f"{r}_loss_weights"] = (t != 0).astype(np.int32)
  return out


def _dataset(examples, refs=None):
  def gen():
    for i, ex in enumerate(examples):
      d = {k: np.asarray(v, np.int32) for k, v in ex.items()}
      if refs is not None:
        for k, v in refs[i].items():
          d[k] = np.float32(v)
      yield d
  sig = {k: tf.TensorSpec([None], tf.int32) for k in examples[0]}
  if refs is not None:
    sig.update({k: tf.TensorSpec([], tf.float32) for k in refs[0]})
  return tf.data.Dataset.from_generator(gen, output_signature=sig)


def test_pairwise_matches_oracle_without_refs():
  out = list(fc.PairwiseFeatureConverter()(_dataset(EXAMPLES), {"inputs": LI, "targets": LT})
             .as_numpy_iterator())
  assert len(out) == 2
  for got, ex in zip(out, EXAMPLES):
    want = _oracle(ex)
    assert set(got) == set(want)  # No ref log-probs when the dataset has none.
    for k, v in want.items():
      assert got[k].dtype == np.int32 and got[k].shape == v.shape, k
      np.testing.assert_array_equal(got[k], v, err_msg=k)


def test_pairwise_passes_reference_logps_through():
  refs = [{"ref_chosen_logps": -1.25, "ref_rejected_logps": -7.5},
          {"ref_chosen_logps": -0.5, "ref_rejected_logps": -3.0}]
  conv = fc.PairwiseFeatureConverter()
  out = list(conv(_dataset(EXAMPLES, refs), {"inputs": LI, "targets": LT}).as_numpy_iterator())
  for got, ex, ref in zip(out, EXAMPLES, refs):
    assert set(got) == set(_oracle(ex)) | set(ref)
    for k, v in ref.items():
      assert got[k].dtype == np.float32 and got[k].shape == () and got[k] == v
    np.testing.assert_array_equal(got["rejected_decoder_input_tokens"],
                                  _oracle(ex)["rejected_decoder_input_tokens"])
  # The converter instance is not changed by a call with refs.
  assert set(next(conv(_dataset(EXAMPLES), {"inputs": LI, "targets": LT})
                  .as_numpy_iterator())) == set(_oracle(EXAMPLES[0]))
  assert conv.get_model_feature_lengths({"inputs": LI, "targets": LT}) == {
      k: v.shape[0] for k, v in _oracle(EXAMPLES[0]).items()}


def test_pairwise_rejects_bad_configuration():
  with pytest.raises(ValueError, match="keys"):
    fc.PairwiseFeatureConverter()(_dataset(EXAMPLES), {"inputs": LI, "chosen": LT,
                                                       "rejected": LT})
  with pytest.raises(ValueError, match="partner"):
    fc.PairwiseFeatureConverter()(_dataset(EXAMPLES, [{"ref_chosen_logps": 0.0}] * 2),
                                  {"inputs": LI, "targets": LT})
  with pytest.raises(ValueError, match="pack=True"):
    fc.PairwiseFeatureConverter(pack=True)
  with pytest.raises(ValueError, match="Unknown feature converter kind"):
    fc.get_feature_converter("lm")
  # Over-long sequences are refused (tasks count or reject them before this point).
  long_ds = _dataset([{"inputs": [1] * (LI + 1), "chosen": [1], "rejected": [1]}])
  with pytest.raises(tf.errors.InvalidArgumentError, match="inputs"):
    list(fc.PairwiseFeatureConverter()(long_ds, {"inputs": LI, "targets": LT}))


def test_seq2seq_converter_is_unpacked_encdec():
  conv = fc.get_feature_converter("seq2seq")
  assert isinstance(conv, seqio.EncDecFeatureConverter) and not conv.pack
  ds = _dataset([{"inputs": ex["inputs"], "targets": ex["chosen"]} for ex in EXAMPLES])
  for got, ex in zip(conv(ds, {"inputs": LI, "targets": LT}).as_numpy_iterator(), EXAMPLES):
    want = _oracle(ex)
    np.testing.assert_array_equal(got["encoder_input_tokens"], want["encoder_input_tokens"])
    np.testing.assert_array_equal(got["decoder_target_tokens"], want["chosen_decoder_target_tokens"])
    np.testing.assert_array_equal(got["decoder_input_tokens"], want["chosen_decoder_input_tokens"])
    np.testing.assert_array_equal(got["decoder_loss_weights"], want["chosen_loss_weights"])
  with pytest.raises(ValueError, match="unpacked"):
    fc.seq2seq_feature_converter(pack=True)


def test_end_to_end_with_synthetic_tasks():
  tasks.register_synthetic_tasks(seed=2, num_train_prompts=40, num_validation_prompts=4,
                                 num_test_prompts=4, prefix="tfc")
  v = tasks.get_vocabulary()
  ds = seqio.get_dataset("tfc_dhf", tasks.POLICY_FEATURE_LENGTHS, fc.PairwiseFeatureConverter(),
                         dataset_split="validation", shuffle=False)
  batch = next(ds.batch(8).as_numpy_iterator())
  assert batch["encoder_input_tokens"].shape == (8, 32)
  assert batch["chosen_decoder_target_tokens"].shape == (8, 32)
  pairs = tasks.synthetic.build_environment(tasks.synthetic.EnvConfig(
      seed=2, num_train_prompts=40, num_validation_prompts=4, num_test_prompts=4)).dhf["validation"]
  for i, pair in enumerate(pairs):
    assert v.decode(batch["chosen_decoder_target_tokens"][i].tolist()) == pair.chosen
    assert v.decode(batch["rejected_decoder_target_tokens"][i].tolist()) == pair.rejected
    assert v.decode(batch["encoder_input_tokens"][i].tolist()) == pair.prompt
  rm = seqio.get_dataset("tfc_rm_pairwise", tasks.RM_FEATURE_LENGTHS,
                         fc.get_feature_converter("reward_ranking"), dataset_split="validation")
  rm_batch = next(rm.batch(8).as_numpy_iterator())
  assert rm_batch["encoder_input_tokens"].shape == (8, 128)
  assert set(rm_batch["decoder_target_tokens"][:, 0].tolist()) <= {ord("A") + 3, ord("B") + 3}
  np.testing.assert_array_equal(rm_batch["decoder_target_tokens"][:, 1], 1)  # EOS.


def _zero_pw_params():
  """Zero params of the pairwise ranking model (`ranking_tokens` reads none)."""
  return helpers.zero_params(rm.PairwiseRankingModel(CFG), {"inputs": 32, "targets": 8})


@pytest.mark.parametrize("keep_context", ["start", "end"])
def test_both_orders_converter_follows_the_over_length_rule(keep_context):
  """Both orders of each pair == `RewardModel.ranking_tokens`: the context is cut, never the
  responses; a pair whose responses alone do not fit is dropped (both rows) and counted."""
  length = 96
  pairs = [("owl cat", "ram", "dog eel"),
           ("owl cat ram " * 400 + "yak", "fox bee", "ant"),  # 4,803 bytes: the context is cut.
           ("owl", "c" * 40, "r" * 40)]                         # Tags + responses: 109 > 95.
  ds = tf.data.Dataset.from_tensor_slices({
      f"{f}_pretokenized": [p[i] for p in pairs]
      for i, f in enumerate(("prompt", "chosen", "rejected"))})
  name = f"t_both_{keep_context}"
  tasks.reset_truncation_stats(name)
  conv = fc.BothOrdersRankingConverter(tasks.get_vocabulary(), keep_context=keep_context,
                                       stats_name=name)
  rows = list(conv(ds, {"inputs": length, "targets": 8}).as_numpy_iterator())
  assert len(rows) == 4  # Two pairs in both orders; the third pair dropped whole.
  scorer = inference.load(
      None, manifest=manifest("pairwise_rm", {"inputs": length, "targets": 8}),
      params=_zero_pw_params(),
      mesh=one_device_mesh(), keep_context=keep_context)
  for k, (x, w, l) in enumerate(pairs[:2]):
    want, fits = scorer.ranking_tokens([x, x], [w, l], [l, w])
    assert fits.all()
    for row, tokens, letter in zip(rows[2 * k:2 * k + 2], want, "AB"):
      np.testing.assert_array_equal(row["encoder_input_tokens"], tokens)
      np.testing.assert_array_equal(row["decoder_target_tokens"][:2], [ord(letter) + 3, 1])
  v = tasks.get_vocabulary()
  cut = v.decode([t for t in rows[2]["encoder_input_tokens"].tolist() if t > 1])
  assert cut.endswith(" [RESPONSE A] fox bee [RESPONSE B] ant")
  assert cut.startswith("[CONTEXT] owl cat" if keep_context == "start" else "[CONTEXT] cat ram")
  assert cut.endswith("ram yak [RESPONSE A] fox bee [RESPONSE B] ant") == (keep_context == "end")
  assert not scorer.ranking_tokens(*[[p] for p in pairs[2]])[1][0]
  stats = tasks.truncation_stats(name)
  assert (stats["examples"], stats["truncated_examples"], stats["dropped"]) == (3, 1, 1)
  with pytest.raises(ValueError, match="keep_context"):
    fc.BothOrdersRankingConverter(v, keep_context="middle")
