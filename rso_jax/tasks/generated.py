"""seqio tasks over the preference pairs that the sampling stage writes (TFRecord shards).

Each record holds the prompt and both responses already tokenized (EOS included, so the
reference log-probs stored beside them refer to exactly these tokens), their raw text
(`*_pretokenized`), `ref_chosen_logps` / `ref_rejected_logps` = log π_sft(y|x) (untempered),
and the reward-model and golden rewards of both responses (when known). A RAFT / ReST run of
the sampling stage writes the same records with one response each (`chosen`; `rejected`
empty), registered as an SFT task (`inputs` -> `targets`).
"""

from __future__ import annotations

import json
from typing import Optional

import seqio
import tensorflow as tf

from rso_jax import checkpoints
from rso_jax import fs
from rso_jax.tasks import vocab as vocab_lib

SHARD_PATTERN = "pairs-*.tfrecord"
TOKEN_FEATURES = ("inputs", "chosen", "rejected")
TEXT_FEATURES = tuple(f"{f}_pretokenized" for f in TOKEN_FEATURES)
FLOAT_FEATURES = ("ref_chosen_logps", "ref_rejected_logps", "chosen_reward", "rejected_reward",
                  "chosen_golden_reward", "rejected_golden_reward")


def feature_description():
  desc = {f: tf.io.VarLenFeature(tf.int64) for f in TOKEN_FEATURES}
  desc.update({f: tf.io.FixedLenFeature([], tf.string) for f in TEXT_FEATURES})
  desc.update({f: tf.io.FixedLenFeature([], tf.float32, default_value=float("nan"))
               for f in FLOAT_FEATURES})
  return desc


def to_example(record: dict) -> bytes:
  """A record (token lists, texts, floats) -> serialized `tf.train.Example`."""
  feats = {}
  for f in TOKEN_FEATURES:
    feats[f] = tf.train.Feature(int64_list=tf.train.Int64List(value=[int(t) for t in record[f]]))
  for f in TEXT_FEATURES:
    feats[f] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[record[f].encode("utf-8")]))
  for f in FLOAT_FEATURES:
    if f in record and record[f] is not None:
      feats[f] = tf.train.Feature(float_list=tf.train.FloatList(value=[float(record[f])]))
  return tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString()


def _dense_int32(ds: tf.data.Dataset) -> tf.data.Dataset:
  def fn(ex):
    ex = dict(ex)
    for f in TOKEN_FEATURES:
      ex[f] = tf.cast(tf.sparse.to_dense(ex[f]) if isinstance(ex[f], tf.SparseTensor) else ex[f],
                      tf.int32)
    return ex
  return ds.map(fn, num_parallel_calls=tf.data.AUTOTUNE)


def _responses_to_targets(ds: tf.data.Dataset) -> tf.data.Dataset:
  """A selected-responses record -> an SFT example: inputs -> targets (= the response)."""
  return ds.map(lambda ex: {"inputs": ex["inputs"], "targets": ex["chosen"],
                            "inputs_pretokenized": ex["inputs_pretokenized"],
                            "targets_pretokenized": ex["chosen_pretokenized"]},
                num_parallel_calls=tf.data.AUTOTUNE)


def register_pair_task(name: str, data_dir: str, vocabulary: Optional[seqio.Vocabulary] = None
                       ) -> seqio.Task:
  """(Re-)registers `name` over the sampling stage's `data_dir/pairs-*.tfrecord` ("train").

  Pairs give a task with `inputs`, `chosen`, `rejected` (the preference losses'). A run that
  wrote selected responses (manifest `output: "responses"`: RAFT, ReST) gives an SFT task with
  `inputs` -> `targets`. The vocabulary is the one the records were tokenized with:
  `vocabulary`, else the `vocabulary` entry of `data_dir/manifest.json` (the policy
  checkpoint's), else bytes.
  """
  files = fs.glob(fs.join(data_dir, SHARD_PATTERN))
  if not files:
    raise FileNotFoundError(f"no pair shards {SHARD_PATTERN!r} in {data_dir!r}: run the "
                            "sampling stage (python -m rso_jax.sample) first")
  manifest_path = fs.join(data_dir, "manifest.json")
  manifest = json.loads(fs.read_text(manifest_path)) if fs.exists(manifest_path) else {}
  if vocabulary is None:
    spec = manifest.get("vocabulary")
    if spec:
      vocabulary = checkpoints.vocabulary_from_spec(spec)
    else:
      vocabulary = vocab_lib.get_vocabulary()
  source = seqio.TFExampleDataSource({"train": files}, feature_description=feature_description())
  seqio.TaskRegistry.remove(name)
  if manifest.get("output") == "responses":
    return seqio.TaskRegistry.add(
        name, source=source, preprocessors=[_dense_int32, _responses_to_targets],
        output_features={f: seqio.Feature(vocabulary, add_eos=True) for f in ("inputs",
                                                                                "targets")})
  return seqio.TaskRegistry.add(
      name, source=source, preprocessors=[_dense_int32],
      output_features={f: seqio.Feature(vocabulary, add_eos=True) for f in TOKEN_FEATURES})


def read_records(data_dir: str):
  """The sampling stage's records in `data_dir`, shard by shard: dicts of texts and floats
  (NaN: not recorded)."""
  files = sorted(fs.glob(fs.join(data_dir, SHARD_PATTERN)))
  if not files:
    raise FileNotFoundError(f"no pair shards {SHARD_PATTERN!r} in {data_dir!r}: run the "
                            "sampling stage (python -m rso_jax.sample) first")
  desc = {k: v for k, v in feature_description().items() if k not in TOKEN_FEATURES}
  ds = tf.data.TFRecordDataset(files).map(lambda x: tf.io.parse_single_example(x, desc))
  for ex in ds.as_numpy_iterator():
    yield {k: (v.decode("utf-8") if isinstance(v, bytes) else float(v)) for k, v in ex.items()}


def export_jsonl(data_dir: str, out_path: str) -> dict:
  """Writes the sampling stage's output as JSONL in TRL's formats, atomically; returns counts.

  Pairs (rso / sft-sample-rank / ...): TRL's preference format with the reference log-probs
  its DPO trainer reads precomputed, one line per pair:
    {"prompt", "chosen", "rejected", "ref_chosen_logps", "ref_rejected_logps",
     "chosen_reward", "rejected_reward"[, "chosen_golden_reward", "rejected_golden_reward"]}
  (log π_sft of the response tokens, untempered, under this run's tokenization and model: a
  trainer that reuses them must train the same model with the same vocabulary). Selected
  responses (RAFT, ReST): TRL's prompt-completion format, {"prompt", "completion", "reward"}.
  """
  manifest_path = fs.join(data_dir, "manifest.json")
  manifest = json.loads(fs.read_text(manifest_path)) if fs.exists(manifest_path) else {}
  responses = manifest.get("output") == "responses"
  lines = []
  for r in read_records(data_dir):
    value = lambda k, r=r: None if r[k] != r[k] else r[k]  # NaN: null
    if responses:
      line = {"prompt": r["inputs_pretokenized"], "completion": r["chosen_pretokenized"],
              "reward": value("chosen_reward")}
    else:
      line = {"prompt": r["inputs_pretokenized"], "chosen": r["chosen_pretokenized"],
              "rejected": r["rejected_pretokenized"],
              "ref_chosen_logps": value("ref_chosen_logps"),
              "ref_rejected_logps": value("ref_rejected_logps"),
              "chosen_reward": value("chosen_reward"),
              "rejected_reward": value("rejected_reward")}
      for k in ("chosen_golden_reward", "rejected_golden_reward"):
        if value(k) is not None:
          line[k] = value(k)
    lines.append(json.dumps(line, ensure_ascii=False))
  fs.atomic_write_text(out_path, "".join(line + "\n" for line in lines))
  return {"records": len(lines), "out": out_path,
          "format": "prompt-completion" if responses else "preference"}


def pair_task(samples_dir: str, name: str = "rso_pairs") -> str:
  """Registers the sampling stage's pairs in `samples_dir` as task `name`; returns `name`.

  For gin: `MIXTURE_OR_TASK_NAME = @generated.pair_task()` with `pair_task.samples_dir`
  (gin/stages/policy.gin, gin/t5x/rso_hinge.gin).
  """
  register_pair_task(name, samples_dir)
  return name
