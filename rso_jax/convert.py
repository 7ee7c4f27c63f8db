"""Import a HuggingFace checkpoint directory (T5, or a Llama / Qwen2 causal LM) into rso_jax.

    python -m rso_jax.convert --hf_dir=/path/to/flan-t5-base --out=/path/to/ckpt \
        [--spm_path=/path/to/spiece.model [--extra_ids=N] | --vocabulary=bytes]
    python -m rso_jax.convert --hf_dir=/path/to/Qwen2-0.5B --out=/path/to/ckpt \
        [--tokenizer=/path/to/tokenizer.json]

reads `config.json` and `model.safetensors` (or a sharded `model.safetensors.index.json`) with
safetensors' NumPy loader (bfloat16 tensors through a small header reader, since NumPy has no
bfloat16), so no torch is needed at run time, and writes a self-describing params checkpoint in
the layout of `checkpoints.py`: `<out>/params/` (orbax tree, float32) + `<out>/rso_manifest.json`
(kind "seq2seq", source "convert", the network config, the vocabulary) + a copy of the
vocabulary's files (`spiece.model`; `tokenizer.json` and `tokenizer_config.json`). The trainer
and the sampling stage start from it (`INITIAL_CHECKPOINT_PATH=<out>`); `python -m
rso_jax.export` is the inverse.

Families, by `config.json`'s `model_type`:
  "t5", "mt5"       `network.T5Config` (below)
  "llama", "qwen2"  `decoder_network.DecoderConfig` (`LlamaForCausalLM`, `Qwen2ForCausalLM`;
                    the mapping and what it refuses: `hf_decoder.py`: rope scaling, sliding
                    windows, activations other than silu, `mlp_bias`, other heads)
Any other `model_type` is refused with one line naming it.

Vocabulary (recorded in the manifest): `--spm_path` names a SentencePiece model, `--vocabulary=
bytes` the byte vocabulary, `--tokenizer` (decoder-only checkpoints: a HF `tokenizer.json`, or
the directory holding it; `--eos_token` names its EOS where no tokenizer_config.json does) a HF
tokenizer, `{"type": "hf_tokenizer", "path": ...}`. With none of
them, a decoder-only checkpoint uses `<hf_dir>/tokenizer.json` when it exists; a T5 checkpoint
uses `<hf_dir>/spiece.model` when it exists; else the manifest has no vocabulary (loading the
checkpoint's vocabulary then fails with a one-line error saying how to fix it). `--extra_ids`
(sentinels appended to the SentencePiece vocabulary) defaults, for `<hf_dir>/spiece.model`, to
`extra_ids` of `<hf_dir>/tokenizer_config.json` when it has one (HF T5 dirs and `export` write
it); otherwise to 100, HF T5's convention, when `pieces + 100 <= vocab_size`, else 0. A
decoder-only network reads rso ids 0..vocab_size (HF id + 1; 0 is padding), so a vocabulary of
up to `vocab_size + 1` ids fits it.

T5 (`model_type` "t5" or "mt5", `T5ForConditionalGeneration`):
- T5 v1.1 / Flan-T5 / mT5: `feed_forward_proj="gated-gelu"` -> `mlp_activations=("gelu",
  "linear")` (HF's "gelu_new" is the tanh approximation, as in T5X), untied `lm_head`.
- T5 v1.0: `feed_forward_proj="relu"` (single `wi`) with tied, `d_model**-0.5`-scaled output
  embedding -> `mlp_activations=("relu",)`, `logits_via_embedding=True`; parity is tested.
- Other `feed_forward_proj` values whose activation has an exact counterpart in `network.py`
  ("gelu_new"/"gelu_pytorch_tanh" -> "gelu", "gelu"/"gelu_python" -> "gelu_exact", "relu",
  "silu"/"swish", gated or not; a gated exact GELU is "gated-gelu_python", since HF reads
  "gated-gelu" as the tanh approximation). Anything else (e.g. "gated-quick_gelu") is a
  ValueError naming the field.
- Output head, following transformers 5: `scale_decoder_outputs` (or, in older configs,
  `tie_word_embeddings`, default True) says whether the decoder output is scaled by
  `d_model**-0.5`; `lm_head.weight` absent from the file (or bit-equal to `shared.weight`) means
  the head is tied to the embedding.
  Tied + scaled -> `logits_via_embedding=True`; otherwise an untied `logits_dense` kernel
  (a copy of the embedding when the file ties them without scaling, the scale folded into the
  kernel when a separate head is scaled).
Refused with a ValueError naming the field: other `model_type`s (umt5, longt5, ...), other
architectures (encoder-only, classification heads), tensors the mapping does not consume, and
shape mismatches.
"""

from __future__ import annotations

import json
import os
import struct
import sys
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from safetensors import safe_open

from rso_jax import checkpoints
from rso_jax import errors
from rso_jax import fs
from rso_jax import hf_decoder
from rso_jax import network
from rso_jax import networks
from rso_jax import runs
from rso_jax.tasks import vocab as vocab_lib

Params = Dict[str, Any]

SUPPORTED_MODEL_TYPES = ("t5", "mt5")
SUPPORTED_ARCHITECTURES = ("T5ForConditionalGeneration", "T5WithLMHeadModel",
                           "MT5ForConditionalGeneration")
# HF activation name (config.dense_act_fn) -> network._ACTIVATIONS name, exact counterparts only.
HF_ACTIVATIONS = {
    "gelu_new": "gelu",
    "gelu_pytorch_tanh": "gelu",
    "gelu": "gelu_exact",
    "gelu_python": "gelu_exact",  # erf GELU written in Python: how `export` spells a gated one
    "relu": "relu",
    "silu": "silu",
    "swish": "silu",
}
# Tensors HF itself ignores when loading (the decoder's unused cross-attention position bias).
_IGNORED = ("decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight",)


# ------------------------------------------------------------------------------ config


def config_from_hf(hf_config: Mapping[str, Any], tied_head: bool) -> Tuple[network.T5Config, bool]:
  """(`T5Config`, scale_decoder_outputs) from a parsed HF `config.json`.

  `tied_head`: whether the checkpoint has no separate `lm_head.weight`.
  """
  model_type = hf_config.get("model_type")
  if model_type not in SUPPORTED_MODEL_TYPES:
    raise ValueError(f"config.json model_type={model_type!r} is not supported; expected one of "
                     f"{SUPPORTED_MODEL_TYPES}")
  archs = hf_config.get("architectures") or []
  bad = [a for a in archs if a not in SUPPORTED_ARCHITECTURES]
  if bad:
    raise ValueError(f"config.json architectures={archs!r} is not supported; expected one of "
                     f"{SUPPORTED_ARCHITECTURES}")
  ffp = hf_config.get("feed_forward_proj", "relu")
  parts = str(ffp).split("-")
  if len(parts) > 2 or (len(parts) == 2 and parts[0] != "gated"):
    raise ValueError(f"config.json feed_forward_proj={ffp!r}: expected 'gated-ACT' or 'ACT'")
  gated = parts[0] == "gated" and len(parts) == 2
  hf_act = "gelu_new" if ffp == "gated-gelu" else parts[-1]  # HF's backward-compatible alias
  if hf_act not in HF_ACTIVATIONS:
    raise ValueError(f"config.json feed_forward_proj={ffp!r}: activation {hf_act!r} has no "
                     f"exact counterpart in network.py; supported: {sorted(HF_ACTIVATIONS)}")
  act = HF_ACTIVATIONS[hf_act]
  if "scale_decoder_outputs" in hf_config:  # transformers >= 5 writes it explicitly
    scale = bool(hf_config["scale_decoder_outputs"])
  else:  # older configs: tie_word_embeddings (default True) meant tied *and* scaled.
    scale = hf_config.get("tie_word_embeddings", True) is not False
  d_model = int(hf_config["d_model"])
  num_layers = int(hf_config["num_layers"])
  num_decoder_layers = hf_config.get("num_decoder_layers")
  config = network.T5Config(
      vocab_size=int(hf_config["vocab_size"]),
      emb_dim=d_model,
      num_heads=int(hf_config["num_heads"]),
      head_dim=int(hf_config["d_kv"]),
      mlp_dim=int(hf_config["d_ff"]),
      num_encoder_layers=num_layers,
      num_decoder_layers=int(num_layers if num_decoder_layers is None else num_decoder_layers),
      mlp_activations=(act, "linear") if gated else (act,),
      dropout_rate=float(hf_config.get("dropout_rate", 0.1)),
      relative_attention_num_buckets=int(hf_config.get("relative_attention_num_buckets", 32)),
      relative_attention_max_distance=int(hf_config.get("relative_attention_max_distance", 128)),
      layer_norm_epsilon=float(hf_config.get("layer_norm_epsilon", 1e-6)),
      logits_via_embedding=bool(tied_head and scale),
  )
  return config, scale


# ------------------------------------------------------------------------------ tensors


def _safetensors_files(hf_dir: str) -> list:
  index = os.path.join(hf_dir, "model.safetensors.index.json")
  single = os.path.join(hf_dir, "model.safetensors")
  if os.path.exists(index):
    with open(index) as f:
      weight_map = json.load(f)["weight_map"]
    return sorted({os.path.join(hf_dir, v) for v in weight_map.values()})
  if os.path.exists(single):
    return [single]
  raise FileNotFoundError(
      f"no model.safetensors or model.safetensors.index.json in {hf_dir!r} (only safetensors "
      f"checkpoints are read; re-save a PyTorch .bin one with save_pretrained("
      f"safe_serialization=True))")


def _read_bf16(path: str, name: str) -> np.ndarray:
  """One BF16 tensor from a safetensors file (NumPy has no bfloat16; read the raw bytes)."""
  with open(path, "rb") as f:
    (header_len,) = struct.unpack("<Q", f.read(8))
    header = json.loads(f.read(header_len))
    info = header[name]
    start, end = info["data_offsets"]
    f.seek(8 + header_len + start)
    buf = f.read(end - start)
  return np.frombuffer(buf, dtype=ml_dtypes.bfloat16).reshape(info["shape"])


def read_safetensors(hf_dir: str) -> Dict[str, np.ndarray]:
  """All tensors of a (possibly sharded) safetensors checkpoint as float32 NumPy arrays."""
  tensors = {}
  for path in _safetensors_files(hf_dir):
    with safe_open(path, framework="numpy") as f:
      for name in f.keys():
        try:
          x = f.get_tensor(name)
        except TypeError:  # bfloat16
          x = _read_bf16(path, name)
        tensors[name] = np.asarray(x, dtype=np.float32)
  return tensors


# ------------------------------------------------------------------------------ mapping


class _Tensors:
  """Pops HF tensors by name, checking shapes, so leftovers can be reported."""

  def __init__(self, tensors: Dict[str, np.ndarray]):
    self._t = dict(tensors)  # shallow copy: the caller's dict is left intact

  def has(self, name: str) -> bool:
    return name in self._t

  def peek(self, name: str) -> Optional[np.ndarray]:
    return self._t.get(name)

  def pop(self, name: str, shape: Tuple[int, ...]) -> np.ndarray:
    if name not in self._t:
      raise ValueError(f"checkpoint is missing tensor {name!r} (expected shape {shape})")
    x = self._t.pop(name)
    if tuple(x.shape) != tuple(shape):
      raise ValueError(f"tensor {name!r} has shape {tuple(x.shape)}, expected {tuple(shape)} "
                       f"from config.json")
    return x

  def leftover(self) -> list:
    return sorted(k for k in self._t if k not in _IGNORED)


def _attention(t: _Tensors, prefix: str, cfg: network.T5Config) -> Params:
  """HF q/k/v `[H*D, E]`, o `[E, H*D]` -> kernels `[E, H, D]` and out `[H, D, E]`."""
  e, h, d = cfg.emb_dim, cfg.num_heads, cfg.head_dim
  out = {}
  for hf, ours in (("q", "query"), ("k", "key"), ("v", "value")):
    w = t.pop(f"{prefix}.{hf}.weight", (h * d, e))
    out[ours] = {"kernel": np.ascontiguousarray(w.T).reshape(e, h, d)}
  w = t.pop(f"{prefix}.o.weight", (e, h * d))
  out["out"] = {"kernel": np.ascontiguousarray(w.T).reshape(h, d, e)}
  return out


def _mlp(t: _Tensors, prefix: str, cfg: network.T5Config) -> Params:
  """HF wi `[F, E]` / wi_0, wi_1, wo `[E, F]` -> `[E, F]` / `[F, E]` kernels."""
  e, f = cfg.emb_dim, cfg.mlp_dim
  out = {}
  names = ["wi"] if len(cfg.mlp_activations) == 1 else [f"wi_{i}" for i in
                                                        range(len(cfg.mlp_activations))]
  for n in names:
    out[n] = {"kernel": np.ascontiguousarray(t.pop(f"{prefix}.{n}.weight", (f, e)).T)}
  out["wo"] = {"kernel": np.ascontiguousarray(t.pop(f"{prefix}.wo.weight", (e, f)).T)}
  return out


def _scale(t: _Tensors, name: str, cfg: network.T5Config) -> Params:
  return {"scale": t.pop(name, (cfg.emb_dim,))}


def _relpos(t: _Tensors, stack: str, cfg: network.T5Config) -> Params:
  # HF [buckets, heads] -> ours [heads, buckets]
  name = f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
  w = t.pop(name, (cfg.relative_attention_num_buckets, cfg.num_heads))
  return {"rel_embedding": np.ascontiguousarray(w.T)}


def params_from_hf(tensors: Dict[str, np.ndarray], cfg: network.T5Config,
                   scale_decoder_outputs: bool) -> Params:
  """HF T5 state dict (float32 NumPy) -> `network.Transformer` params (plain nested dict)."""
  return _map_tensors(_Tensors(tensors), cfg, scale_decoder_outputs)


def _map_tensors(t: _Tensors, cfg: network.T5Config, scale_decoder_outputs: bool) -> Params:
  """Pops every HF tensor out of `t` (each is freed once mapped) into our param tree."""
  v, e = cfg.vocab_size, cfg.emb_dim
  if t.has("shared.weight"):
    embedding = t.pop("shared.weight", (v, e))
  else:
    embedding = t.pop("encoder.embed_tokens.weight", (v, e))
  for stack in ("encoder", "decoder"):  # tied copies of `shared`, when a file stores them
    name = f"{stack}.embed_tokens.weight"
    if t.has(name) and not np.array_equal(t.pop(name, (v, e)), embedding):
      raise ValueError(f"tensor {name!r} differs from shared.weight: untied input embeddings "
                       f"are not supported")

  encoder: Params = {"relpos_bias": _relpos(t, "encoder", cfg)}
  for i in range(cfg.num_encoder_layers):
    p = f"encoder.block.{i}.layer"
    encoder[f"layers_{i}"] = {
        "pre_attention_layer_norm": _scale(t, f"{p}.0.layer_norm.weight", cfg),
        "attention": _attention(t, f"{p}.0.SelfAttention", cfg),
        "pre_mlp_layer_norm": _scale(t, f"{p}.1.layer_norm.weight", cfg),
        "mlp": _mlp(t, f"{p}.1.DenseReluDense", cfg),
    }
  encoder["encoder_norm"] = _scale(t, "encoder.final_layer_norm.weight", cfg)

  decoder: Params = {"relpos_bias": _relpos(t, "decoder", cfg)}
  for i in range(cfg.num_decoder_layers):
    p = f"decoder.block.{i}.layer"
    decoder[f"layers_{i}"] = {
        "pre_self_attention_layer_norm": _scale(t, f"{p}.0.layer_norm.weight", cfg),
        "self_attention": _attention(t, f"{p}.0.SelfAttention", cfg),
        "pre_cross_attention_layer_norm": _scale(t, f"{p}.1.layer_norm.weight", cfg),
        "encoder_decoder_attention": _attention(t, f"{p}.1.EncDecAttention", cfg),
        "pre_mlp_layer_norm": _scale(t, f"{p}.2.layer_norm.weight", cfg),
        "mlp": _mlp(t, f"{p}.2.DenseReluDense", cfg),
    }
  decoder["decoder_norm"] = _scale(t, "decoder.final_layer_norm.weight", cfg)

  head = t.pop("lm_head.weight", (v, e)) if t.has("lm_head.weight") else None
  if cfg.logits_via_embedding:
    if head is not None and not np.array_equal(head, embedding):
      raise ValueError("lm_head.weight differs from shared.weight but the head is tied")
  else:
    # [V, E] -> [E, V]; the scale is folded into the kernel when the head is scaled.
    w = embedding if head is None else head
    kernel = np.ascontiguousarray(w.T)
    if scale_decoder_outputs:
      kernel = kernel * np.float32(e ** -0.5)
    decoder["logits_dense"] = {"kernel": kernel}

  left = t.leftover()
  if left:
    raise ValueError(f"checkpoint tensors not used by the T5 mapping (unsupported variant?): "
                     f"{left[:8]}{' ...' if len(left) > 8 else ''}")
  return {"token_embedder": {"embedding": embedding}, "encoder": encoder, "decoder": decoder}


def abstract_params(config: networks.NetworkConfig) -> Params:
  """Unboxed `jax.ShapeDtypeStruct` tree of the network's params (no FLOPs; T5 or decoder)."""
  model = networks.build(config)
  tokens = jnp.zeros((1, 1), jnp.int32)
  variables = jax.eval_shape(
      lambda: model.init(jax.random.key(0), tokens, tokens, tokens, enable_dropout=False))
  return nn.unbox(variables["params"])


def _paths(tree: Any) -> list:
  return [jax.tree_util.keystr(k) for k, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def check_params(params: Params, config: networks.NetworkConfig) -> None:
  """Raises ValueError unless `params` has exactly the tree and shapes of `init(config)`."""
  expected = abstract_params(config)
  exp_struct = jax.tree.structure(expected)
  got_struct = jax.tree.structure(params)
  if exp_struct != got_struct:
    exp_paths = set(_paths(expected))
    got_paths = set(_paths(params))
    raise ValueError(f"param tree mismatch: missing {sorted(exp_paths - got_paths)[:8]}, "
                     f"unexpected {sorted(got_paths - exp_paths)[:8]}")
  for (path, e), g in zip(jax.tree_util.tree_flatten_with_path(expected)[0],
                          jax.tree.leaves(params)):
    if tuple(e.shape) != tuple(np.shape(g)):
      raise ValueError(f"param {jax.tree_util.keystr(path)} has shape {np.shape(g)}, "
                       f"expected {e.shape}")


def read_hf_config(hf_dir: str) -> Dict[str, Any]:
  """The parsed `<hf_dir>/config.json` (FileNotFoundError / ValueError naming the file)."""
  cfg_path = os.path.join(hf_dir, "config.json")
  if not os.path.exists(cfg_path):
    raise FileNotFoundError(f"no config.json in {hf_dir!r}")
  with open(cfg_path) as f:
    try:
      hf_config = json.load(f)
    except ValueError as e:
      raise ValueError(f"{cfg_path} is not JSON: {e}") from None
  if not isinstance(hf_config, dict):
    raise ValueError(f"{cfg_path} is not a JSON object")
  return hf_config


def is_decoder_dir(hf_dir: str) -> bool:
  """Whether `<hf_dir>/config.json` is a decoder-only family (`hf_decoder.MODEL_TYPES`)."""
  return hf_decoder.is_decoder_config(read_hf_config(hf_dir))


def from_hf(hf_dir: str) -> Tuple[networks.NetworkConfig, Params]:
  """(config, float32 NumPy params) from a HuggingFace checkpoint directory: a `T5Config` for
  model_type t5 / mt5, a `DecoderConfig` for llama / qwen2 (refusing any other)."""
  hf_config = read_hf_config(hf_dir)
  model_type = hf_config.get("model_type")
  if hf_decoder.is_decoder_config(hf_config):
    config = hf_decoder.config_from_hf(hf_config)  # refuses before the tensors are read
    params = hf_decoder.params_from_hf(read_safetensors(hf_dir), config, consume=True)
    check_params(params, config)
    return config, params
  if model_type not in SUPPORTED_MODEL_TYPES:
    raise ValueError(f"config.json model_type={model_type!r} is not supported; expected one of "
                     f"{SUPPORTED_MODEL_TYPES + tuple(hf_decoder.MODEL_TYPES)}")
  store = _Tensors(read_safetensors(hf_dir))  # the only reference: peak memory ~1x + 1 tensor
  # Tied: no separate head, or one bit-equal to the embedding (files that store both copies).
  tied = not store.has("lm_head.weight") or np.array_equal(
      store.peek("lm_head.weight"),
      store.peek("shared.weight" if store.has("shared.weight") else "encoder.embed_tokens.weight"))
  config, scale = config_from_hf(hf_config, tied_head=tied)
  params = _map_tensors(store, config, scale)
  check_params(params, config)
  return config, params


# ------------------------------------------------------------------------------ vocabulary


class UsageError(ValueError):
  """A command-line input that cannot work (reported as one line, exit status 2)."""


def _spm_piece_count(spm_path: str) -> int:
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top
  if "://" in spm_path:  # gs:// and friends, as seqio reads them
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    with tf.io.gfile.GFile(spm_path, "rb") as f:
      proto = f.read()
  else:
    with open(spm_path, "rb") as f:
      proto = f.read()
  try:
    return spm.SentencePieceProcessor(model_proto=proto).get_piece_size()
  except RuntimeError as e:
    raise UsageError(f"--spm_path={spm_path!r} is not a SentencePiece model: {e}") from None


def _tokenizer_extra_ids(hf_dir: str) -> Optional[int]:
  """`extra_ids` of `<hf_dir>/tokenizer_config.json` (HF T5 and `export` write it), if any."""
  path = os.path.join(hf_dir, "tokenizer_config.json")
  try:
    with open(path) as f:
      n = json.load(f).get("extra_ids")
  except (OSError, ValueError, AttributeError):
    return None
  return int(n) if isinstance(n, int) and not isinstance(n, bool) else None


HF_TOKENIZER_FILE = vocab_lib.HF_TOKENIZER_FILE


def hf_tokenizer_spec(path: str, vocab_size: int,
                      eos_token: Optional[str] = None) -> Dict[str, Any]:
  """`{"type": "hf_tokenizer", "path": <abs tokenizer.json>}` (+ `eos_token` when given) for a
  tokenizer.json or the directory holding one. UsageError when it is missing, does not load as
  a `tasks.vocab.HFTokenizerVocabulary` (e.g. no EOS token), or has ids past `vocab_size` (the
  HF config's: HF ids 0..vocab_size-1)."""
  if fs.isdir(path):
    path = fs.join(path, HF_TOKENIZER_FILE)
  if not fs.exists(path):
    raise UsageError(f"--tokenizer={path!r}: no such file (a HF tokenizer.json, or the "
                     "directory holding one)")
  path = fs.abspath(path)
  try:
    vocab = vocab_lib.hf_vocabulary(path, eos_token)
  except ValueError as e:  # (the message names the file)
    raise UsageError(str(e)) from None
  hf_size = vocab.vocab_size - 1  # (rso ids: HF ids + 1)
  if hf_size > vocab_size:
    raise UsageError(f"HF tokenizer {path!r} has {hf_size} tokens, more than the checkpoint's "
                     f"vocab_size={vocab_size}")
  spec = {"type": "hf_tokenizer", "path": path}
  if eos_token and vocab.tokenizer_config_file is None:
    spec["eos_token"] = eos_token
  return spec


def vocabulary_spec(hf_dir: str, vocab_size: int, spm_path: Optional[str] = None,
                    extra_ids: Optional[int] = None,
                    vocabulary: Optional[str] = None, tokenizer: Optional[str] = None,
                    decoder: bool = False,
                    eos_token: Optional[str] = None) -> Optional[Dict[str, Any]]:
  """The manifest `vocabulary` entry for a conversion (see the module docstring), or None.

  `vocab_size`: the HF config's; `decoder`: the checkpoint is decoder-only (its network reads
  `vocab_size + 1` ids, and `<hf_dir>/tokenizer.json` is its default vocabulary); `eos_token`:
  a HF tokenizer's EOS where no tokenizer_config.json beside it names one. Raises
  UsageError when the choice cannot work: two given, a missing file, `--tokenizer` for a T5,
  or a vocabulary with more ids than the network reads.
  """
  if sum(bool(x) for x in (spm_path, vocabulary, tokenizer)) > 1:
    given = [f for f, x in (("--spm_path", spm_path), ("--vocabulary", vocabulary),
                            ("--tokenizer", tokenizer)) if x]
    raise UsageError(f"give one of --spm_path, --vocabulary, --tokenizer, not "
                     f"{'both' if len(given) == 2 else 'all of'} {' and '.join(given)}")
  if tokenizer and not decoder:
    raise UsageError("--tokenizer (a HF tokenizer.json) applies to decoder-only checkpoints "
                     f"(model_type {tuple(hf_decoder.MODEL_TYPES)}); a T5 checkpoint reads a "
                     "SentencePiece model: use --spm_path")
  if decoder and not (spm_path or vocabulary):
    found = os.path.join(hf_dir, HF_TOKENIZER_FILE)
    if tokenizer or os.path.exists(found):
      if extra_ids:
        raise UsageError("--extra_ids applies to a SentencePiece vocabulary, not to a HF "
                         "tokenizer")
      return hf_tokenizer_spec(tokenizer or found, vocab_size, eos_token)
  if eos_token:
    raise UsageError("--eos_token applies to a HF tokenizer (--tokenizer, or a decoder-only "
                     f"checkpoint's {HF_TOKENIZER_FILE})")
  if decoder:  # rso ids 0 (padding) .. vocab_size: one more than HF's
    vocab_size += 1
  if vocabulary is not None and vocabulary != "bytes":
    raise UsageError(f"--vocabulary={vocabulary!r}: the only named vocabulary is 'bytes' "
                     "(use --spm_path for a SentencePiece model)")
  if vocabulary == "bytes":
    if extra_ids:
      raise UsageError("--extra_ids applies to a SentencePiece vocabulary, not to bytes")
    if vocab_size < vocab_lib.BYTE_VOCAB_SIZE:
      raise UsageError(f"--vocabulary=bytes needs {vocab_lib.BYTE_VOCAB_SIZE} ids but the "
                       f"checkpoint's embedding has vocab_size={vocab_size}")
    return {"type": "bytes"}
  if not spm_path:
    found = os.path.join(hf_dir, checkpoints.SPM_FILE)
    if not os.path.exists(found):
      if extra_ids:
        raise UsageError("--extra_ids needs a SentencePiece model: give --spm_path (no "
                         f"{checkpoints.SPM_FILE} in {hf_dir!r})")
      return None
    spm_path = found
    if extra_ids is None:
      extra_ids = _tokenizer_extra_ids(hf_dir)
  if "://" not in spm_path:
    if not os.path.isfile(spm_path):
      raise UsageError(f"--spm_path={spm_path!r}: no such file")
    spm_path = os.path.abspath(spm_path)
  pieces = _spm_piece_count(spm_path)
  if extra_ids is None:
    extra_ids = 100 if pieces + 100 <= vocab_size else 0
  if extra_ids < 0:
    raise UsageError(f"--extra_ids={extra_ids} must be >= 0")
  if pieces + extra_ids > vocab_size:
    raise UsageError(f"SentencePiece model {spm_path!r} has {pieces} pieces + {extra_ids} extra "
                     f"ids = {pieces + extra_ids}, more than the checkpoint's vocab_size="
                     f"{vocab_size}")
  return {"type": "sentencepiece", "path": spm_path, "extra_ids": int(extra_ids)}


# ------------------------------------------------------------------------------ checkpoint


def save_converted(out: str, config: networks.NetworkConfig, params: Params,
                   vocabulary: Optional[Mapping[str, Any]] = None) -> None:
  """Writes `<out>/params/` (orbax) and its manifest (kind "seq2seq", source "convert").

  `vocabulary`: the manifest's vocabulary spec (`vocabulary_spec`), None when unknown; a
  SentencePiece model is copied to `<out>/spiece.model`, a HF tokenizer's files beside it.
  """
  manifest = checkpoints.Manifest(kind="seq2seq", network=config,
                                  vocabulary=None if vocabulary is None else dict(vocabulary),
                                  feature_lengths=None, task=None, source="convert")
  checkpoints.save_params(out, params, manifest)


def load_converted(path: str) -> Tuple[networks.NetworkConfig, Params]:
  """(config, params) written by `save_converted` / the CLI; checks the tree against the config."""
  manifest, params = checkpoints.load(path)
  check_params(params, manifest.network)
  return manifest.network, params


def _read_vocab_size(hf_config: Mapping[str, Any], hf_dir: str) -> int:
  if "vocab_size" not in hf_config:
    raise ValueError(f"{os.path.join(hf_dir, 'config.json')} has no vocab_size")
  return int(hf_config["vocab_size"])


def main(argv: Optional[Sequence[str]] = None) -> int:
  """Exit status 0 done, 2 a user error (one line; RSO_JAX_TRACEBACK=1 for the traceback)."""
  parser = errors.ArgumentParser(prog="python -m rso_jax.convert",
                                    error_prefix="rso_jax.convert",
                                    description=__doc__.split("\n")[0])
  parser.add_argument("--hf_dir", required=True, help="HF checkpoint dir (config.json + "
                      "model.safetensors or model.safetensors.index.json)")
  parser.add_argument("--out", required=True, help="output params checkpoint directory")
  parser.add_argument("--spm_path", default=None,
                      help="SentencePiece model of the checkpoint (default: <hf_dir>/spiece.model "
                      "when it exists)")
  parser.add_argument("--extra_ids", type=int, default=None,
                      help="sentinel ids after the SentencePiece pieces (default: <hf_dir>/"
                      "tokenizer_config.json's extra_ids for <hf_dir>/spiece.model, else 100 "
                      "when they fit in vocab_size, else 0)")
  parser.add_argument("--vocabulary", default=None, choices=("bytes",),
                      help="a named vocabulary instead of a SentencePiece model")
  parser.add_argument("--tokenizer", default=None,
                      help="decoder-only checkpoints: a HF tokenizer.json or its directory "
                      "(default: <hf_dir>/tokenizer.json when it exists)")
  parser.add_argument("--eos_token", default=None,
                      help="the HF tokenizer's EOS token, where no tokenizer_config.json beside "
                      "its tokenizer.json names one")
  args = parser.parse_args(argv)

  def run():
    fs.check_disjoint(args.out, {"--hf_dir": args.hf_dir, "--spm_path": args.spm_path,
                                 "--tokenizer": args.tokenizer})
    hf_config = read_hf_config(args.hf_dir)
    decoder = hf_decoder.is_decoder_config(hf_config)
    if decoder:  # a refused config is reported before the vocabulary is looked at
      hf_decoder.config_from_hf(hf_config)
    vocab = vocabulary_spec(args.hf_dir, _read_vocab_size(hf_config, args.hf_dir),
                            args.spm_path, args.extra_ids, args.vocabulary, args.tokenizer,
                            decoder=decoder, eos_token=args.eos_token)
    config, params = from_hf(args.hf_dir)
    with runs.removed_on_failure(args.out):
      save_converted(args.out, config, params, vocab)
    n = sum(int(np.prod(np.shape(x))) for x in jax.tree.leaves(params))
    print(f"wrote {n:,} parameters of {config} to {fs.abspath(args.out)}")
    if vocab is None and decoder:
      print(f"rso_jax.convert: warning: no vocabulary recorded (no --tokenizer, no "
            f"{HF_TOKENIZER_FILE} in {args.hf_dir!r}): re-run with --tokenizer=... before "
            "sampling or training from it", file=sys.stderr)
    elif vocab is None:
      print(f"rso_jax.convert: warning: no vocabulary recorded (no --spm_path, no "
            f"{checkpoints.SPM_FILE} in {args.hf_dir!r}): re-run with --spm_path=... or "
            "--vocabulary=bytes before sampling or training from it", file=sys.stderr)
    elif vocab["type"] == "hf_tokenizer":
      print(f"vocabulary: HF tokenizer {vocab['path']} (copied to "
            f"{fs.join(fs.abspath(args.out), HF_TOKENIZER_FILE)})")
    elif vocab["type"] == "sentencepiece":
      print(f"vocabulary: SentencePiece {vocab['path']} + {vocab['extra_ids']} extra ids "
            f"(copied to {fs.join(fs.abspath(args.out), checkpoints.SPM_FILE)})")
    else:
      print("vocabulary: bytes")

  # ValueError: UsageError, CheckpointError, refused configs.
  return errors.report("rso_jax.convert", run,
                       user_errors=(*errors.USER_ERRORS, ValueError))


if __name__ == "__main__":
  sys.exit(main())
