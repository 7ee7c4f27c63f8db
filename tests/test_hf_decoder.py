"""Decoder-only HF parity (Llama, Qwen2): `convert` / `export` against transformers' own forward.

The oracles are transformers' `LlamaForCausalLM` / `Qwen2ForCausalLM` (torch, CPU, float32),
created at random and written by their own `save_pretrained`; rso_jax converts the directories
with its CLI and runs `DecoderTransformer` on the imported params. rso ids are HF ids + 1.
"""

import json
import os
import shutil

import jax
import helpers
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from rso_jax import checkpoints  # pylint: disable=g-import-not-at-top
from rso_jax import convert
from rso_jax import decoder_network
from rso_jax import decoding
from rso_jax import export
from rso_jax import hf_decoder
from rso_jax import networks

VOCAB = 100  # HF ids 0..99, rso ids 1..100
HF_EOS = 2
EOS = HF_EOS + 1  # rso
TOL = 1e-4
# A random HF model's logits are near uniform (init std 0.02): its weights are drawn with
# std 0.2, so the next-token laws are peaked and an error in them shows.
INIT_STD = 0.2

_SIZES = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, initializer_range=INIT_STD,
              bos_token_id=1, eos_token_id=HF_EOS)
# name -> (HF config class, config overrides, save_pretrained's max_shard_size, bfloat16 file)
VARIANTS = {
    "llama_gqa_untied": ("LlamaConfig", dict(tie_word_embeddings=False), None, False),
    "qwen2_bias_tied": ("Qwen2Config", dict(tie_word_embeddings=True), None, False),
    "llama_bias_tied_theta_sharded": (
        "LlamaConfig", dict(tie_word_embeddings=True, attention_bias=True,
                            rope_parameters={"rope_type": "default", "rope_theta": 5e5},
                            rms_norm_eps=1e-5, head_dim=32), "60KB", False),
    "qwen2_untied_bf16": ("Qwen2Config", dict(tie_word_embeddings=False, num_key_value_heads=1),
                          None, True),
}


def _hf_model(name: str, seed: int):
  cls, overrides, _, _ = VARIANTS[name]
  cfg = getattr(transformers, cls)(**dict(_SIZES, **overrides))
  torch.manual_seed(seed)
  model = getattr(transformers, cls.replace("Config", "ForCausalLM"))(cfg).eval()
  with torch.no_grad():
    for pname, p in model.named_parameters():
      if pname.endswith("bias"):  # HF initializes biases at 0: make the mapping show
        p.copy_(0.1 * torch.randn_like(p))
      elif "norm" in pname:  # and RMS norm scales at 1
        p.copy_(1.0 + 0.1 * torch.randn_like(p))
    # The EOS logit is raised so that some sampled responses end within 12 tokens.
    head = model.get_output_embeddings().weight
    hidden = model(torch.arange(VOCAB)[None], output_hidden_states=True).hidden_states[-1][0]
    direction = hidden.mean(0) / hidden.mean(0).norm() ** 2
    head[HF_EOS] += 2.5 * direction
  return model


@pytest.fixture(scope="session")
def hf_models(tmp_path_factory):
  """name -> (torch model with the saved weights (float32), HF dir, converted checkpoint)."""
  out = {}
  for i, (name, (_, _, shard, bf16)) in enumerate(VARIANTS.items()):
    model = _hf_model(name, seed=i)
    root = tmp_path_factory.mktemp(name)
    hf_dir, ckpt = str(root / "hf"), str(root / "ckpt")
    if bf16:
      model.to(torch.bfloat16)
    model.save_pretrained(hf_dir, **({"max_shard_size": shard} if shard else {}))
    if bf16:  # the oracle: the saved bfloat16 weights, run in float32
      model = type(model).from_pretrained(hf_dir, dtype=torch.float32).eval()
    assert convert.main(["--hf_dir", hf_dir, "--out", ckpt]) == 0
    out[name] = (model, hf_dir, ckpt)
  return out


def _load(ckpt: str):
  manifest, params = checkpoints.load(ckpt)
  return manifest, networks.build(manifest.network), params


def _causal_logits(module, params, tokens) -> np.ndarray:
  """Our `causal_logits` of rso ids `[B, L]` -> `[B, L, V + 1]` (jitted: faster than eager)."""
  fn = jax.jit(lambda p, t: module.apply({"params": p}, t, method="causal_logits"))
  return np.asarray(fn(params, jnp.asarray(tokens)))


def _hf_logits(model, hf_ids) -> np.ndarray:
  """HF logits `[L, V]` of one unpadded sequence of HF ids."""
  with torch.no_grad():
    return model(torch.tensor(np.asarray(hf_ids)[None], dtype=torch.long)).logits[0].numpy()


def _prompts(seed: int, lengths=(5, 1, 8)):
  """Ragged right-padded rso prompts `[B, 10]`: HF tokens (no EOS) + 1, then EOS, then 0."""
  rng = np.random.RandomState(seed)
  prompts = np.zeros((len(lengths), 10), np.int32)
  for b, n in enumerate(lengths):
    prompts[b, :n] = rng.randint(HF_EOS + 1, VOCAB, n) + 1
    prompts[b, n] = EOS
  return prompts


def _hf_prompt(prompt) -> list:
  """A rso prompt row -> its HF ids without the trailing EOS."""
  n = int(np.sum(prompt > 0))
  return [int(t) - 1 for t in prompt[:n - 1]]


# ------------------------------------------------------------------------------ convert


def test_converted_manifest_and_config(hf_models):
  for name, (model, hf_dir, ckpt) in hf_models.items():
    cls, overrides, shard, bf16 = VARIANTS[name]
    manifest = checkpoints.read_manifest(ckpt)
    assert (manifest.kind, manifest.source, manifest.task) == ("seq2seq", "convert", None)
    assert manifest.vocabulary is None  # no tokenizer.json in these directories
    cfg = manifest.network
    assert isinstance(cfg, decoder_network.DecoderConfig) and networks.is_decoder_only(cfg)
    qwen = cls == "Qwen2Config"
    assert cfg.architecture == ("Qwen2ForCausalLM" if qwen else "LlamaForCausalLM")
    assert (cfg.vocab_size, cfg.emb_dim, cfg.num_heads, cfg.mlp_dim, cfg.num_layers) == (
        VOCAB, 64, 4, 128, 2)
    assert cfg.num_kv_heads == overrides.get("num_key_value_heads", 2)
    assert cfg.head_dim == overrides.get("head_dim", 16)
    assert cfg.tie_word_embeddings == overrides["tie_word_embeddings"]
    assert cfg.qkv_bias == (qwen or overrides.get("attention_bias", False))
    assert cfg.out_bias == (not qwen and overrides.get("attention_bias", False))
    assert cfg.rope_theta == overrides.get("rope_parameters", {}).get("rope_theta", 1e4)
    assert cfg.layer_norm_epsilon == overrides.get("rms_norm_eps", 1e-6)
    assert cfg.param_dtype == "float32"
    sharded = os.path.exists(os.path.join(hf_dir, "model.safetensors.index.json"))
    assert sharded == (shard is not None), name
    if bf16:
      assert all(x.dtype == np.float32 for x in jax.tree.leaves(checkpoints.load(ckpt)[1]))
    # Spot-check one head's transposition independently of the mapping code (layer 1, the last
    # kv head h of k_proj: rows h*D..(h+1)*D of HF's [K * D, E]).
    d, h = cfg.head_dim, cfg.num_kv_heads - 1
    k = model.model.layers[1].self_attn.k_proj.weight.detach().float().numpy()
    _, params = checkpoints.load(ckpt)
    np.testing.assert_array_equal(
        np.asarray(params["layers_1"]["self_attention"]["key"]["kernel"])[:, h, :],
        k[h * d:(h + 1) * d].T)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_causal_logits_match_hf(hf_models, variant):
  model, _, ckpt = hf_models[variant]
  _, module, params = _load(ckpt)
  hf_ids = np.random.RandomState(1).randint(0, VOCAB, (3, 9))  # HF id 0 (rso 1) included
  hf_ids[0, :3] = [0, 1, 2]
  ours = _causal_logits(module, params, hf_ids + 1)
  assert ours.shape == (3, 9, VOCAB + 1) and np.all(ours[..., 0] < -1e9)
  with torch.no_grad():
    hf = model(torch.tensor(hf_ids)).logits.numpy()
  diff = np.abs(ours[..., 1:] - hf).max()
  assert diff < TOL, diff
  assert np.abs(hf).max() > 1.0  # not vacuous
  print(f"{variant}: causal logits max |diff| {diff:.2e}")


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_prompt_response_logits_match_hf(hf_models, variant):
  """The T5-shaped call: ragged prompts (tokens, EOS, padding) and N = 2 ragged responses each
  (shift-right decoder inputs) give HF's logits of prompt + response at every real target."""
  model, _, ckpt = hf_models[variant]
  _, module, params = _load(ckpt)
  prompts = _prompts(2)
  b, n, ld = prompts.shape[0], 2, 6
  rng = np.random.RandomState(3)
  targets = rng.randint(1, VOCAB + 1, (b * n, ld)).astype(np.int32)  # rso ids
  for row, length in enumerate((6, 3, 1, 5, 6, 2)):
    targets[row, length:] = 0
  inputs = np.concatenate([np.zeros((b * n, 1), np.int32), targets[:, :-1]], axis=1)
  ours = np.asarray(jax.jit(lambda p, e, d: module.apply({"params": p}, e, d,
                                                         enable_dropout=False))(
      params, jnp.asarray(prompts), jnp.asarray(inputs)))
  assert ours.shape == (b * n, ld, VOCAB + 1)
  worst = 0.0
  for row in range(b * n):
    prompt = _hf_prompt(prompts[row // n])
    length = int(np.sum(targets[row] > 0))
    response = [int(t) - 1 for t in targets[row, :length]]
    hf = _hf_logits(model, prompt + response)[len(prompt) - 1:len(prompt) - 1 + length]
    worst = max(worst, float(np.abs(ours[row, :length, 1:] - hf).max()))
  assert worst < TOL, worst
  print(f"{variant}: prompt/response logits max |diff| {worst:.2e}")


@pytest.mark.parametrize("variant", ["llama_gqa_untied", "qwen2_bias_tied"])
def test_sampled_log_probs_match_hf(hf_models, variant):
  """log π of sampled responses (cached decoding, EOS included) = HF's teacher-forced sum."""
  model, _, ckpt = hf_models[variant]
  _, module, params = _load(ckpt)
  prompts = _prompts(4)
  out = decoding.sample(module, params, jnp.asarray(prompts), jax.random.key(0), num_decodes=4,
                        max_decode_length=12, temperature=1.0, top_k=None, top_p=None,
                        eos_id=EOS)
  tokens, lengths = np.asarray(out.tokens), np.asarray(out.lengths)
  logps, finished = np.asarray(out.model_logps), np.asarray(out.finished)
  # Not degenerate: distinct responses, some ended by EOS within 12 tokens, some not.
  assert len({tuple(r) for r in tokens.reshape(-1, 12)}) > 8
  assert finished.any() and not finished.all(), finished
  worst = 0.0
  for bi in range(prompts.shape[0]):
    prompt = _hf_prompt(prompts[bi])
    for ni in range(4):
      length = int(lengths[bi, ni])
      response = [int(t) - 1 for t in tokens[bi, ni, :length]]
      assert all(t >= 0 for t in response) and not np.any(tokens[bi, ni, length:])
      assert (response[-1] == HF_EOS) == bool(finished[bi, ni])
      logits = torch.tensor(_hf_logits(model, prompt + response[:-1]))
      logp = torch.log_softmax(logits.double(), -1)[len(prompt) - 1:]
      hf = float(logp[torch.arange(length), torch.tensor(response)].sum())
      worst = max(worst, abs(float(logps[bi, ni]) - hf))
  assert worst < TOL, worst
  print(f"{variant}: sampled log pi max |diff| {worst:.2e} (sums of up to 12 tokens)")


# ------------------------------------------------------------------------------ export


@pytest.fixture(scope="session")
def exported(hf_models, tmp_path_factory):
  """name -> HF directory exported (CLI) from the converted checkpoint."""
  out = {}
  for name, (_, _, ckpt) in hf_models.items():
    hf_dir = str(tmp_path_factory.mktemp(name + "_export") / "hf")
    args = ["--checkpoint", ckpt, "--out", hf_dir]
    if name == "llama_gqa_untied":  # shards too: at most 100 kB a file
      args.append("--max_shard_size=100KB")
    assert export.main(args) == 0
    out[name] = hf_dir
  return out


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_export_loads_in_transformers(hf_models, exported, variant):
  hf_dir = exported[variant]
  manifest, module, params = _load(hf_models[variant][2])
  model, info = transformers.AutoModelForCausalLM.from_pretrained(
      hf_dir, output_loading_info=True)
  assert not info["missing_keys"] and not info["unexpected_keys"], info
  assert not info["mismatched_keys"] and not info["error_msgs"], info
  assert type(model).__name__ == manifest.network.architecture
  assert model.config.tie_word_embeddings == manifest.network.tie_word_embeddings
  hf_ids = np.random.RandomState(5).randint(0, VOCAB, (2, 11))
  ours = _causal_logits(module, params, hf_ids + 1)
  with torch.no_grad():
    hf = model.eval()(torch.tensor(hf_ids)).logits.numpy()
  diff = np.abs(ours[..., 1:] - hf).max()
  assert diff < TOL, diff
  print(f"{variant}: exported logits max |diff| {diff:.2e}")


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_export_convert_round_trip_is_bit_exact(hf_models, exported, variant):
  manifest, _, params = _load(hf_models[variant][2])
  config2, params2 = convert.from_hf(exported[variant])
  assert config2 == manifest.network
  assert jax.tree.structure(params2) == jax.tree.structure(params)
  for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(params)[0],
                          jax.tree.leaves(params2)):
    assert b.dtype == np.float32
    assert np.array_equal(np.asarray(a), b), jax.tree_util.keystr(path)


def test_export_files(hf_models, exported):
  for name, hf_dir in exported.items():
    files = set(os.listdir(hf_dir))
    if name == "llama_gqa_untied":
      index = json.load(open(os.path.join(hf_dir, "model.safetensors.index.json")))
      shards = sorted(set(index["weight_map"].values()))
      assert len(shards) > 1 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
      assert files == {"config.json", "generation_config.json",
                       "model.safetensors.index.json", *shards}
      assert all(os.path.getsize(os.path.join(hf_dir, s)) < 100_000 + 40_000 for s in shards)
    else:  # no tokenizer (the manifest has no vocabulary), one file under 50GB
      assert files == {"config.json", "generation_config.json", "model.safetensors"}, name
    cfg = json.load(open(os.path.join(hf_dir, "config.json")))
    assert cfg["model_type"] == VARIANTS[name][0][:-len("Config")].lower()
    assert "eos_token_id" not in cfg  # the vocabulary is unknown
    assert json.load(open(os.path.join(hf_dir, "generation_config.json"))) == {}


def test_export_with_byte_vocabulary_names_eos(hf_models, tmp_path):
  """A decoder checkpoint with a non-HF vocabulary: EOS (rso 1) is HF id 0, no tokenizer."""
  _, _, ckpt = hf_models["qwen2_bias_tied"]
  manifest, params = checkpoints.load(ckpt)
  byte_ckpt = str(tmp_path / "bytes")
  checkpoints.save_params(byte_ckpt, params, checkpoints.Manifest(
      kind="policy", network=manifest.network, vocabulary={"type": "bytes"}))
  out = export.export(byte_ckpt, str(tmp_path / "hf"))
  assert sorted(os.listdir(out)) == ["config.json", "generation_config.json",
                                     "model.safetensors"]
  assert json.load(open(os.path.join(out, "config.json")))["eos_token_id"] == 0
  assert json.load(open(os.path.join(out, "generation_config.json"))) == {"eos_token_id": 0}


def test_to_hf_checks_params(hf_models):
  manifest, _, params = _load(hf_models["llama_gqa_untied"][2])
  hf_cfg, tensors = export.to_hf(manifest.network, params)
  assert hf_cfg["architectures"] == ["LlamaForCausalLM"] and "lm_head.weight" in tensors
  assert tensors["model.layers.0.self_attn.k_proj.weight"].shape == (2 * 16, 64)
  assert all(t.dtype == np.float32 and t.flags["C_CONTIGUOUS"] for t in tensors.values())
  bad = jax.tree.map(lambda x: x, params)
  del bad["logits_dense"]
  with pytest.raises(ValueError, match="logits_dense"):
    export.to_hf(manifest.network, bad)


def test_parse_size_and_shards():
  assert export.parse_size("100KB") == 100_000 and export.parse_size("2GiB") == 2 << 30
  assert export.parse_size(7) == 7 and export.parse_size("50GB") == 50 * 10**9
  with pytest.raises(ValueError, match="max_shard_size"):
    export.parse_size("lots")
  t = {"a": np.zeros(10, np.float32), "b": np.zeros(30, np.float32), "c": np.zeros(5, np.float32)}
  assert export.shard_names(t, 100) == [["a"], ["b"], ["c"]]  # b alone is over the limit
  assert export.shard_names(t, 200) == [["a", "b", "c"]]


# ------------------------------------------------------------------------------ refusals


def _config_variant(hf_models, tmp_path, base: str, edit) -> str:
  d = str(tmp_path / "edited")
  shutil.copytree(hf_models[base][1], d)
  path = os.path.join(d, "config.json")
  cfg = json.load(open(path))
  edit(cfg)
  with open(path, "w") as f:
    json.dump(cfg, f)
  return d


def _set(**kv):
  return lambda cfg: cfg.update(kv)


@pytest.mark.parametrize("base,edit,needle", [
    ("llama_gqa_untied", _set(rope_parameters={"rope_type": "linear", "factor": 2.0,
                                               "rope_theta": 1e4}), "rope_parameters="),
    ("llama_gqa_untied", _set(rope_parameters=None, rope_theta=1e4,
                              rope_scaling={"type": "dynamic", "factor": 2.0}), "rope_scaling="),
    ("llama_gqa_untied", _set(rope_parameters={"rope_type": "llama3", "factor": 8.0,
                                               "rope_theta": 5e5}), "rope_parameters="),
    ("qwen2_bias_tied", _set(use_sliding_window=True, sliding_window=4), "use_sliding_window"),
    ("qwen2_bias_tied", _set(layer_types=["full_attention", "sliding_attention"]),
     "layer_types"),
    ("llama_gqa_untied", _set(hidden_act="gelu"), "hidden_act='gelu'"),
    ("llama_gqa_untied", _set(mlp_bias=True), "mlp_bias"),
    ("llama_gqa_untied", _set(model_type="mistral"), "model_type='mistral'"),
    ("llama_gqa_untied", _set(architectures=["LlamaForSequenceClassification"]),
     "architectures"),
])
def test_unsupported_configs_are_refused(hf_models, tmp_path, capsys, base, edit, needle):
  hf_dir = _config_variant(hf_models, tmp_path, base, edit)
  out = str(tmp_path / "out")
  capsys.readouterr()
  assert convert.main(["--hf_dir", hf_dir, "--out", out]) == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and err.startswith("rso_jax.convert: error: "), err
  assert needle in err, err
  assert not os.path.exists(out)


def test_bad_tensors_are_refused(hf_models):
  _, hf_dir, _ = hf_models["qwen2_bias_tied"]
  tensors = convert.read_safetensors(hf_dir)
  cfg = hf_decoder.config_from_hf(json.load(open(os.path.join(hf_dir, "config.json"))))
  name = "model.layers.1.self_attn.v_proj.bias"
  with pytest.raises(ValueError, match=rf"{name}.*\(16,\), expected \(32,\)"):
    hf_decoder.params_from_hf(dict(tensors, **{name: np.zeros(16, np.float32)}), cfg)
  with pytest.raises(ValueError, match="model.norm.weight"):
    hf_decoder.params_from_hf({k: v for k, v in tensors.items() if k != "model.norm.weight"},
                              cfg)
  with pytest.raises(ValueError, match="o_proj.bias"):
    hf_decoder.params_from_hf(dict(tensors, **{"model.layers.0.self_attn.o_proj.bias":
                                               np.zeros(64, np.float32)}), cfg)
  # A rotary buffer (older files hold one) is dropped, as transformers drops it.
  buffered = dict(tensors, **{"model.layers.0.self_attn.rotary_emb.inv_freq": np.ones(8)})
  jax.tree.map(np.testing.assert_array_equal, hf_decoder.params_from_hf(buffered, cfg),
               hf_decoder.params_from_hf(tensors, cfg))
  untied = dict(tensors, **{"lm_head.weight": tensors["model.embed_tokens.weight"] + 1})
  with pytest.raises(ValueError, match="lm_head.weight differs"):
    hf_decoder.params_from_hf(untied, cfg)


def test_tokenizer_flags_are_checked(hf_models, tmp_path, capsys):
  _, hf_dir, _ = hf_models["llama_gqa_untied"]

  inputs = tmp_path / "inputs"
  inputs.mkdir()

  def refused(*flags, hf=hf_dir):
    out = str(tmp_path / f"out{len(os.listdir(tmp_path))}")
    assert convert.main(["--hf_dir", hf, "--out", out, *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("rso_jax.convert: error: "), err
    assert not os.path.exists(out)
    return err

  # --tokenizer is for decoder-only checkpoints; a T5 reads a SentencePiece model.
  t5 = transformers.T5ForConditionalGeneration(transformers.T5Config(
      vocab_size=64, d_model=16, d_kv=4, num_heads=2, d_ff=32, num_layers=1))
  t5.save_pretrained(str(inputs / "t5"))
  big = helpers.write_hf_tokenizer(inputs / "big", WORDS)  # ~270 tokens, past VOCAB
  capsys.readouterr()
  assert "no such file" in refused(f"--tokenizer={inputs / 'missing.json'}")
  assert "no such file" in refused(f"--tokenizer={inputs}")  # a directory without one
  assert "not both" in refused(f"--tokenizer={big}", "--vocabulary=bytes")
  (inputs / "bad.json").write_text("[1, 2]")
  assert "HF tokenizer" in refused(f"--tokenizer={inputs / 'bad.json'}")
  assert f"vocab_size={VOCAB}" in refused(f"--tokenizer={big}")
  assert "decoder-only" in refused(f"--tokenizer={big}", hf=str(inputs / "t5"))
  assert "--eos_token applies to a HF tokenizer" in refused("--eos_token=x")


# ------------------------------------------------------------------------------ HF tokenizer


WORDS = ("owl", "cat", "dog", "sun", "moon", "tree", "river", "stone")


@pytest.fixture(scope="session")
def tokenizer_model(tmp_path_factory):
  """(HF dir of a Qwen2 model with a HF tokenizer (the vocabulary padded past it, as Qwen2's
  is), its converted checkpoint (default vocabulary: <hf_dir>/tokenizer.json))."""
  root = tmp_path_factory.mktemp("tokenizer_model")
  hf_dir = str(root / "hf")
  helpers.write_hf_tokenizer(hf_dir, WORDS)
  import tokenizers  # pylint: disable=g-import-not-at-top
  size = tokenizers.Tokenizer.from_file(os.path.join(hf_dir, "tokenizer.json")).get_vocab_size()
  cfg = transformers.Qwen2Config(**dict(_SIZES, vocab_size=size + 13, eos_token_id=0,
                                        bos_token_id=None, tie_word_embeddings=True))
  torch.manual_seed(11)
  transformers.Qwen2ForCausalLM(cfg).save_pretrained(hf_dir)
  ckpt = str(root / "ckpt")
  assert convert.main(["--hf_dir", hf_dir, "--out", ckpt]) == 0
  return hf_dir, ckpt


def test_convert_records_the_hf_tokenizer(tokenizer_model, tmp_path, capsys):
  hf_dir, ckpt = tokenizer_model
  manifest = checkpoints.read_manifest(ckpt)
  assert manifest.vocabulary == {"type": "hf_tokenizer",
                                 "path": os.path.join(hf_dir, "tokenizer.json"),
                                 "file": "tokenizer.json"}
  for name in ("tokenizer.json", "tokenizer_config.json"):  # copied beside the manifest
    assert open(os.path.join(ckpt, name), "rb").read() == open(
        os.path.join(hf_dir, name), "rb").read()
  vocab = manifest.get_vocabulary()
  assert vocab.eos_id == 1 and vocab.vocab_size <= manifest.network.vocab_size + 1
  # --tokenizer names it for a directory without one (the file or its directory).
  bare = str(tmp_path / "bare")
  os.makedirs(bare)
  for name in ("config.json", "model.safetensors"):
    shutil.copy(os.path.join(hf_dir, name), bare)
  for i, flag in enumerate((hf_dir, os.path.join(hf_dir, "tokenizer.json"))):
    out = str(tmp_path / f"out{i}")
    assert convert.main(["--hf_dir", bare, "--out", out, f"--tokenizer={flag}"]) == 0
    assert checkpoints.read_manifest(out).vocabulary["path"] == os.path.join(
        hf_dir, "tokenizer.json")
  assert "vocabulary: HF tokenizer" in capsys.readouterr().out
  # A tokenizer.json with no tokenizer_config.json: its EOS must be named (--eos_token).
  shutil.copy(os.path.join(hf_dir, "tokenizer.json"), bare)
  assert convert.main(["--hf_dir", bare, "--out", str(tmp_path / "no_eos")]) == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and "no EOS token" in err, err
  out = str(tmp_path / "eos")
  assert convert.main(["--hf_dir", bare, "--out", out, "--eos_token=<|im_end|>"]) == 0
  m = checkpoints.read_manifest(out)
  assert m.vocabulary["eos_token"] == "<|im_end|>"
  assert m.get_vocabulary().eos_id == 3  # <|im_end|> is HF id 2


def test_export_writes_the_hf_tokenizer(tokenizer_model, tmp_path):
  hf_dir, ckpt = tokenizer_model
  out = str(tmp_path / "hf")
  assert export.main(["--checkpoint", ckpt, "--out", out]) == 0
  assert set(os.listdir(out)) == {"config.json", "generation_config.json", "model.safetensors",
                                  "tokenizer.json", "tokenizer_config.json"}
  for name in ("tokenizer.json", "tokenizer_config.json"):
    assert open(os.path.join(out, name), "rb").read() == open(
        os.path.join(hf_dir, name), "rb").read()
  cfg = json.load(open(os.path.join(out, "config.json")))
  # <|endoftext|> (HF id 0) is EOS and padding; the tokenizer has no BOS.
  assert (cfg["eos_token_id"], cfg["pad_token_id"]) == (0, 0) and "bos_token_id" not in cfg
  assert json.load(open(os.path.join(out, "generation_config.json"))) == {
      "eos_token_id": 0, "pad_token_id": 0}
  # transformers' tokenizer of the export: our ids - 1, the same chat prompt.
  vocab = checkpoints.read_manifest(ckpt).get_vocabulary()
  tok = transformers.AutoTokenizer.from_pretrained(out)
  text = "owl cat river, stones!"
  assert tok(text, add_special_tokens=False).input_ids == [i - 1 for i in vocab.encode(text)]
  assert tok.eos_token_id == vocab.eos_id - 1
  messages = [{"role": "user", "content": "owl moon"}]
  assert tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == (
      vocab.apply_chat_template(messages))
  model, info = transformers.AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
  assert not info["missing_keys"] and not info["unexpected_keys"], info
  # And back: convert(export) finds the tokenizer again, the same vocabulary.
  again = str(tmp_path / "again")
  assert convert.main(["--hf_dir", out, "--out", again]) == 0
  manifest = checkpoints.read_manifest(again)
  assert manifest.vocabulary["path"] == os.path.join(out, "tokenizer.json")
  assert checkpoints.same_vocabulary(manifest.get_vocabulary(), vocab)
  assert manifest.network == checkpoints.read_manifest(ckpt).network
