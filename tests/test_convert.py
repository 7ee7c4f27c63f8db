"""HF import parity: `convert.from_hf` of a random tiny HF T5 vs. HF's own torch forward.

The oracle is transformers' `T5ForConditionalGeneration` (torch, CPU, float32) on the very
weights that were written to disk; our network runs on the imported params.
"""

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import helpers
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from rso_jax import checkpoints  # pylint: disable=g-import-not-at-top
from rso_jax import convert
from rso_jax import errors
from rso_jax import network

VOCAB = 128
TOL = 1e-4


def _hf_model(feed_forward_proj: str, tie_word_embeddings: bool, seed: int,
              separate_head: bool = False):
  cfg = transformers.T5Config(
      vocab_size=VOCAB, d_model=64, d_kv=16, num_heads=4, d_ff=128, num_layers=2,
      num_decoder_layers=2, relative_attention_num_buckets=32, dropout_rate=0.0,
      feed_forward_proj=feed_forward_proj, tie_word_embeddings=tie_word_embeddings)
  torch.manual_seed(seed)
  model = transformers.T5ForConditionalGeneration(cfg).eval()
  if separate_head:  # a Flan-T5-like checkpoint: lm_head is its own tensor
    model.lm_head.weight = torch.nn.Parameter(torch.randn(VOCAB, 64))
    model.config.tie_word_embeddings = False  # (scale_decoder_outputs is kept as constructed)
  return model


def _save_flan_style(model, path):
  """Untied head, sharded files, and a transformers-4 style config.json (as on the Hub)."""
  model.save_pretrained(path, safe_serialization=True, max_shard_size="100KB")
  assert os.path.exists(os.path.join(path, "model.safetensors.index.json"))
  cfg_file = os.path.join(path, "config.json")
  with open(cfg_file) as f:
    cfg = json.load(f)
  cfg["tie_word_embeddings"] = False
  for k in ("scale_decoder_outputs", "is_gated_act", "dense_act_fn"):
    cfg.pop(k, None)
  with open(cfg_file, "w") as f:
    json.dump(cfg, f)


# name -> (feed_forward_proj, tie_word_embeddings, separate lm_head, flan-style files)
VARIANTS = {
    "flan_untied_sharded": ("gated-gelu", False, True, True),
    "v1_1_as_saved_by_hf5": ("gated-gelu", False, False, False),  # HF5 ties, does not scale
    "v1_0_relu_tied": ("relu", True, False, False),
    "gated_silu": ("gated-silu", False, True, False),
    "relu_separate_scaled_head": ("relu", True, True, False),  # scale folded into the kernel
}


@pytest.fixture(scope="module")
def hf_checkpoints(tmp_path_factory):
  out = {}
  for i, (name, (ffp, tie, separate, flan)) in enumerate(VARIANTS.items()):
    model = _hf_model(ffp, tie, seed=i, separate_head=separate)
    path = str(tmp_path_factory.mktemp(name))
    if flan:
      _save_flan_style(model, path)
    else:
      model.save_pretrained(path, safe_serialization=True)
    out[name] = (model, path)
  return out


def _batch(seed: int):
  return helpers.hf_batch(seed, VOCAB)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_logits_and_encoder_match_hf(hf_checkpoints, variant):
  model, path = hf_checkpoints[variant]
  config, params = convert.from_hf(path)
  ffp, tie, separate, _ = VARIANTS[variant]
  assert config.logits_via_embedding == (variant == "v1_0_relu_tied")
  assert len(config.mlp_activations) == (1 if ffp == "relu" else 2)
  # Encoder outputs (padded queries too: only keys are masked), logits at real targets with
  # decoder padding, and every position under the causal mask alone.
  helpers.assert_logits_match_hf(model, config, params, *_batch(0), tol=TOL)


def test_params_match_init_tree(hf_checkpoints):
  for name, (_, path) in hf_checkpoints.items():
    config, params = convert.from_hf(path)
    net = network.Transformer(config)
    z = jnp.zeros((1, 3), jnp.int32)
    init = nn.unbox(jax.eval_shape(
        lambda: net.init(jax.random.key(0), z, z, z, enable_dropout=False))["params"])
    assert jax.tree.structure(params) == jax.tree.structure(init), name
    got = jax.tree.map(lambda x: (x.shape, x.dtype), params)
    want = jax.tree.map(lambda x: (x.shape, np.dtype(np.float32)), init)
    assert got == want, name
    # Spot-check one transposition independently of the mapping code.
    model = hf_checkpoints[name][0]
    q = model.encoder.block[1].layer[0].SelfAttention.q.weight.detach().numpy()  # [H*D, E]
    np.testing.assert_array_equal(
        params["encoder"]["layers_1"]["attention"]["query"]["kernel"][:, 2, :],
        q[2 * 16:3 * 16, :].T)


def test_relative_position_bucket_matches_hf():
  from transformers.models.t5 import modeling_t5  # pylint: disable=g-import-not-at-top
  rel = np.arange(-700, 701)[None, :]
  for bidirectional in (True, False):
    for buckets, max_distance in ((32, 128), (64, 256), (16, 32), (128, 128)):
      want = modeling_t5.T5Attention._relative_position_bucket(
          torch.tensor(rel), bidirectional=bidirectional, num_buckets=buckets,
          max_distance=max_distance).numpy()
      got = network.relative_position_bucket(rel, bidirectional, buckets, max_distance)
      np.testing.assert_array_equal(got, want)


def test_head_stored_twice_is_tied(hf_checkpoints, tmp_path):
  """A file holding `lm_head.weight` bit-equal to `shared.weight` (torch .bin style) is tied."""
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  _, path = hf_checkpoints["v1_0_relu_tied"]
  tensors = convert.read_safetensors(path)
  assert "lm_head.weight" not in tensors
  tensors["lm_head.weight"] = tensors["shared.weight"].copy()
  tensors["encoder.embed_tokens.weight"] = tensors["shared.weight"].copy()
  save_file(tensors, str(tmp_path / "model.safetensors"))
  (tmp_path / "config.json").write_text(open(os.path.join(path, "config.json")).read())
  config, params = convert.from_hf(str(tmp_path))
  config0, params0 = convert.from_hf(path)
  assert config.logits_via_embedding and config == config0
  jax.tree.map(np.testing.assert_array_equal, params, params0)


def test_bfloat16_checkpoint(tmp_path):
  model = _hf_model("gated-gelu", False, seed=7, separate_head=True)
  model.save_pretrained(tmp_path / "f32", safe_serialization=True)
  model.to(torch.bfloat16).save_pretrained(tmp_path / "bf16", safe_serialization=True)
  _, p32 = convert.from_hf(str(tmp_path / "f32"))
  config, p16 = convert.from_hf(str(tmp_path / "bf16"))
  assert config.param_dtype == "float32"
  for a, b in zip(jax.tree.leaves(p32), jax.tree.leaves(p16)):
    assert b.dtype == np.float32
    np.testing.assert_array_equal(a.astype(jnp.bfloat16).astype(np.float32), b)


def test_cli_orbax_round_trip(hf_checkpoints, tmp_path, capsys):
  _, path = hf_checkpoints["flan_untied_sharded"]
  out = str(tmp_path / "converted")
  assert convert.main(["--hf_dir", path, "--out", out]) == 0
  assert os.path.exists(os.path.join(out, checkpoints.MANIFEST_FILE))
  assert not os.path.exists(os.path.join(out, checkpoints.LEGACY_CONFIG_FILE))
  # No spiece.model in the HF dir and no flag: no vocabulary, and a warning saying how to fix it.
  err = capsys.readouterr().err
  assert "no vocabulary recorded" in err and "--spm_path" in err
  manifest = checkpoints.read_manifest(out)
  assert manifest.vocabulary is None
  with pytest.raises(errors.CheckpointError, match="--spm_path"):
    manifest.get_vocabulary()
  config, params = convert.from_hf(path)
  assert manifest.network == config
  config2, params2 = convert.load_converted(out)
  assert config2 == config
  assert jax.tree.structure(params2) == jax.tree.structure(params)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(params2)):
    assert np.asarray(b).dtype == a.dtype
    np.testing.assert_array_equal(np.asarray(b), a)
  # The one loader gives the same.
  manifest3, params3 = checkpoints.load(out)
  assert manifest3 == manifest
  jax.tree.map(np.testing.assert_array_equal, params, jax.tree.map(np.asarray, params3))


def _train_spm(prefix, pieces: int, alphabet: str = "abcdefghijklmnopqrstuvwxyz") -> str:
  """A tiny SentencePiece model with seqio's special ids (pad 0, eos 1, unk 2, no bos)."""
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top
  rng = np.random.RandomState(0)
  words = ["".join(rng.choice(list(alphabet), rng.randint(2, 8))) for _ in range(300)]
  spm.SentencePieceTrainer.train(
      sentence_iterator=(" ".join(rng.choice(words, 8)) for _ in range(2000)),
      model_prefix=str(prefix), vocab_size=pieces, pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
      minloglevel=2)
  return f"{prefix}.model"


@pytest.fixture(scope="module")
def spm_models(tmp_path_factory):
  d = tmp_path_factory.mktemp("spm")
  # 28 pieces + 100 T5 sentinels = 128 = VOCAB; 64 + 100 does not fit.
  return {28: _train_spm(d / "sp28", 28, "abcdefgh"), 64: _train_spm(d / "sp64", 64)}


def _hf_dir_with(hf_checkpoints, tmp_path, name, files):
  """A copy of an HF checkpoint dir with extra files ({name: source path or JSON dict})."""
  import shutil  # pylint: disable=g-import-not-at-top
  d = tmp_path / name
  shutil.copytree(hf_checkpoints["v1_0_relu_tied"][1], d)
  for fname, src in files.items():
    if isinstance(src, dict):
      (d / fname).write_text(json.dumps(src))
    else:
      shutil.copyfile(src, d / fname)
  return str(d)


def test_manifest_vocabulary(hf_checkpoints, spm_models, tmp_path, capsys):
  config, params = convert.from_hf(hf_checkpoints["v1_0_relu_tied"][1])

  def run(hf_dir, *flags):
    out = str(tmp_path / f"out{len(os.listdir(tmp_path))}")
    rc = convert.main(["--hf_dir", hf_dir, "--out", out, *flags])
    return rc, out

  # spiece.model in the HF dir, found by default: kind seq2seq, 100 extra ids (they fit), copied.
  found = _hf_dir_with(hf_checkpoints, tmp_path, "hf28", {"spiece.model": spm_models[28]})
  rc, out = run(found)
  assert rc == 0
  m = checkpoints.read_manifest(out)
  assert (m.kind, m.source, m.task, m.feature_lengths) == ("seq2seq", "convert", None, None)
  assert m.network == config
  assert m.vocabulary == {"type": "sentencepiece", "path": os.path.join(found, "spiece.model"),
                          "extra_ids": 100, "file": "spiece.model"}
  with open(os.path.join(out, "spiece.model"), "rb") as f, open(spm_models[28], "rb") as g:
    assert f.read() == g.read()
  assert m.get_vocabulary().vocab_size == 128
  # 64 pieces: 100 sentinels would not fit in vocab_size=128 -> 0 by default.
  rc, out = run(hf_checkpoints["v1_0_relu_tied"][1], f"--spm_path={spm_models[64]}")
  assert rc == 0 and checkpoints.read_manifest(out).vocabulary["extra_ids"] == 0
  assert checkpoints.read_manifest(out).vocabulary["path"] == spm_models[64]
  # tokenizer_config.json's extra_ids wins for the HF dir's own spiece.model.
  tc = _hf_dir_with(hf_checkpoints, tmp_path, "hf64", {"spiece.model": spm_models[64],
                                                       "tokenizer_config.json": {"extra_ids": 7}})
  rc, out = run(tc)
  assert rc == 0 and checkpoints.read_manifest(out).vocabulary["extra_ids"] == 7
  rc, out = run(tc, "--extra_ids=64")
  assert rc == 0 and checkpoints.read_manifest(out).vocabulary["extra_ids"] == 64
  capsys.readouterr()

  def refused(*flags, hf_dir=hf_checkpoints["v1_0_relu_tied"][1]):
    rc, out = run(hf_dir, *flags)
    assert rc == 2 and not os.path.exists(out)
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("rso_jax.convert: error: "), err
    return err

  assert "vocab_size=128" in refused(f"--spm_path={spm_models[64]}", "--extra_ids=65")
  assert "259" in refused("--vocabulary=bytes")  # the byte vocabulary needs 259 ids
  assert "no such file" in refused(f"--spm_path={tmp_path / 'missing.model'}")
  assert "not both" in refused(f"--spm_path={spm_models[64]}", "--vocabulary=bytes")
  assert "--spm_path" in refused("--extra_ids=3")  # no SentencePiece model to add them to
  assert "not a SentencePiece model" in refused(
      f"--spm_path={os.path.join(hf_checkpoints['v1_0_relu_tied'][1], 'config.json')}")
  assert "config.json" in refused(hf_dir=str(tmp_path / "no_such_dir"))
  bad = _hf_dir_with(hf_checkpoints, tmp_path, "umt5", {})
  cfg = json.loads(open(os.path.join(bad, "config.json")).read()) | {"model_type": "umt5"}
  with open(os.path.join(bad, "config.json"), "w") as f:
    json.dump(cfg, f)
  assert "model_type='umt5'" in refused(hf_dir=bad)


def _hf_config(**overrides):
  cfg = {"model_type": "t5", "architectures": ["T5ForConditionalGeneration"],
         "vocab_size": VOCAB, "d_model": 64, "d_kv": 16, "num_heads": 4, "d_ff": 128,
         "num_layers": 2, "feed_forward_proj": "gated-gelu", "tie_word_embeddings": False}
  cfg.update(overrides)
  return cfg


@pytest.mark.parametrize("overrides,match", [
    ({"model_type": "umt5"}, "model_type='umt5'"),
    ({"model_type": "bart"}, "model_type='bart'"),
    ({"architectures": ["T5EncoderModel"]}, "architectures"),
    ({"feed_forward_proj": "gated-quick_gelu"}, "feed_forward_proj='gated-quick_gelu'"),
    ({"feed_forward_proj": "relu-gelu"}, "feed_forward_proj='relu-gelu'"),
])
def test_unsupported_configs_are_refused(overrides, match):
  with pytest.raises(ValueError, match=match):
    convert.config_from_hf(_hf_config(**overrides), tied_head=False)


def test_config_mapping():
  cfg, scale = convert.config_from_hf(_hf_config(num_decoder_layers=3), tied_head=False)
  assert (cfg.emb_dim, cfg.num_heads, cfg.head_dim, cfg.mlp_dim) == (64, 4, 16, 128)
  assert (cfg.num_encoder_layers, cfg.num_decoder_layers) == (2, 3)
  assert cfg.mlp_activations == ("gelu", "linear") and not scale
  assert not cfg.logits_via_embedding
  cfg, scale = convert.config_from_hf(
      _hf_config(feed_forward_proj="gelu", tie_word_embeddings=None), tied_head=True)
  assert cfg.mlp_activations == ("gelu_exact",)  # HF "gelu" is the exact erf GELU
  cfg, scale = convert.config_from_hf(_hf_config(feed_forward_proj="relu") | {
      "tie_word_embeddings": True}, tied_head=True)
  assert scale and cfg.logits_via_embedding


def test_bad_tensors_are_refused(hf_checkpoints, tmp_path):
  _, path = hf_checkpoints["v1_1_as_saved_by_hf5"]
  tensors = convert.read_safetensors(path)
  with open(os.path.join(path, "config.json")) as f:
    config, scale = convert.config_from_hf(json.load(f), tied_head=True)
  extra = dict(tensors, **{"encoder.block.0.layer.0.SelfAttention.q.bias": np.zeros(64)})
  with pytest.raises(ValueError, match="q.bias"):
    convert.params_from_hf(extra, config, scale)
  missing = {k: v for k, v in tensors.items() if "decoder.final_layer_norm" not in k}
  with pytest.raises(ValueError, match="decoder.final_layer_norm.weight"):
    convert.params_from_hf(missing, config, scale)
  wrong = dict(tensors, **{"encoder.block.1.layer.1.DenseReluDense.wo.weight":
                           np.zeros((64, 96), np.float32)})
  with pytest.raises(ValueError, match=r"wo.weight.*\(64, 96\)"):
    convert.params_from_hf(wrong, config, scale)
  with pytest.raises(FileNotFoundError, match="model.safetensors"):
    os.makedirs(tmp_path / "empty")
    (tmp_path / "empty" / "config.json").write_text(json.dumps(_hf_config()))
    convert.from_hf(str(tmp_path / "empty"))


def test_t5_ignores_a_tokenizer_json(hf_checkpoints, tmp_path, capsys):
  """A HF T5 directory's tokenizer.json is not its vocabulary (HF tokenizers are read by the
  decoder-only families, shifted by one id); `--tokenizer` is refused for a T5."""
  words = helpers.write_hf_tokenizer(tmp_path / "tok", ["owl", "cat"])
  hf_dir = _hf_dir_with(hf_checkpoints, tmp_path, "t5_tok",
                        {"tokenizer.json": os.path.join(words, "tokenizer.json")})
  out = str(tmp_path / "out")
  assert convert.main(["--hf_dir", hf_dir, "--out", out]) == 0
  assert checkpoints.read_manifest(out).vocabulary is None
  assert "no vocabulary recorded" in capsys.readouterr().err
  assert convert.main(["--hf_dir", hf_dir, "--out", str(tmp_path / "out2"),
                       f"--tokenizer={words}"]) == 2
  assert "decoder-only" in capsys.readouterr().err
