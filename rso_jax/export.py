"""Export what rso_jax made for other tools: a checkpoint as a HuggingFace directory (T5, or a
Llama / Qwen2 causal LM; the inverse of convert.py), the sampled pairs as TRL-format JSONL.

    python -m rso_jax.export --checkpoint=/path/to/run_or_step --out=/path/to/hf_dir [--force] \
        [--max_shard_size=5GB]
    python -m rso_jax.export --samples=RUN_DIR/samples/rso_sample_rank-<hash> --out=pairs.jsonl

`--samples`: the sampling stage's pairs as TRL's preference format with the reference
log-probs its DPO trainer reads precomputed (`ref_chosen_logps`, `ref_rejected_logps`, log
π_sft of each response under this run's model and vocabulary), a RAFT / ReST run's selected
responses as TRL's prompt-completion format (`tasks.generated.export_jsonl`), written
atomically.

reads any generative checkpoint through its manifest (`checkpoints.load`: a run directory, a
step directory, or a converted checkpoint; kind "seq2seq" or "policy" — a reward model is refused
with one line, exit status 2) and writes, atomically (into a temporary directory beside `--out`,
then renamed):

  config.json             transformers `T5Config` (model_type "t5",
                          architectures ["T5ForConditionalGeneration"], pad 0 / eos 1 /
                          decoder_start 0, the network's sizes; `vocab_size` is the network's
                          full, possibly padded, embedding table, e.g. 384 for bytes)
  generation_config.json  the same special ids for `generate`
  model.safetensors       float32 tensors, written with `safetensors.numpy` (no torch)
  spiece.model            the checkpoint's SentencePiece model (+ tokenizer_config.json with its
                          `extra_ids`), when it has one; a byte vocabulary gets a
                          tokenizer_config.json for `ByT5Tokenizer` (same ids as seqio's)

so that `transformers.T5ForConditionalGeneration.from_pretrained(out)` loads it with no missing or
unexpected keys, and `convert.from_hf(out)` gives back the same config and bit-identical params.

A decoder-only checkpoint (`networks.is_decoder_only`) is written the same way as its HF class
(`hf_decoder.py` holds the mapping; `AutoModelForCausalLM.from_pretrained(out)` loads it):

  config.json             `hf_decoder.hf_config` (`LlamaForCausalLM` or `Qwen2ForCausalLM`),
                          plus `bos_token_id` / `eos_token_id` / `pad_token_id`: HF ids (rso id
                          - 1) of the vocabulary's special tokens, those it has
  generation_config.json  the same ids
  model.safetensors       float32; over `--max_shard_size` (default 50GB, as `save_pretrained`)
                          shards `model-0000i-of-0000n.safetensors` + model.safetensors.index.json
  tokenizer.json          the checkpoint's HF tokenizer files (those the vocabulary reads: the
  tokenizer_config.json   copies beside its manifest first), when its vocabulary is a HF
  (chat_template.jinja)   tokenizer. A byte or SentencePiece vocabulary gets no tokenizer files
                          (its ids, read by a decoder as HF id + 1, match no HF tokenizer
                          class) and `eos_token_id` 0 (its EOS, rso id 1)

An `--out` that is, holds or lies inside the checkpoint (its run directory, its vocabulary
file) is refused with one line before anything is written, `--force` included: `--force`
replaces an earlier output, never an input.

Mapping (ours -> HF; `stack` is encoder/decoder, E emb_dim, H heads, D head_dim, F mlp_dim):
  token_embedder/embedding [V, E]                -> shared.weight [V, E]
  {self_,encoder_decoder_}attention/{query,key,value}/kernel [E, H, D]
                                                 -> {SelfAttention,EncDecAttention}.{q,k,v}.weight
                                                    [H*D, E]
  .../out/kernel [H, D, E]                       -> ....o.weight [E, H*D]
  mlp/wi (or wi_0, wi_1)/kernel [E, F]           -> DenseReluDense.wi(_0, _1).weight [F, E]
  mlp/wo/kernel [F, E]                           -> DenseReluDense.wo.weight [E, F]
  stack/relpos_bias/rel_embedding [H, buckets]   -> stack.block.0.layer.0.SelfAttention.
                                                    relative_attention_bias.weight [buckets, H]
  layer norm scales [E]                          -> ...layer_norm.weight / stack.final_layer_norm
  decoder/logits_dense/kernel [E, V]             -> lm_head.weight [V, E] (tie_word_embeddings
                                                    and scale_decoder_outputs false)
  logits_via_embedding=True (T5 v1.0)            -> no lm_head.weight (tied; outputs scaled by
                                                    d_model**-0.5: scale_decoder_outputs true)
Activations: ("gelu", "linear") -> "gated-gelu" (HF's tanh "gelu_new"), ("gelu",) -> "gelu_new",
("gelu_exact",) -> "gelu", ("gelu_exact", "linear") -> "gated-gelu_python", relu / silu as
"[gated-]relu" / "[gated-]silu". Other `mlp_activations` have no HF counterpart: ValueError.
Not exported: `dtype`, `param_dtype`, `remat` (runtime settings; the file is float32 and
`convert` reads it back with the defaults). A T5 export writes one model.safetensors unless
`--max_shard_size` is given.
"""

from __future__ import annotations

import json
import os
import re
import sys
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import jax
import numpy as np

from rso_jax import checkpoints
from rso_jax import convert
from rso_jax import errors
from rso_jax import fs
from rso_jax import hf_decoder
from rso_jax import network
from rso_jax import networks
from rso_jax import runs
from rso_jax.tasks import generated
from rso_jax.tasks import vocab as vocab_lib

Params = Dict[str, Any]

# network activation -> HF activation name (dense_act_fn), the inverse of convert.HF_ACTIVATIONS.
_HF_ACT = {"gelu": "gelu_new", "gelu_exact": "gelu", "relu": "relu", "silu": "silu"}
PAD_ID, EOS_ID, DECODER_START_ID = 0, 1, 0
DECODER_MAX_SHARD_SIZE = "50GB"  # transformers' save_pretrained default


# ------------------------------------------------------------------------------ config


def _feed_forward_proj(acts: Tuple[str, ...]) -> Tuple[str, str, bool]:
  """(feed_forward_proj, dense_act_fn, is_gated_act) of `mlp_activations`."""
  acts = tuple(acts)
  gated = len(acts) == 2 and acts[1] == "linear"
  if not (len(acts) == 1 or gated) or acts[0] not in _HF_ACT:
    raise ValueError(f"T5Config.mlp_activations={acts!r} has no HF T5 counterpart: expected "
                     f"(ACT,) or (ACT, 'linear') with ACT in {sorted(_HF_ACT)}")
  act = _HF_ACT[acts[0]]
  if not gated:
    return act, act, False
  if act == "gelu_new":
    return "gated-gelu", "gelu_new", True  # HF's alias: "gated-gelu" means tanh GELU
  if act == "gelu":
    act = "gelu_python"  # exact erf GELU; "gated-gelu" would be read as the tanh one
  return f"gated-{act}", act, True


def hf_config(config: network.T5Config) -> Dict[str, Any]:
  """transformers `config.json` contents for `config` (read back by `convert.config_from_hf`)."""
  ffp, act, gated = _feed_forward_proj(config.mlp_activations)
  tied = bool(config.logits_via_embedding)
  return {
      "architectures": ["T5ForConditionalGeneration"],
      "model_type": "t5",
      "vocab_size": int(config.vocab_size),
      "d_model": int(config.emb_dim),
      "d_kv": int(config.head_dim),
      "d_ff": int(config.mlp_dim),
      "num_layers": int(config.num_encoder_layers),
      "num_decoder_layers": int(config.num_decoder_layers),
      "num_heads": int(config.num_heads),
      "relative_attention_num_buckets": int(config.relative_attention_num_buckets),
      "relative_attention_max_distance": int(config.relative_attention_max_distance),
      "dropout_rate": float(config.dropout_rate),
      "layer_norm_epsilon": float(config.layer_norm_epsilon),
      "initializer_factor": 1.0,
      "feed_forward_proj": ffp,
      "dense_act_fn": act,
      "is_gated_act": gated,
      # Tied head <=> outputs scaled by d_model**-0.5 (T5 v1.0); an untied head is unscaled.
      # transformers < 5 reads both from tie_word_embeddings, >= 5 the scale explicitly.
      "tie_word_embeddings": tied,
      "scale_decoder_outputs": tied,
      "is_encoder_decoder": True,
      "use_cache": True,
      "pad_token_id": PAD_ID,
      "eos_token_id": EOS_ID,
      "decoder_start_token_id": DECODER_START_ID,
      "dtype": "float32",
  }


def network_hf_config(config: networks.NetworkConfig) -> Dict[str, Any]:
  """`config.json` contents of either family (ValueError where HF has no counterpart)."""
  if networks.is_decoder_only(config):
    return hf_decoder.hf_config(config)
  return hf_config(config)


# ------------------------------------------------------------------------------ tensors


def _np(x: Any) -> np.ndarray:
  return np.asarray(jax.device_get(x)).astype(np.float32)


def _attention(p: Params, prefix: str, cfg: network.T5Config, out: Dict[str, np.ndarray]):
  """Kernels `[E, H, D]` / out `[H, D, E]` -> HF q/k/v `[H*D, E]`, o `[E, H*D]`."""
  e, h, d = cfg.emb_dim, cfg.num_heads, cfg.head_dim
  for hf, ours in (("q", "query"), ("k", "key"), ("v", "value")):
    out[f"{prefix}.{hf}.weight"] = _np(p[ours]["kernel"]).reshape(e, h * d).T
  out[f"{prefix}.o.weight"] = _np(p["out"]["kernel"]).reshape(h * d, e).T


def _mlp(p: Params, prefix: str, cfg: network.T5Config, out: Dict[str, np.ndarray]):
  """Kernels `[E, F]` (wi, wi_0, wi_1) / `[F, E]` (wo) -> HF `[F, E]` / `[E, F]`."""
  names = ["wi"] if len(cfg.mlp_activations) == 1 else [
      f"wi_{i}" for i in range(len(cfg.mlp_activations))]
  for n in names + ["wo"]:
    out[f"{prefix}.{n}.weight"] = _np(p[n]["kernel"]).T


def to_hf(config: networks.NetworkConfig, params: Params) -> Tuple[Dict[str, Any],
                                                                  Dict[str, np.ndarray]]:
  """(HF `config.json` dict, {HF tensor name: float32 C-contiguous array}) of our network.

  Raises ValueError when `params` is not the network's tree or the config has no HF
  counterpart.
  """
  hf_cfg = network_hf_config(config)  # refuses unsupported configs first
  convert.check_params(params, config)
  if networks.is_decoder_only(config):
    return hf_cfg, hf_decoder.params_to_hf(config, jax.tree.map(_np, params))
  t: Dict[str, np.ndarray] = {"shared.weight": _np(params["token_embedder"]["embedding"])}
  for stack, layer_names in (
      ("encoder", ("pre_attention_layer_norm", "attention", "pre_mlp_layer_norm", "mlp")),
      ("decoder", ("pre_self_attention_layer_norm", "self_attention",
                   "pre_cross_attention_layer_norm", "encoder_decoder_attention",
                   "pre_mlp_layer_norm", "mlp"))):
    tree = params[stack]
    # [H, buckets] -> [buckets, H]
    t[f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"] = _np(
        tree["relpos_bias"]["rel_embedding"]).T
    n_layers = config.num_encoder_layers if stack == "encoder" else config.num_decoder_layers
    for i in range(n_layers):
      lp = tree[f"layers_{i}"]
      # HF sub-layers: encoder 0 = self attention, 1 = MLP; decoder 0 self, 1 cross, 2 MLP.
      for j in range(len(layer_names) // 2):
        norm, block = layer_names[2 * j], layer_names[2 * j + 1]
        prefix = f"{stack}.block.{i}.layer.{j}"
        t[f"{prefix}.layer_norm.weight"] = _np(lp[norm]["scale"])
        if block == "mlp":
          _mlp(lp[block], f"{prefix}.DenseReluDense", config, t)
        else:
          hf_block = "EncDecAttention" if block == "encoder_decoder_attention" else "SelfAttention"
          _attention(lp[block], f"{prefix}.{hf_block}", config, t)
    norm = "encoder_norm" if stack == "encoder" else "decoder_norm"
    t[f"{stack}.final_layer_norm.weight"] = _np(tree[norm]["scale"])
  if not config.logits_via_embedding:
    # [E, V] -> [V, E], unscaled (scale_decoder_outputs is false for an untied head).
    t["lm_head.weight"] = _np(params["decoder"]["logits_dense"]["kernel"]).T
  return hf_cfg, {k: np.ascontiguousarray(v) for k, v in t.items()}


# ------------------------------------------------------------------------------ files


def _tokenizer_files(manifest: checkpoints.Manifest, directory: str) -> None:
  """spiece.model + tokenizer_config.json for the checkpoint's vocabulary (if it has one)."""
  spec = manifest.vocabulary
  if spec is None:
    return
  special = {"eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}
  if spec.get("type") == "bytes":
    tok = dict(special, tokenizer_class="ByT5Tokenizer", extra_ids=0)
  elif spec.get("type") == "sentencepiece":
    src = spec.get("path")
    if spec.get("file") and manifest.directory:
      copied = fs.join(manifest.directory, spec["file"])
      if fs.exists(copied):
        src = copied
    if not src:
      raise errors.CheckpointError(
          f"manifest in {manifest.directory!r} names a SentencePiece vocabulary without a file")
    dst = fs.join(directory, checkpoints.SPM_FILE)
    if fs.exists(src):
      fs.copy(src, dst, overwrite=True)
    else:
      raise errors.CheckpointError(
          f"the checkpoint's SentencePiece model {src!r} is missing (manifest in "
          f"{manifest.directory!r})")
    tok = dict(special, tokenizer_class="T5Tokenizer", extra_ids=int(spec.get("extra_ids", 0)))
  else:
    raise errors.CheckpointError(f"manifest vocabulary {dict(spec)!r}: type must be bytes "
                                      "or sentencepiece")
  with fs.open(fs.join(directory, "tokenizer_config.json"), "w") as f:
    json.dump(tok, f, indent=2, sort_keys=True)


def _hf_tokenizer_files(manifest: checkpoints.Manifest) -> Dict[str, str]:
  """{file name: path} of a HF tokenizer vocabulary's files: tokenizer.json as the vocabulary
  reads it (the copy beside the manifest first), and the tokenizer_config.json /
  chat_template.jinja beside it."""
  vocab = manifest.get_vocabulary()
  src = fs.dirname(vocab.tokenizer_file)
  out = {checkpoints.HF_TOKENIZER_FILE: vocab.tokenizer_file}
  for name in (checkpoints.HF_TOKENIZER_CONFIG_FILE, vocab_lib.HF_CHAT_TEMPLATE_FILE):
    if fs.exists(fs.join(src, name)):
      out[name] = fs.join(src, name)
  return out


def decoder_special_ids(manifest: checkpoints.Manifest) -> Dict[str, int]:
  """HF ids (rso id - 1) of a decoder checkpoint's special tokens: {"bos_token_id",
  "eos_token_id", "pad_token_id"}, those its vocabulary has.

  A HF tokenizer: its `tasks.vocab.HFTokenizerVocabulary` (the EOS rso_jax samples with, the
  BOS and padding tokens of its tokenizer_config.json). A byte or SentencePiece vocabulary: EOS
  only (rso id 1 -> HF id 0). No vocabulary: none.
  """
  spec = manifest.vocabulary
  if spec is None:
    return {}
  if spec.get("type") != "hf_tokenizer":
    return {"eos_token_id": EOS_ID - 1}
  vocab = manifest.get_vocabulary()
  out = {"eos_token_id": int(vocab.eos_id) - 1}
  if vocab.bos_id is not None:
    out["bos_token_id"] = int(vocab.bos_id) - 1
  pad = vocab.special_tokens.get("pad_token")
  pad_id = None if pad is None else vocab.tokenizer.token_to_id(pad)
  if pad_id is not None:
    out["pad_token_id"] = int(pad_id)
  return out


def _decoder_tokenizer_files(manifest: checkpoints.Manifest, directory: str) -> None:
  """A HF tokenizer vocabulary's files (`_hf_tokenizer_files`); nothing for another one."""
  if (manifest.vocabulary or {}).get("type") != "hf_tokenizer":
    return
  for name, src in _hf_tokenizer_files(manifest).items():
    fs.copy(src, fs.join(directory, name), overwrite=True)


def parse_size(size: Any) -> int:
  """Bytes of a size as `save_pretrained`'s `max_shard_size` spells it: an int, or "5GB",
  "100KB", "2GiB" (KB/MB/GB powers of 10, KiB/MiB/GiB of 2)."""
  if isinstance(size, int):
    n = size
  else:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]i?B|B)?\s*", str(size), re.IGNORECASE)
    if not m:
      raise ValueError(f"--max_shard_size={size!r}: expected bytes or e.g. 100KB, 5GB, 2GiB")
    unit = (m.group(2) or "B").upper()
    scale = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20,
             "GIB": 2**30}[unit]
    n = int(float(m.group(1)) * scale)
  if n <= 0:
    raise ValueError(f"--max_shard_size={size!r} must be positive")
  return n


def shard_names(tensors: Mapping[str, np.ndarray], max_shard_bytes: int) -> List[List[str]]:
  """The tensors' names in shards of at most `max_shard_bytes` (in order, as
  `save_pretrained` cuts them: a tensor larger than the limit gets a shard of its own)."""
  shards: List[List[str]] = [[]]
  size = 0
  for name, x in tensors.items():
    n = int(np.asarray(x).nbytes)
    if shards[-1] and size + n > max_shard_bytes:
      shards.append([])
      size = 0
    shards[-1].append(name)
    size += n
  return shards


def _write_safetensors(path: str, tensors: Mapping[str, np.ndarray]) -> None:
  from safetensors import numpy as st  # pylint: disable=g-import-not-at-top
  if fs.is_url(path):  # gs://...: serialize in memory, upload once
    with fs.open(path, "wb") as f:
      f.write(st.save(dict(tensors), metadata={"format": "pt"}))
  else:
    st.save_file(dict(tensors), path, metadata={"format": "pt"})


def write_weights(directory: str, tensors: Mapping[str, np.ndarray],
                  max_shard_bytes: Optional[int] = None) -> List[str]:
  """model.safetensors, or, over `max_shard_bytes`, HF's shards + model.safetensors.index.json.
  Returns the weight files' names."""
  shards = ([list(tensors)] if max_shard_bytes is None
            else shard_names(tensors, max_shard_bytes))
  if len(shards) == 1:
    _write_safetensors(fs.join(directory, "model.safetensors"), tensors)
    return ["model.safetensors"]
  files, weight_map = [], {}
  for i, names in enumerate(shards):
    fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
    _write_safetensors(fs.join(directory, fname), {k: tensors[k] for k in names})
    weight_map.update({k: fname for k in names})
    files.append(fname)
  total = sum(int(np.asarray(x).nbytes) for x in tensors.values())
  with fs.open(fs.join(directory, "model.safetensors.index.json"), "w") as f:
    json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2,
              sort_keys=True)
  return files


def _write_dir(directory: str, hf_cfg: Mapping[str, Any], tensors: Mapping[str, np.ndarray],
               manifest: checkpoints.Manifest, max_shard_bytes: Optional[int] = None) -> None:
  if networks.is_decoder_only(manifest.network):
    special = decoder_special_ids(manifest)
    hf_cfg = dict(hf_cfg, **special)
    generation = dict(special)
  else:
    generation = {"decoder_start_token_id": DECODER_START_ID, "eos_token_id": EOS_ID,
                  "pad_token_id": PAD_ID}
  with fs.open(fs.join(directory, "config.json"), "w") as f:
    json.dump(hf_cfg, f, indent=2, sort_keys=True)
  with fs.open(fs.join(directory, "generation_config.json"), "w") as f:
    json.dump(generation, f, indent=2, sort_keys=True)
  write_weights(directory, tensors, max_shard_bytes)
  if networks.is_decoder_only(manifest.network):
    _decoder_tokenizer_files(manifest, directory)
  else:
    _tokenizer_files(manifest, directory)


def _inputs(checkpoint_path: str, manifest: checkpoints.Manifest) -> Dict[str, Optional[str]]:
  """What export reads: the checkpoint, its params, its run (manifest) directory, its vocabulary."""
  try:
    params = checkpoints.resolve_params_path(checkpoint_path)
  except FileNotFoundError:
    params = None
  run = None
  if params is not None:  # <run>/checkpoints/<step> or T5X's <run>/checkpoint_<step>
    parent = fs.dirname(params)
    run = (fs.dirname(parent) if fs.basename(parent) == checkpoints.CHECKPOINT_SUBDIR
           else parent if checkpoints.is_t5x_step(params) else None)
  spec = manifest.vocabulary or {}
  return {"--checkpoint": checkpoint_path, "the checkpoint's params": params,
          "the checkpoint's run directory": run,
          "the checkpoint's manifest directory": manifest.directory,
          "the checkpoint's vocabulary file": spec.get("path")}


def export(checkpoint_path: str, out_dir: str, force: bool = False,
           max_shard_size: Optional[Any] = None) -> str:
  """Writes the HF directory of a generative checkpoint to `out_dir`; returns its path.

  `max_shard_size` (bytes, or "5GB" as `save_pretrained` takes it): shard the weights past it;
  None: one file for a T5, `DECODER_MAX_SHARD_SIZE` for a decoder-only network.

  Raises `errors.CheckpointError` for a missing/undescribed checkpoint or a reward model,
  ValueError for a network with no HF counterpart, FileExistsError when `out_dir` is a
  non-empty directory and not `force`, `fs.OverlappingPaths` (before anything is written, with
  or without `force`) when `out_dir` is, holds or lies inside the checkpoint, its run directory
  or its vocabulary file.
  """
  manifest = checkpoints.read_manifest(checkpoint_path)
  fs.check_disjoint(out_dir, _inputs(checkpoint_path, manifest))
  checkpoints.check_kind(manifest, checkpoint_path, checkpoints.GENERATIVE_KINDS, "export")
  network_hf_config(manifest.network)  # refuse an unsupported network before reading params
  if max_shard_size is None and networks.is_decoder_only(manifest.network):
    max_shard_size = DECODER_MAX_SHARD_SIZE
  max_shard_bytes = None if max_shard_size is None else parse_size(max_shard_size)
  out_dir = fs.abspath(out_dir)
  if fs.exists(out_dir) or (not fs.is_url(out_dir) and os.path.lexists(out_dir)):
    if not fs.isdir(out_dir):
      raise FileExistsError(f"output {out_dir!r} exists and is not a directory")
    if fs.listdir(out_dir) and not force:
      raise FileExistsError(f"output directory {out_dir!r} is not empty (pass --force to "
                            "replace it)")
  _, params = checkpoints.load(checkpoint_path)
  hf_cfg, tensors = to_hf(manifest.network, params)
  del params

  # Written beside `out_dir`, then renamed into place (on gs:// a rename is a copy per object).
  parent, base = fs.dirname(out_dir), fs.basename(out_dir)
  fs.makedirs(parent)
  tmp = fs.join(parent, f".{base}.tmp-{os.getpid()}")
  old = fs.join(parent, f".{base}.old-{os.getpid()}")
  _rmtree_quietly(tmp)
  fs.makedirs(tmp)
  try:
    _write_dir(tmp, hf_cfg, tensors, manifest, max_shard_bytes)
    if fs.isdir(out_dir):
      if fs.listdir(out_dir):  # force: move the old one aside, swap, then delete it
        fs.rename(out_dir, old, overwrite=False)
      else:
        fs.rmtree(out_dir)
    fs.rename(tmp, out_dir, overwrite=False)
  except BaseException:
    _rmtree_quietly(tmp)
    if fs.isdir(old) and not fs.exists(out_dir):
      fs.rename(old, out_dir, overwrite=False)
    raise
  _rmtree_quietly(old)
  return out_dir


def _rmtree_quietly(path: str) -> None:
  try:
    fs.rmtree(path)
  except Exception:  # pylint: disable=broad-except  (best-effort cleanup)
    pass


def main(argv: Optional[Sequence[str]] = None) -> int:
  """Exit status 0 done, 2 a user error (one line; RSO_JAX_TRACEBACK=1 for the traceback)."""
  parser = errors.ArgumentParser(prog="python -m rso_jax.export", error_prefix="rso_jax.export",
                                    description=__doc__.split("\n")[0])
  what = parser.add_mutually_exclusive_group(required=True)
  what.add_argument("--checkpoint",
                    help="seq2seq or policy checkpoint (run, step or converted directory)")
  what.add_argument("--samples", help="a sampling stage's output directory: its pairs as "
                    "TRL-format JSONL")
  parser.add_argument("--out", required=True,
                      help="HF directory to write (--checkpoint), JSONL file (--samples)")
  parser.add_argument("--force", action="store_true", help="replace a non-empty --out (never one that is, holds or lies inside "
                      "the checkpoint)")
  parser.add_argument("--max_shard_size", default=None,
                      help="--checkpoint: shard the weights past this size (e.g. 5GB, as "
                      "save_pretrained; default: one file for T5, "
                      f"{DECODER_MAX_SHARD_SIZE} for Llama / Qwen2)")
  args = parser.parse_args(argv)

  def run():
    if args.samples:
      counts = generated.export_jsonl(args.samples, args.out)
      print(f"wrote {counts['records']:,} records of {fs.abspath(args.samples)} to "
            f"{counts['out']} (TRL {counts['format']} format)")
      return
    with runs.removed_on_failure(args.out):  # and the parents export created for it
      out = export(args.checkpoint, args.out, force=args.force,
                   max_shard_size=args.max_shard_size)
    vocab_size = json.loads(fs.read_text(fs.join(out, "config.json")))["vocab_size"]
    files = fs.listdir(out)
    print(f"wrote {checkpoints.read_manifest(args.checkpoint).kind} checkpoint "
          f"{fs.abspath(args.checkpoint)} (vocab_size {vocab_size}) to {out}: "
          f"{', '.join(files)}")

  # ValueError: CheckpointError, a network with no HF counterpart.
  return errors.report("rso_jax.export", run,
                       user_errors=(*errors.USER_ERRORS, ValueError))


if __name__ == "__main__":
  sys.exit(main())
