"""The decoder-only experiments end to end: gin/experiments/embedded_decoder.gin at tiny sizes,
and gin/experiments/jsonl.gin with a Qwen2 that transformers saved and `rso_jax.convert`
imported, on TRL conversational pairs through the tokenizer's own chat template."""

import glob
import json

import pytest

import helpers
import realdata
from rso_jax import checkpoints, train
from rso_jax.tasks import vocab as vocab_lib



SMALL_DECODER = ["decoder_network.DecoderConfig.emb_dim=32",
                 "decoder_network.DecoderConfig.mlp_dim=64",
                 "decoder_network.DecoderConfig.num_heads=2",
                 "decoder_network.DecoderConfig.num_kv_heads=1",
                 "decoder_network.DecoderConfig.head_dim=16",
                 "decoder_network.DecoderConfig.num_layers=2"]


def test_embedded_decoder_experiment_runs_every_stage(tmp_path, capsys):
  """gin/experiments/embedded_decoder.gin at tiny sizes: π_sft, the reward model, the sampling
  stage, the policy and the evaluation all run a decoder-only network, and the policy's first
  step starts exactly at the log π_sft the sampler cached (Δ = 0: hinge-norm loss 1)."""
  run = tmp_path / "embedded_decoder"
  argv = ["--gin_file=experiments/embedded_decoder.gin", f'--gin.RUN_DIR="{run}"',
          "--gin.TRAIN_STEPS=2", "--gin.BATCH_SIZE=8", "--gin.SFT_STEPS=30",
          "--gin.REWARD_STEPS=6", "--gin.sft/train_lib.train.eval_period=0",
          "--gin.reward/train_lib.train.eval_period=0", "--gin.NUM_PROMPTS=16",
          "--gin.EVAL_PROMPTS=8", "--gin.COLLECT_PROMPTS=0",
          "--gin.REWARD_PAIRS='synthetic_dhf'",
          "--gin.sample.sample_configured.num_candidates=8",
          "--gin.sample.sample_configured.num_samples=4",
          "--gin.sample.sample_configured.batch_prompts=8",
          "--gin.sample.sample_configured.prompts_per_shard=8",
          "--gin.sample.sample_configured.keep_unfinished=True",
          *[f"--gin.{b}" for b in SMALL_DECODER]]
  assert train.main(argv) == 0, capsys.readouterr().err[-3000:]
  out = capsys.readouterr().out
  policy = checkpoints.read_manifest(str(run / "sft")).network
  assert policy.num_layers == 2 and policy.num_kv_heads == 1
  for d, kind in (("sft", "seq2seq"), ("reward_bt", "bt_rm"), ("rso_hinge", "policy")):
    m = checkpoints.read_manifest(str(run / d))
    assert m.kind == kind and m.network == policy, d
    assert m.to_json()["network"]["family"] == "decoder"
  assert checkpoints.read_manifest(str(run / "reward_bt")).model_settings["architecture"] == (
      "decoder")
  assert "initialized" in out and "from" in out  # the reward model starts from π_sft
  samples = glob.glob(str(run / "samples" / "*" / "stats.json"))
  assert len(samples) == 1
  stats = json.loads(open(samples[0]).read())
  assert stats["pairs"] > 0 and stats["reward_unscorable"] == 0
  report = json.loads((run / "eval_rso_hinge.json").read_text())
  assert report["has_golden"] and report["num_prompts"] == 8
  first = json.loads((run / "rso_hinge" / "metrics.jsonl").read_text().splitlines()[0])
  assert abs(first["loss"] - 1.0) < 1e-3 and abs(first["rewards/chosen"]) < 1e-3, first
  assert "starts away from the reference" not in out


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
  """A random tiny Qwen2 (GQA, q/k/v biases, tied embeddings) with a byte-level BPE tokenizer
  and a ChatML chat template, saved by transformers and imported with `rso_jax.convert`; and
  TRL conversational pairs (prompt, chosen and rejected as message lists)."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  from rso_jax import convert  # pylint: disable=g-import-not-at-top
  d = tmp_path_factory.mktemp("qwen")
  rows = [json.loads(l) for l in open(realdata.make_trl_jsonl(d / "trl", n=40))]
  words = sorted({w for r in rows for k in ("prompt", "chosen", "rejected")
                  for w in r[k].lower().split() if w.isalpha()})
  hf = helpers.write_hf_tokenizer(d / "hf", words)
  size = vocab_lib.get_vocabulary(hf).vocab_size - 1
  cfg = transformers.Qwen2Config(vocab_size=size, hidden_size=64, intermediate_size=128,
                                 num_hidden_layers=2, num_attention_heads=4,
                                 num_key_value_heads=2, tie_word_embeddings=True)
  with torch.random.fork_rng(devices=[]):
    torch.manual_seed(0)
    transformers.Qwen2ForCausalLM(cfg).save_pretrained(hf)
  out = str(d / "converted")
  assert convert.main([f"--hf_dir={hf}", f"--out={out}"]) == 0
  chat = d / "chat.jsonl"
  chat.write_text("".join(json.dumps({
      "prompt": [{"role": "user", "content": r["prompt"]}],
      "chosen": [{"role": "assistant", "content": r["chosen"]}],
      "rejected": [{"role": "assistant", "content": r["rejected"]}]}) + "\n" for r in rows))
  return {"checkpoint": out, "tokenizer": hf, "pairs": str(chat)}


def test_jsonl_experiment_with_a_converted_decoder_checkpoint(qwen, tmp_path, capsys):
  """jsonl.gin on TRL conversational pairs with a converted Qwen2: its network, its HF
  tokenizer and its own chat template serve every stage; the reward model is the decoder
  Bradley–Terry model started from the checkpoint."""
  run = tmp_path / "jsonl_qwen"
  argv = ["--gin_file=experiments/jsonl.gin", f'--gin.RUN_DIR="{run}"',
          f'--gin.DATA_TRAIN="{qwen["pairs"]}"', f'--gin.SPM_PATH="{qwen["tokenizer"]}"',
          f'--gin.PRETRAINED_CHECKPOINT="{qwen["checkpoint"]}"', "--gin.CHAT_TEMPLATE='tokenizer'",
          "--gin.JUDGE_PROMPT_FRACTION=0.0",  # (the judge stage: the TL;DR test's)
          *helpers.TINY_EXPERIMENT, "--gin.TASK_FEATURE_LENGTHS={'inputs': 96, 'targets': 24}"]
  assert train.main(argv) == 0, capsys.readouterr().err[-3000:]
  out = capsys.readouterr().out
  converted = checkpoints.read_manifest(qwen["checkpoint"])
  for d, kind in (("sft", "seq2seq"), ("reward_bt", "bt_rm"), ("rso_hinge", "policy")):
    m = checkpoints.read_manifest(str(run / d))
    assert m.kind == kind and m.network == converted.network, d
    assert m.vocabulary["type"] == "hf_tokenizer", d
  assert checkpoints.read_manifest(str(run / "reward_bt")).model_settings["architecture"] == (
      "decoder")
  vocab = vocab_lib.get_vocabulary(qwen["tokenizer"])
  samples = glob.glob(str(run / "samples" / "rso_sample_rank-*"))
  records = helpers.sample_records(samples[0])
  assert records
  for r in records:  # the prompt through the tokenizer's template; texts are their tokens
    assert r["inputs_pretokenized"].decode().startswith("<|im_start|>user\n")
    assert r["inputs_pretokenized"].decode().endswith("<|im_end|>\n<|im_start|>assistant\n")
    for side in ("chosen", "rejected"):
      tokens = [int(t) for t in r[side] if t != vocab.eos_id]
      assert list(vocab.encode(r[f"{side}_pretokenized"].decode())) == tokens
  report = json.loads((run / "eval_rso_hinge.json").read_text())
  assert report["has_proxy"] and report["num_prompts"] > 0
  first = json.loads((run / "rso_hinge" / "metrics.jsonl").read_text().splitlines()[0])
  assert abs(first["loss"] - 1.0) < 0.02 and abs(first["rewards/chosen"]) < 0.02, first
  assert "starts away from the reference" not in out
