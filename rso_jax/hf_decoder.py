"""HF `LlamaForCausalLM` / `Qwen2ForCausalLM` <-> `decoder_network.DecoderTransformer`.

Pure mappings of NumPy arrays and config dicts, no I/O: `convert.py` reads the safetensors and
`export.py` writes them. Names (HF -> rso_jax, `i` a layer):

  model.embed_tokens.weight [V, E]               token_embedder/embedding [V, E]
  model.layers.i.input_layernorm.weight          layers_i/pre_self_attention_layer_norm/scale
  model.layers.i.self_attn.{q,k,v}_proj.weight   layers_i/self_attention/{query,key,value}/kernel
      [heads * D, E]                               [E, heads, D]  (+ bias [heads * D] -> [heads, D])
  model.layers.i.self_attn.o_proj.weight [E, H*D] layers_i/self_attention/out/kernel [H, D, E]
  model.layers.i.post_attention_layernorm.weight layers_i/pre_mlp_layer_norm/scale
  model.layers.i.mlp.{gate,up}_proj.weight [M, E] layers_i/mlp/{wi_0,wi_1}/kernel [E, M]
  model.layers.i.mlp.down_proj.weight [E, M]     layers_i/mlp/wo/kernel [M, E]
  model.norm.weight                              decoder_norm/scale
  lm_head.weight [V, E] (untied only)            logits_dense/kernel [E, V]

Supported: `architectures` `LlamaForCausalLM` / `Qwen2ForCausalLM` (or none given),
`hidden_act` "silu", the default rope (no scaling), full attention (Qwen2's
`use_sliding_window` false, every `layer_types` entry "full_attention"), no MLP bias. Anything
else is a ValueError naming the field; so is a tensor that is missing, left over, or of the
wrong shape (named by its HF name).
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Tuple

import numpy as np

from rso_jax import decoder_network

Params = Dict[str, Any]
MODEL_TYPES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}
# Buffers some files hold and transformers ignores on load (the rotary table is recomputed).
IGNORED_SUFFIXES = (".rotary_emb.inv_freq",)


def is_decoder_config(hf_config: Mapping[str, Any]) -> bool:
  """Whether a parsed HF `config.json` is a decoder-only family this module maps."""
  return hf_config.get("model_type") in MODEL_TYPES


def _rope_theta(hf_config: Mapping[str, Any]) -> float:
  rope = hf_config.get("rope_parameters") or {}
  scaling = hf_config.get("rope_scaling")
  kind = rope.get("rope_type", "default")
  if kind != "default" or (scaling and scaling.get("rope_type", scaling.get("type")) != "default"):
    raise ValueError(f"rope_parameters={rope!r} rope_scaling={scaling!r}: only the default "
                     "rope (no scaling) is supported")
  return float(rope.get("rope_theta", hf_config.get("rope_theta", 10000.0)))


def config_from_hf(hf_config: Mapping[str, Any]) -> decoder_network.DecoderConfig:
  """The `DecoderConfig` of a parsed HF `config.json` (model_type "llama" or "qwen2")."""
  model_type = hf_config.get("model_type")
  if model_type not in MODEL_TYPES:
    raise ValueError(f"model_type={model_type!r}: decoder-only checkpoints of model_type "
                     f"{tuple(MODEL_TYPES)} are supported")
  archs = hf_config.get("architectures") or []
  if any(a != MODEL_TYPES[model_type] for a in archs):
    raise ValueError(f"architectures={archs!r}: model_type {model_type!r} is supported as "
                     f"[{MODEL_TYPES[model_type]!r}] (a causal LM head)")
  act = hf_config.get("hidden_act", "silu")
  if act != "silu":
    raise ValueError(f"hidden_act={act!r}: only 'silu' (SwiGLU) is supported")
  if hf_config.get("mlp_bias"):
    raise ValueError("mlp_bias=True is not supported")
  if hf_config.get("use_sliding_window"):
    raise ValueError("use_sliding_window=True is not supported (full attention only)")
  other = sorted({t for t in hf_config.get("layer_types") or () if t != "full_attention"})
  if other:
    raise ValueError(f"layer_types has {other}: only 'full_attention' layers are supported")
  missing = [k for k in ("vocab_size", "hidden_size", "num_attention_heads", "intermediate_size",
                         "num_hidden_layers") if k not in hf_config]
  if missing:
    raise ValueError(f"config.json ({model_type}) lacks {', '.join(missing)}")
  hidden, heads = int(hf_config["hidden_size"]), int(hf_config["num_attention_heads"])
  bias = bool(hf_config.get("attention_bias", False))
  return decoder_network.DecoderConfig(
      vocab_size=int(hf_config["vocab_size"]), emb_dim=hidden, num_heads=heads,
      num_kv_heads=int(hf_config.get("num_key_value_heads") or heads),
      head_dim=int(hf_config.get("head_dim") or hidden // heads),
      mlp_dim=int(hf_config["intermediate_size"]),
      num_layers=int(hf_config["num_hidden_layers"]), rope_theta=_rope_theta(hf_config),
      layer_norm_epsilon=float(hf_config.get("rms_norm_eps", 1e-6)),
      qkv_bias=True if model_type == "qwen2" else bias,
      out_bias=False if model_type == "qwen2" else bias,
      tie_word_embeddings=bool(hf_config.get("tie_word_embeddings", False)),
      dropout_rate=float(hf_config.get("attention_dropout", 0.0)),
      max_position_embeddings=int(hf_config.get("max_position_embeddings", 4096)),
      architecture=MODEL_TYPES[model_type])


def hf_config(config: decoder_network.DecoderConfig) -> Dict[str, Any]:
  """transformers `config.json` contents for `config` (read back by `config_from_hf`)."""
  qwen = config.architecture == "Qwen2ForCausalLM"
  if qwen and (not config.qkv_bias or config.out_bias):
    raise ValueError(f"{config.architecture} has q/k/v biases and no output bias: got "
                     f"qkv_bias={config.qkv_bias}, out_bias={config.out_bias}")
  if not qwen and config.qkv_bias != config.out_bias:
    raise ValueError(f"LlamaForCausalLM biases all four projections or none (attention_bias): "
                     f"got qkv_bias={config.qkv_bias}, out_bias={config.out_bias}")
  out = {
      "architectures": [config.architecture],
      "model_type": "qwen2" if qwen else "llama",
      "vocab_size": int(config.vocab_size),
      "hidden_size": int(config.emb_dim),
      "intermediate_size": int(config.mlp_dim),
      "num_hidden_layers": int(config.num_layers),
      "num_attention_heads": int(config.num_heads),
      "num_key_value_heads": int(config.num_kv_heads),
      "head_dim": int(config.head_dim),
      "hidden_act": "silu",
      "rms_norm_eps": float(config.layer_norm_epsilon),
      "rope_parameters": {"rope_type": "default", "rope_theta": float(config.rope_theta)},
      "max_position_embeddings": int(config.max_position_embeddings),
      "tie_word_embeddings": bool(config.tie_word_embeddings),
      "attention_dropout": float(config.dropout_rate),
      "dtype": "float32",
  }
  if qwen:
    out["use_sliding_window"] = False
  else:
    out["attention_bias"] = bool(config.qkv_bias)
    out["mlp_bias"] = False
  return out


def _layer_names(i: int, cfg: decoder_network.DecoderConfig):
  """(HF name, rso_jax path, kind) of layer i's tensors; kind says how the array is laid out."""
  hf, ours = f"model.layers.{i}.", (f"layers_{i}",)
  att = ours + ("self_attention",)
  out = [(hf + "input_layernorm.weight", ours + ("pre_self_attention_layer_norm", "scale"), "vec"),
         (hf + "post_attention_layernorm.weight", ours + ("pre_mlp_layer_norm", "scale"), "vec")]
  for proj, name, heads in (("q", "query", cfg.num_heads), ("k", "key", cfg.num_kv_heads),
                            ("v", "value", cfg.num_kv_heads)):
    out.append((hf + f"self_attn.{proj}_proj.weight", att + (name, "kernel"), ("in", heads)))
    if cfg.qkv_bias:
      out.append((hf + f"self_attn.{proj}_proj.bias", att + (name, "bias"), ("bias", heads)))
  out.append((hf + "self_attn.o_proj.weight", att + ("out", "kernel"), ("out", cfg.num_heads)))
  if cfg.out_bias:
    out.append((hf + "self_attn.o_proj.bias", att + ("out", "bias"), "vec"))
  out += [(hf + "mlp.gate_proj.weight", ours + ("mlp", "wi_0", "kernel"), "t"),
          (hf + "mlp.up_proj.weight", ours + ("mlp", "wi_1", "kernel"), "t"),
          (hf + "mlp.down_proj.weight", ours + ("mlp", "wo", "kernel"), "t")]
  return out


def tensor_names(cfg: decoder_network.DecoderConfig):
  """Every (HF name, rso_jax path, kind) of a network of `cfg`, in HF's order."""
  names = [("model.embed_tokens.weight", ("token_embedder", "embedding"), "same")]
  for i in range(cfg.num_layers):
    names += _layer_names(i, cfg)
  names.append(("model.norm.weight", ("decoder_norm", "scale"), "vec"))
  if not cfg.tie_word_embeddings:
    names.append(("lm_head.weight", ("logits_dense", "kernel"), "t"))
  return names


def hf_shape(path: Tuple[str, ...], kind: Any, cfg: decoder_network.DecoderConfig
             ) -> Tuple[int, ...]:
  """The shape of the HF tensor mapped to our `path` (laid out as `kind`)."""
  e, d = cfg.emb_dim, cfg.head_dim
  if kind == "same":
    return (cfg.vocab_size, e)
  if kind == "vec":
    return (e,)
  if kind == "t":  # HF's [out, in]
    return {"wi_0": (cfg.mlp_dim, e), "wi_1": (cfg.mlp_dim, e), "wo": (e, cfg.mlp_dim),
            "logits_dense": (cfg.vocab_size, e)}[path[-2]]
  what, heads = kind
  return {"in": (heads * d, e), "bias": (heads * d,), "out": (e, heads * d)}[what]


def _to_ours(x: np.ndarray, kind: Any, cfg: decoder_network.DecoderConfig) -> np.ndarray:
  if kind in ("same", "vec"):
    return x
  if kind == "t":  # [out, in] -> [in, out]
    return x.T
  what, heads = kind
  if what == "in":  # [heads * D, E] -> [E, heads, D]
    return x.T.reshape(x.shape[1], heads, cfg.head_dim)
  if what == "bias":  # [heads * D] -> [heads, D]
    return x.reshape(heads, cfg.head_dim)
  # "out": [E, H * D] -> [H, D, E]
  return x.T.reshape(heads, cfg.head_dim, x.shape[0])


def _to_hf(x: np.ndarray, kind: Any) -> np.ndarray:
  if kind in ("same", "vec"):
    return x
  if kind == "t":
    return x.T
  what, _ = kind
  if what == "in":  # [E, heads, D] -> [heads * D, E]
    return x.reshape(x.shape[0], -1).T
  if what == "bias":
    return x.reshape(-1)
  return x.reshape(-1, x.shape[-1]).T  # [H, D, E] -> [E, H * D]


def _set(tree: Params, path: Tuple[str, ...], value: Any) -> None:
  for k in path[:-1]:
    tree = tree.setdefault(k, {})
  tree[path[-1]] = value


def _get(tree: Params, path: Tuple[str, ...]) -> Any:
  for k in path:
    tree = tree[k]
  return tree


def params_from_hf(tensors: Mapping[str, np.ndarray], cfg: decoder_network.DecoderConfig,
                   ignore: Tuple[str, ...] = (), consume: bool = False) -> Params:
  """HF state dict (NumPy) -> `DecoderTransformer(cfg)` params (plain nested dict).

  Raises ValueError for a missing tensor, one of another shape than `cfg` says, or one the
  mapping does not consume (a tied checkpoint's `lm_head.weight` equal to the embedding is
  accepted and dropped, as are `IGNORED_SUFFIXES`; `ignore` lists other names to drop).
  `consume`: pop each tensor from
  `tensors` (a dict) once mapped, so a large checkpoint is held about once, not twice."""
  names = tensor_names(cfg)
  missing = [hf for hf, _, _ in names if hf not in tensors]
  if missing:
    raise ValueError(f"tensor {missing[0]!r} is missing from the checkpoint ({cfg.architecture})"
                     + (f" (+{len(missing) - 1} more)" if len(missing) > 1 else ""))
  if cfg.tie_word_embeddings and "lm_head.weight" in tensors:
    if not np.array_equal(tensors["lm_head.weight"], tensors["model.embed_tokens.weight"]):
      raise ValueError("tie_word_embeddings=True but lm_head.weight differs from "
                       "model.embed_tokens.weight")
    ignore = tuple(ignore) + ("lm_head.weight",)
  ignore = tuple(ignore) + tuple(k for k in tensors if k.endswith(IGNORED_SUFFIXES))
  extra = sorted(set(tensors) - set(ignore) - {hf for hf, _, _ in names})
  if extra:
    raise ValueError(f"tensors the {cfg.architecture} mapping does not consume: {extra[:5]}"
                     + (f" (+{len(extra) - 5} more)" if len(extra) > 5 else ""))
  params: Params = {}
  for hf, path, kind in names:
    x = np.asarray(tensors.pop(hf) if consume else tensors[hf])
    if tuple(x.shape) != hf_shape(path, kind, cfg):
      raise ValueError(f"tensor {hf!r} has shape {tuple(x.shape)}, expected "
                       f"{hf_shape(path, kind, cfg)} from config.json")
    _set(params, path, np.ascontiguousarray(_to_ours(x, kind, cfg)))
    del x
  return params


def params_to_hf(cfg: decoder_network.DecoderConfig, params: Params) -> Dict[str, np.ndarray]:
  """`DecoderTransformer(cfg)` params -> {HF tensor name: C-contiguous NumPy array}."""
  return {hf: np.ascontiguousarray(_to_hf(np.asarray(_get(params, path)), kind))
          for hf, path, kind in tensor_names(cfg)}
