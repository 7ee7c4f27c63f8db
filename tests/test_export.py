"""HF export parity: `export` of a random tiny rso_jax checkpoint vs. HF's own torch forward.

The oracle is transformers' `T5ForConditionalGeneration.from_pretrained` (torch, CPU, float32)
on the exported directory; `convert.from_hf` of the same directory must give back the config
and every param array bit for bit.
"""

import json
import os
import shutil

import jax
import helpers
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from rso_jax import checkpoints  # pylint: disable=g-import-not-at-top
from rso_jax import convert
from rso_jax import errors
from rso_jax import export
from rso_jax import network

TOL = 1e-4
SPM_PIECES = 64
SPM_EXTRA_IDS = 10

_TINY = dict(emb_dim=32, num_heads=2, head_dim=8, mlp_dim=48, num_encoder_layers=2,
             num_decoder_layers=2)
# name -> (T5Config, vocabulary ("bytes" / "spm"), kind, run-directory layout)
VARIANTS = {
    # T5 v1.1: gated tanh GELU, untied head, byte vocabulary padded to 384 rows (tiny.gin).
    "v1_1_bytes": (network.T5Config(vocab_size=384, **_TINY), "bytes", "seq2seq", False),
    # T5 v1.0: relu, tied + scaled head, SentencePiece vocabulary (embedding padded past it).
    "v1_0_spm": (network.T5Config(vocab_size=80, mlp_activations=("relu",),
                                  logits_via_embedding=True, **_TINY), "spm", "seq2seq", False),
    # A preference-trained policy in a run directory, with every non-default setting HF has.
    "gated_exact_gelu_policy": (network.T5Config(
        vocab_size=300, emb_dim=32, num_heads=4, head_dim=4, mlp_dim=40, num_encoder_layers=1,
        num_decoder_layers=3, mlp_activations=("gelu_exact", "linear"), dropout_rate=0.1,
        relative_attention_num_buckets=16, relative_attention_max_distance=20,
        layer_norm_epsilon=1e-5), "bytes", "policy", True),
    "silu_untied": (network.T5Config(vocab_size=384, mlp_activations=("silu",), **_TINY),
                    "bytes", "seq2seq", False),
}


def _random_params(config: network.T5Config, seed: int):
  """Random params of `Transformer(config)`'s tree, in NumPy (no jitted init: fast on CPU).

  Kernels ~ N(0, 1/fan_in), embedding ~ N(0, 1), layer norm scales ~ 1 + N(0, 0.1^2).
  """
  rng = np.random.RandomState(seed)

  def leaf(path, a):
    name = jax.tree_util.keystr(path)
    if name.endswith("['scale']"):
      return (1.0 + 0.1 * rng.standard_normal(a.shape)).astype(np.float32)
    fan_in = 1
    if name.endswith("['kernel']"):
      fan_in = int(np.prod(a.shape[:2] if "['out']" in name else a.shape[:1]))
    return (rng.standard_normal(a.shape) / np.sqrt(fan_in)).astype(np.float32)

  return jax.tree_util.tree_map_with_path(leaf, convert.abstract_params(config))


def _train_spm(prefix: str) -> str:
  """A tiny SentencePiece model with seqio's special ids (pad 0, eos 1, unk 2, no bos)."""
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top
  rng = np.random.RandomState(0)
  words = ["".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz"), rng.randint(2, 8)))
           for _ in range(300)]
  sentences = (" ".join(rng.choice(words, 8)) for _ in range(2000))
  spm.SentencePieceTrainer.train(sentence_iterator=sentences, model_prefix=prefix,
                                 vocab_size=SPM_PIECES, pad_id=0, eos_id=1, unk_id=2,
                                 bos_id=-1, minloglevel=2)
  return prefix + ".model"


def _save(path: str, config, params, vocab, kind: str, run_layout: bool) -> str:
  manifest = checkpoints.Manifest(kind=kind, network=config, vocabulary=vocab,
                                  feature_lengths={"inputs": 16, "targets": 8},
                                  task="synthetic_task", source="train")
  if run_layout:  # <run>/checkpoints/<step>/params, manifest in the run directory
    checkpoints.save_params(os.path.join(path, checkpoints.CHECKPOINT_SUBDIR, "7"), params)
    checkpoints.write_manifest(path, manifest)
  else:
    checkpoints.save_params(path, params, manifest)
  return path


@pytest.fixture(scope="module")
def spm_model(tmp_path_factory):
  return _train_spm(str(tmp_path_factory.mktemp("spm") / "sp"))


@pytest.fixture(scope="module")
def exported(tmp_path_factory, spm_model):
  """name -> (config, params, checkpoint dir, exported HF dir), exported through the CLI."""
  out = {}
  for i, (name, (config, voc, kind, run_layout)) in enumerate(VARIANTS.items()):
    vocab = ({"type": "bytes"} if voc == "bytes" else
             {"type": "sentencepiece", "path": spm_model, "extra_ids": SPM_EXTRA_IDS})
    params = _random_params(config, seed=i)
    ckpt = _save(str(tmp_path_factory.mktemp(name) / "ckpt"), config, params, vocab, kind,
                 run_layout)
    hf_dir = str(tmp_path_factory.mktemp(name) / "hf")
    assert export.main(["--checkpoint", ckpt, "--out", hf_dir]) == 0
    out[name] = (config, params, ckpt, hf_dir)
  return out


def _batch(seed: int, vocab_size: int):
  return helpers.hf_batch(seed, vocab_size)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_hf_loads_export_and_logits_match(exported, variant):
  config, params, _, hf_dir = exported[variant]
  model, info = transformers.T5ForConditionalGeneration.from_pretrained(
      hf_dir, output_loading_info=True)
  assert not info["missing_keys"] and not info["unexpected_keys"], info
  assert not info["mismatched_keys"] and not info["error_msgs"], info
  assert not model.training
  assert model.config.vocab_size == config.vocab_size
  assert model.config.scale_decoder_outputs == config.logits_via_embedding
  helpers.assert_logits_match_hf(model, config, params, *_batch(3, config.vocab_size), tol=TOL)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_convert_round_trip_is_bit_exact(exported, variant):
  config, params, _, hf_dir = exported[variant]
  config2, params2 = convert.from_hf(hf_dir)
  assert config2 == config
  assert jax.tree.structure(params2) == jax.tree.structure(params)
  for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(params)[0],
                          jax.tree.leaves(params2)):
    assert b.dtype == np.float32
    assert np.array_equal(np.asarray(a), b), jax.tree_util.keystr(path)


def test_files_and_tokenizers(exported, spm_model):
  for name, (config, _, ckpt, hf_dir) in exported.items():
    files = set(os.listdir(hf_dir))
    base = {"config.json", "generation_config.json", "model.safetensors",
            "tokenizer_config.json"}
    spm = VARIANTS[name][1] == "spm"
    assert files == (base | {"spiece.model"} if spm else base), name
    # Atomic: nothing but the output directory next to it.
    assert os.listdir(os.path.dirname(hf_dir)) == ["hf"], name
    with open(os.path.join(hf_dir, "config.json")) as f:
      cfg = json.load(f)
    assert cfg["vocab_size"] == config.vocab_size and cfg["model_type"] == "t5"
    assert (cfg["pad_token_id"], cfg["eos_token_id"], cfg["decoder_start_token_id"]) == (0, 1, 0)
    assert cfg["architectures"] == ["T5ForConditionalGeneration"]
    # The HF tokenizer of the export gives the checkpoint's seqio ids (plus HF's EOS).
    vocab = checkpoints.read_manifest(ckpt).get_vocabulary()
    tok = transformers.AutoTokenizer.from_pretrained(hf_dir)
    text = "abc fed héllo" if not spm else "abc hello fed"
    assert tok(text).input_ids == list(vocab.encode(text)) + [1], name
    assert len(tok) == vocab.vocab_size, name
  _, _, _, hf_dir = exported["v1_0_spm"]
  with open(os.path.join(hf_dir, "spiece.model"), "rb") as f, open(spm_model, "rb") as g:
    assert f.read() == g.read()


def test_export_convert_cli_round_trip(exported, tmp_path, capsys):
  """export -> `convert` CLI: the manifest gets the same vocabulary back (spm + its extra ids)."""
  for name in ("v1_0_spm", "v1_1_bytes"):
    config, params, ckpt, hf_dir = exported[name]
    out = str(tmp_path / name)
    args = ["--hf_dir", hf_dir, "--out", out]
    assert convert.main(args + ([] if name == "v1_0_spm" else ["--vocabulary=bytes"])) == 0
    manifest = checkpoints.read_manifest(out)
    assert (manifest.kind, manifest.source, manifest.network) == ("seq2seq", "convert", config)
    want = checkpoints.read_manifest(ckpt).vocabulary
    assert manifest.vocabulary["type"] == want["type"]
    assert manifest.vocabulary.get("extra_ids") == want.get("extra_ids")
    config2, params2 = convert.load_converted(out)
    assert config2 == config
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(params2)):
      assert np.array_equal(np.asarray(a), np.asarray(b))
  assert "vocabulary: SentencePiece" in capsys.readouterr().out


def _one_line_error(capsys) -> str:
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1, err
  assert err.startswith("rso_jax.export: error: ")
  return err


@pytest.mark.parametrize("kind", checkpoints.REWARD_KINDS)
def test_reward_model_is_refused(exported, tmp_path, capsys, kind):
  config, _, ckpt, _ = exported["v1_1_bytes"]
  rm = str(tmp_path / "rm")
  shutil.copytree(ckpt, rm)
  os.remove(os.path.join(rm, checkpoints.MANIFEST_FILE))
  network = None if kind == checkpoints.ORACLE_KIND else config
  checkpoints.write_manifest(rm, checkpoints.Manifest(kind=kind, network=network,
                                                      vocabulary={"type": "bytes"}))
  out = str(tmp_path / "hf")
  assert export.main(["--checkpoint", rm, "--out", out]) == 2
  err = _one_line_error(capsys)
  assert repr(kind) in err
  assert not os.path.exists(out)
  with pytest.raises(errors.CheckpointError, match=kind):
    export.export(rm, out)


def test_cli_errors(exported, tmp_path, capsys):
  config, params, ckpt, _ = exported["v1_1_bytes"]
  # A checkpoint written before manifests: names the add-manifest command.
  legacy = str(tmp_path / "legacy")
  shutil.copytree(ckpt, legacy)
  os.remove(os.path.join(legacy, checkpoints.MANIFEST_FILE))
  assert export.main(["--checkpoint", legacy, "--out", str(tmp_path / "a")]) == 2
  assert "add-manifest" in _one_line_error(capsys)
  # No checkpoint at all.
  assert export.main(["--checkpoint", str(tmp_path / "nope"), "--out", str(tmp_path / "a")]) == 2
  assert "not found" in _one_line_error(capsys)
  # A non-empty --out is kept unless --force; with --force it is replaced.
  out = tmp_path / "busy"
  out.mkdir()
  (out / "keep.txt").write_text("x")
  assert export.main(["--checkpoint", ckpt, "--out", str(out)]) == 2
  assert "--force" in _one_line_error(capsys)
  assert os.listdir(out) == ["keep.txt"]
  assert export.main(["--checkpoint", ckpt, "--out", str(out), "--force"]) == 0
  assert "model.safetensors" in os.listdir(out) and "keep.txt" not in os.listdir(out)
  assert sorted(os.listdir(tmp_path)) == ["busy", "legacy"]  # no temporary directories left
  # An empty existing --out is fine.
  (tmp_path / "empty").mkdir()
  assert export.main(["--checkpoint", ckpt, "--out", str(tmp_path / "empty")]) == 0
  # A network with no HF counterpart.
  odd = str(tmp_path / "odd")
  odd_config = network.T5Config(vocab_size=384, mlp_activations=("gelu", "gelu"), **_TINY)
  checkpoints.write_manifest(odd, checkpoints.Manifest(kind="seq2seq", network=odd_config,
                                                       vocabulary={"type": "bytes"}))
  assert export.main(["--checkpoint", odd, "--out", str(tmp_path / "b")]) == 2
  assert "mlp_activations=('gelu', 'gelu')" in _one_line_error(capsys)


def test_to_hf_checks_params(exported):
  config, params, _, _ = exported["v1_1_bytes"]
  hf_cfg, tensors = export.to_hf(config, params)
  assert "lm_head.weight" in tensors and tensors["shared.weight"].shape == (384, 32)
  assert all(t.dtype == np.float32 and t.flags["C_CONTIGUOUS"] for t in tensors.values())
  assert (hf_cfg["feed_forward_proj"], hf_cfg["tie_word_embeddings"]) == ("gated-gelu", False)
  bad = jax.tree.map(lambda x: x, params)
  del bad["decoder"]["logits_dense"]
  with pytest.raises(ValueError, match="logits_dense"):
    export.to_hf(config, bad)
  tied = export.hf_config(exported["v1_0_spm"][0])
  assert tied["tie_word_embeddings"] and tied["scale_decoder_outputs"]
  assert tied["feed_forward_proj"] == "relu"
  assert export.hf_config(exported["gated_exact_gelu_policy"][0])["feed_forward_proj"] == (
      "gated-gelu_python")


@pytest.mark.parametrize("case", ["onto", "inside", "above", "sibling_step", "symlink"])
def test_out_over_its_checkpoint_is_refused_even_with_force(tmp_path, capsys, case):
  config = VARIANTS["gated_exact_gelu_policy"][0]
  run = _save(str(tmp_path / "runs" / "policy"), config, _random_params(config, 0),
              {"type": "bytes"}, "policy", run_layout=True)
  ckpt, out = run, {"onto": run, "inside": os.path.join(run, "hf"),
                    "above": str(tmp_path / "runs"), "symlink": str(tmp_path / "link"),
                    "sibling_step": os.path.join(run, "checkpoints", "6")}[case]
  if case == "sibling_step":  # a step of the run: the run's other steps are inputs too
    ckpt = os.path.join(run, "checkpoints", "7")
  if case == "symlink":
    os.symlink(run, out)
  before = helpers.snapshot(tmp_path)
  assert export.main(["--checkpoint", ckpt, "--out", out, "--force"]) == 2
  line = _one_line_error(capsys)
  assert f"--out {out!r}" in line and "refusing to write over an input" in line, line
  assert run in line, line
  assert helpers.snapshot(tmp_path) == before  # nothing deleted, moved or written


def test_max_shard_size_shards_a_t5_export(exported, tmp_path):
  """`--max_shard_size`: HF's shards + index, loaded by transformers, read back bit for bit
  (without it a T5 export is one model.safetensors, as `test_files_and_tokenizers` checks)."""
  config, params, ckpt, _ = exported["v1_1_bytes"]
  out = str(tmp_path / "hf")
  assert export.main(["--checkpoint", ckpt, "--out", out, "--max_shard_size=40KB"]) == 0
  with open(os.path.join(out, "model.safetensors.index.json")) as f:
    shards = sorted(set(json.load(f)["weight_map"].values()))
  assert len(shards) > 1 and "model.safetensors" not in os.listdir(out)
  _, info = transformers.T5ForConditionalGeneration.from_pretrained(out, output_loading_info=True)
  assert not info["missing_keys"] and not info["unexpected_keys"], info
  config2, params2 = convert.from_hf(out)
  assert config2 == config
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(params2)):
    assert np.array_equal(np.asarray(a), b)
