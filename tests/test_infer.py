"""`python -m rso_jax.infer`: JSONL in, N responses (+ log π, log q, rewards) per prompt out;
one-line errors (exit 2) that leave OUTPUT untouched."""

import json
import os

import jax
import numpy as np
import pytest
import seqio

from helpers import (CFG, fit, init_params, one_device_mesh, save, seq2seq_batch, tokens,
                     word_texts)
from rso_jax import decoder_network, infer, inference, models, partitioning
from rso_jax import reward_models as rm

VOCAB = seqio.ByteVocabulary()
SEQ_LENGTHS = {"inputs": 32, "targets": 16}
BT_LENGTHS = {"inputs": 32, "targets": 32}
PW_LENGTHS = {"inputs": 96, "targets": 8}
NUM_DECODES, BATCH, SEED = 3, 4, 3


def _fit_policy(lengths, steps=60):
  """A tiny policy fit to answer with the first word or two of its prompt, then EOS, so most
  samples finish (a random one rarely emits EOS) and are plain ASCII (re-encode exactly)."""
  model = models.Seq2SeqModel(CFG)
  prompts = word_texts(16, seed=11)
  targets = [" ".join(p.split()[:1 + i % 2]) for i, p in enumerate(prompts)]
  batch = seq2seq_batch(tokens(prompts, lengths["inputs"]), tokens(targets, lengths["targets"]))
  return model, fit(model, batch, init_params(model, lengths), steps, 1e-2)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
  d = tmp_path_factory.mktemp("ckpts")
  model, params = _fit_policy(SEQ_LENGTHS)
  bt, pw = rm.BradleyTerryRewardModel(CFG), rm.PairwiseRankingModel(CFG)
  return {"sft": save(d / "sft", model, SEQ_LENGTHS, params),
          "bt": save(d / "bt", bt, BT_LENGTHS),
          "pw": save(d / "pw", pw, PW_LENGTHS)}


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory):
  prompts = word_texts(5, seed=2) + ["owl cat " * 10]  # the last one is cut to 31 bytes
  path = tmp_path_factory.mktemp("prompts") / "prompts.jsonl"
  with open(path, "w") as f:
    for i, p in enumerate(prompts):
      f.write(json.dumps({"id": f"p{i}", "prompt": p, "meta": {"n": i, "tags": ["a", i]}}) + "\n")
      if i == 2:
        f.write("   \n")  # blank lines are skipped
  return str(path), prompts


def _flags(**macros):
  out = ["--gin_file=stages/infer.gin"]
  for k, v in macros.items():
    out.append(f"--gin.{k}={json.dumps(v) if isinstance(v, str) else v}")
  return out


def _run(capsys, **macros):
  macros.setdefault("BATCH_SIZE", BATCH)
  rc = infer.main(_flags(**macros))
  out, err = capsys.readouterr()
  return rc, out, err


def _read(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


def _nan(values):
  return np.array([np.nan if v is None else v for v in values], np.float32)


# ------------------------------------------------------------------------------ the CLI
@pytest.mark.parametrize("reward", ["bt", "pw"])
def test_cli_writes_responses_logps_and_rewards(ckpts, prompts_file, tmp_path, capsys, reward):
  path, prompts = prompts_file
  output = tmp_path / "new_dir" / "out.jsonl"  # the parent is created
  rc, out, err = _run(capsys, CHECKPOINT=ckpts["sft"], PROMPTS_FILE=path, OUTPUT=str(output),
                      NUM_DECODES=NUM_DECODES, RANDOM_SEED=SEED,
                      REWARD_CHECKPOINT=ckpts[reward])
  assert rc == 0, err
  assert "infer: 6 prompts, 18 responses" in out and "mean reward" in out
  assert sorted(os.listdir(output.parent)) == ["out.jsonl"]  # no temp file left
  rows = _read(output)
  assert [r["prompt"] for r in rows] == prompts
  for i, r in enumerate(rows):
    assert list(r) == ["prompt", "id", "meta", "responses", "logp", "logq", "finished",
                       "prompt_truncated", "rewards"]
    assert r["id"] == f"p{i}" and r["meta"] == {"n": i, "tags": ["a", i]}  # carried as is
    assert len(r["responses"]) == len(r["logp"]) == len(r["logq"]) == NUM_DECODES
    assert all(isinstance(v, float) and np.isfinite(v) and v <= 0 for v in r["logp"] + r["logq"])
    assert all(isinstance(v, bool) for v in r["finished"])
    assert r["prompt_truncated"] == (len(VOCAB.encode(r["prompt"])) + 1 > 32)
  assert rows[-1]["prompt_truncated"]
  finished = np.array([r["finished"] for r in rows])
  assert finished.mean() > 0.5  # the fitted policy ends its answers

  # Rewards: what the reward model itself gives for the written texts.
  scorer = inference.load(ckpts[reward], mesh=one_device_mesh(), batch_size=4)
  texts = [r["responses"] for r in rows]
  got = np.stack([_nan(r["rewards"]) for r in rows])
  if reward == "bt":
    want = scorer.reward(prompts, texts)
  else:  # Eq. 7 against the first finished non-empty response (else the first)
    base_idx = [next((j for j, y in enumerate(r["responses"]) if r["finished"][j] and y), 0)
                for r in rows]
    want = scorer.reward(prompts, texts, [r["responses"][j] for r, j in zip(rows, base_idx)])
    for r, j in zip(rows, base_idx):
      assert r["rewards"][j] == 0.0
    assert np.count_nonzero(got) > 0
  assert np.all(np.isfinite(got))
  np.testing.assert_allclose(got, want, atol=1e-5)


def test_logps_are_the_policy_s_own(ckpts, prompts_file, tmp_path, capsys):
  """Same (seed, batch size): the texts of `Generator.generate`; logp = its untempered log π
  = `score` of the responses (as texts where they re-encode exactly, and as tokens)."""
  path, prompts = prompts_file
  output = tmp_path / "out.jsonl"
  rc, _, err = _run(capsys, CHECKPOINT=ckpts["sft"], PROMPTS_FILE=path, OUTPUT=str(output),
                    NUM_DECODES=NUM_DECODES, RANDOM_SEED=SEED)
  assert rc == 0, err
  rows = _read(output)
  assert all("rewards" not in r for r in rows)
  g = inference.load(ckpts["sft"], mesh=partitioning.create_mesh((-1, 1, 1)),
                     batch_size=BATCH)
  gen = g.generate(prompts, key=jax.random.key(SEED), num_decodes=NUM_DECODES)
  assert [r["responses"] for r in rows] == gen.texts
  logp = np.array([r["logp"] for r in rows])
  np.testing.assert_allclose(logp, gen.model_logps, atol=1e-6)
  np.testing.assert_allclose([r["logq"] for r in rows], gen.proposal_logps, atol=1e-6)
  np.testing.assert_allclose(g.score(prompts, gen.tokens), logp, atol=1e-4)
  mask = np.zeros(logp.shape, bool)
  for i, r in enumerate(rows):
    for j, y in enumerate(r["responses"]):
      ids = [int(t) for t in gen.tokens[i, j]]
      mask[i, j] = r["finished"][j] and VOCAB.encode(y) + [1] == ids[:ids.index(1) + 1]
  assert mask.sum() >= logp.size // 2
  by_text = g.score(prompts, [r["responses"] for r in rows])
  np.testing.assert_allclose(by_text[mask], logp[mask], atol=1e-4)


def test_greedy_writes_one_response_and_no_logq(ckpts, prompts_file, tmp_path, capsys):
  path, prompts = prompts_file
  output = tmp_path / "greedy.jsonl"
  rc, _, err = _run(capsys, CHECKPOINT=ckpts["sft"], PROMPTS_FILE=path, OUTPUT=str(output),
                    GREEDY=True, NUM_PROMPTS=3)
  assert rc == 0, err
  rows = _read(output)
  assert len(rows) == 3 and all("logq" not in r and len(r["responses"]) == 1 for r in rows)
  g = inference.load(ckpts["sft"], mesh=partitioning.create_mesh((-1, 1, 1)),
                     batch_size=BATCH)
  assert [r["responses"][0] for r in rows] == [t[0] for t in g.greedy(prompts[:3]).texts]


def test_task_prompts(ckpts, tmp_path, capsys):
  import rso_jax.tasks  # pylint: disable=unused-import
  output = tmp_path / "task.jsonl"
  rc, out, err = _run(capsys, CHECKPOINT=ckpts["sft"], TASK="synthetic_prompts",
                      NUM_PROMPTS=5, NUM_DECODES=NUM_DECODES, OUTPUT=str(output))
  assert rc == 0, err
  rows = _read(output)
  want = [ex["inputs_pretokenized"].decode() for ex in seqio.get_mixture_or_task(
      "synthetic_prompts").get_dataset(None, split="validation", shuffle=False).take(5)
      .as_numpy_iterator()]
  assert [r["prompt"] for r in rows] == want
  assert all(list(r) == ["prompt", "responses", "logp", "logq", "finished", "prompt_truncated"]
             for r in rows)
  assert "infer: 5 prompts, 15 responses" in out


# ------------------------------------------------------------------------------ errors
def _one_line_error(rc, err, output, *needles):
  assert rc == 2
  lines = err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("rso_jax.infer: error: "), err
  for n in needles:
    assert n in lines[0], lines[0]
  assert not os.path.exists(output)
  parent = os.path.dirname(output)
  assert not os.path.exists(parent) or not os.listdir(parent)


def test_wrong_checkpoint_kinds_are_one_line_errors(ckpts, prompts_file, tmp_path, capsys):
  path, _ = prompts_file
  output = str(tmp_path / "o" / "out.jsonl")
  rc, _, err = _run(capsys, CHECKPOINT=ckpts["bt"], PROMPTS_FILE=path, OUTPUT=output)
  _one_line_error(rc, err, output, "policy checkpoint", "kind='bt_rm'")
  rc, _, err = _run(capsys, CHECKPOINT=ckpts["sft"], PROMPTS_FILE=path, OUTPUT=output,
                    REWARD_CHECKPOINT=ckpts["sft"])
  _one_line_error(rc, err, output, "reward model checkpoint", "kind='seq2seq'")
  rc, _, err = _run(capsys, CHECKPOINT=str(tmp_path / "nope"), PROMPTS_FILE=path, OUTPUT=output)
  _one_line_error(rc, err, output, "checkpoint not found")


def test_prompt_source_and_input_errors(ckpts, prompts_file, tmp_path, capsys):
  path, _ = prompts_file
  output = str(tmp_path / "o" / "out.jsonl")
  sft = ckpts["sft"]
  rc, _, err = _run(capsys, CHECKPOINT=sft, OUTPUT=output)
  _one_line_error(rc, err, output, "exactly one of PROMPTS_FILE and TASK", "neither")
  rc, _, err = _run(capsys, CHECKPOINT=sft, OUTPUT=output, PROMPTS_FILE=path,
                    TASK="synthetic_prompts")
  _one_line_error(rc, err, output, "both")
  rc, _, err = _run(capsys, CHECKPOINT=sft, OUTPUT=output, TASK="no_such_task")
  _one_line_error(rc, err, output, "'no_such_task' is not a registered")
  rc, _, err = _run(capsys, PROMPTS_FILE=path, OUTPUT=output)
  _one_line_error(rc, err, output, "CHECKPOINT")  # a %gin.REQUIRED macro left unset
  rc, _, err = _run(capsys, CHECKPOINT=sft, PROMPTS_FILE=path, OUTPUT=output, GREEDY=True,
                    NUM_DECODES=2)
  _one_line_error(rc, err, output, "NUM_DECODES=2")
  bad = {"bad_json.jsonl": ('{"prompt": "a"}\n\n{"prompt": "b",\n', ":3: invalid JSON"),
         "no_prompt.jsonl": ('{"prompt": "a"}\n{"text": "b"}\n', ":2: no 'prompt' field"),
         "not_str.jsonl": ('{"prompt": ["a"]}\n', ":1: 'prompt' must be a string"),
         "clash.jsonl": ('{"prompt": "a", "rewards": 1}\n', ":1: field(s) ['rewards']"),
         "empty.jsonl": ("\n", "holds no prompts")}
  for name, (text, needle) in bad.items():
    f = tmp_path / name
    f.write_text(text)
    rc, _, err = _run(capsys, CHECKPOINT=sft, PROMPTS_FILE=str(f), OUTPUT=output)
    _one_line_error(rc, err, output, needle)
    if needle.startswith(":"):
      assert f"{f}{needle}" in err
  rc, _, err = _run(capsys, CHECKPOINT=sft, PROMPTS_FILE=str(tmp_path / "missing.jsonl"),
                    OUTPUT=output)
  _one_line_error(rc, err, output, "not found")


def test_a_failed_run_keeps_the_previous_output(ckpts, tmp_path, capsys):
  output = tmp_path / "out.jsonl"
  output.write_text("old\n")
  f = tmp_path / "p.jsonl"
  f.write_text('{"prompt": 3}\n')
  rc, _, err = _run(capsys, CHECKPOINT=ckpts["sft"], PROMPTS_FILE=str(f), OUTPUT=str(output))
  assert rc == 2 and "'prompt' must be a string" in err
  assert output.read_text() == "old\n"
  assert sorted(os.listdir(tmp_path)) == ["out.jsonl", "p.jsonl"]


def test_non_utf8_prompts_are_one_line_naming_file_line_and_byte(tmp_path, capsys):
  """PROMPTS_FILE is read as every CLI reads text (`textfiles`): invalid UTF-8 is
  `<file>:<line>: invalid UTF-8 at byte N`, exit 2, before any checkpoint is opened; a
  byte-order mark is not an error."""
  output = tmp_path / "o" / "out.jsonl"
  f = tmp_path / "latin1.jsonl"
  f.write_bytes(b'\xef\xbb\xbf{"prompt": "a"}\n\n{"prompt": "caf\xe9"}\n')
  rc, _, err = _run(capsys, CHECKPOINT=str(tmp_path / "no_ckpt"), PROMPTS_FILE=str(f),
                    OUTPUT=str(output))
  _one_line_error(rc, err, str(output), f"{f}:3: invalid UTF-8 at byte 16 (0xe9)")
  assert sorted(p.name for p in tmp_path.iterdir()) == ["latin1.jsonl"]
  f.write_bytes(b'\xef\xbb\xbf{"prompt": "a"}\n')
  assert infer.read_prompts_file(str(f)) == (["a"], [{}])


def test_a_decoder_only_policy_and_reward_model(prompts_file, tmp_path, capsys):
  """`infer` opens decoder-only checkpoints by their manifests like T5 ones: the texts and log π
  of `Generator.generate`, the rewards of the decoder Bradley–Terry model."""
  cfg = decoder_network.DecoderConfig(vocab_size=384, emb_dim=32, num_heads=2, num_kv_heads=1,
                                      head_dim=16, mlp_dim=64, num_layers=1)
  policy = save(tmp_path / "sft", models.Seq2SeqModel(cfg), SEQ_LENGTHS)
  bt = save(tmp_path / "bt", rm.BradleyTerryRewardModel(cfg), BT_LENGTHS)
  path, prompts = prompts_file
  output = tmp_path / "out.jsonl"
  rc, out, err = _run(capsys, CHECKPOINT=policy, PROMPTS_FILE=path, OUTPUT=str(output),
                      NUM_DECODES=2, RANDOM_SEED=SEED, REWARD_CHECKPOINT=bt)
  assert rc == 0, err
  rows = _read(output)
  g = inference.load(policy, mesh=partitioning.create_mesh((-1, 1, 1)), batch_size=BATCH)
  gen = g.generate(prompts, key=jax.random.key(SEED), num_decodes=2)
  assert [r["responses"] for r in rows] == gen.texts
  np.testing.assert_allclose([r["logp"] for r in rows], gen.model_logps, atol=1e-6)
  scorer = inference.load(bt, mesh=one_device_mesh(), batch_size=4)
  assert scorer.model.architecture == "decoder"
  np.testing.assert_allclose([_nan(r["rewards"]) for r in rows],
                             scorer.reward(prompts, [r["responses"] for r in rows]), atol=1e-5)
