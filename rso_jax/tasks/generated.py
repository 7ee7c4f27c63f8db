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

import numpy as np
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


def take_pairs(data_dir: str, out_dir: str, num: int) -> dict:
  """Writes the first `num` records of the sampling stage's output in `data_dir` (shards in
  order: prompts in the order they were sampled) to `out_dir` as one shard, with its manifest;
  returns their accounting: `pairs` (records), `prompts`, and on the embedded task the mean r*
  of the chosen side (`golden_chosen`; a selected response), the chosen side's
  agreement with r* (`label_agreement`, over pairs of unequal r*), `ties` (equal r*) and the
  mean r* gap chosen − rejected (`golden_gap`). Fewer than `num` records is a ValueError naming
  both counts. Reuses a finished `out_dir` of the same source and count.
  """
  files = sorted(fs.glob(fs.join(data_dir, SHARD_PATTERN)))
  if not files:
    raise FileNotFoundError(f"no pair shards {SHARD_PATTERN!r} in {data_dir!r}")
  record_path = fs.join(out_dir, "taken.json")
  if fs.exists(record_path):
    old = json.loads(fs.read_text(record_path))
    if old.get("source") == fs.abspath(data_dir) and old.get("pairs") == num:
      return old
  raw = list(tf.data.TFRecordDataset(files).take(num).as_numpy_iterator())
  if len(raw) < num:
    raise ValueError(f"{data_dir} holds {len(raw)} records, fewer than the {num} asked for: "
                     "sample more prompts")
  desc = {k: v for k, v in feature_description().items() if k not in TOKEN_FEATURES}
  parsed = [tf.io.parse_single_example(r, desc) for r in raw]
  fs.makedirs(out_dir)
  path = fs.join(out_dir, "pairs-00000-of-00001.tfrecord")
  tmp = fs.tmp_name(path)
  with tf.io.TFRecordWriter(tmp) as w:
    for r in raw:
      w.write(r)
  fs.rename(tmp, path, overwrite=True)
  manifest = fs.join(data_dir, "manifest.json")
  if fs.exists(manifest):
    fs.atomic_write_text(fs.join(out_dir, "manifest.json"), fs.read_text(manifest))
  out = {"source": fs.abspath(data_dir), "pairs": len(raw),
         "prompts": len({bytes(p["inputs_pretokenized"].numpy()) for p in parsed})}
  if "chosen_golden_reward" in desc:
    rc = np.array([float(p["chosen_golden_reward"]) for p in parsed])
    rr = np.array([float(p["rejected_golden_reward"]) for p in parsed])
    if np.isfinite(rc).all():
      out["golden_chosen"] = float(rc.mean())
    if np.isfinite(rc).all() and np.isfinite(rr).all():
      untied = ~np.isclose(rc, rr)
      out.update(label_agreement=float((rc > rr)[untied].mean()) if untied.any() else None,
                 ties=float(1.0 - untied.mean()), golden_gap=float((rc - rr).mean()))
  fs.atomic_write_text(record_path, json.dumps(out, indent=1))
  return out
