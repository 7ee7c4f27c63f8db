"""Decoder-only transformer (Llama / Qwen2 family) in Flax linen, behind the T5 network's calls.

The family's parts: RMS norm before attention and MLP, rotary positions (HF's default rope:
`inv_freq = theta^(-2i/D)`, the two halves rotated), grouped-query attention (`num_kv_heads`
key/value heads, each shared by `num_heads / num_kv_heads` query heads, logits scaled by
`head_dim^-0.5`), a SwiGLU MLP `wo(silu(wi_0 x) * wi_1 x)`, optional q/k/v biases (Qwen2) and
output bias (Llama's `attention_bias`), tied or untied output embeddings (no scaling).

Token ids. rso_jax keeps id 0 for padding everywhere (masks are `tokens > 0`), while a HF
vocabulary's id 0 is a real token. A decoder network therefore reads rso id `k + 1` as the HF
token `k`: the embedding table and the output head are the HF checkpoint's own (`vocab_size`
rows), and the logits gain a column for id 0 at `kernels.NEG_INF` (it never gets probability).
`tasks.vocab.HFTokenizerVocabulary` encodes with the same shift.

The T5 calls, so every model class, the sampler and the scorer run it unchanged:
  * `encode(encoder_input_tokens [B, Lp])` is the prefill. Prompts follow the pipeline's
    convention (the prompt's tokens, then EOS, then 0-padding); a decoder-only model reads the
    prompt without that EOS. It returns the prompt's per-layer keys and values (rotated), the
    *prefix*, computed once per prompt.
  * `decode(prefix, encoder_input_tokens, decoder_input_tokens [B * N, Ld], ...)`: the N rows of
    prompt b (prompt-major) attend to prompt b's prefix and causally to their own tokens. Row
    position t sits at absolute position `c_b + t`, where `c_b` = the prompt's length without
    its EOS, minus 1 (0 for an empty prompt); the input at t = 0 (the T5 decoder start id) is
    replaced by the prompt's token at `c_b`, so the logits at t predict response token t from
    the whole prompt, and the prefix holds positions `< c_b`. Ragged prompts are exact: each row
    has its own positions and prefix mask. A cached step (`decode=True`) writes its key/value
    in the per-row self-attention cache `[B * N, K, D, L]` as the T5 decoder does.
  * `causal_logits(tokens [B, L])`: the plain causal LM over whole sequences (HF's forward).

Module names mirror T5X's decoder (`layers_i/self_attention/query`, `mlp/wi_0`); `hf_decoder.py`
maps them to HF's (`model.layers.i.self_attn.q_proj`, `mlp.gate_proj`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from rso_jax import kernels
from rso_jax import network
from rso_jax.network import BATCH, EMBED, HEADS, KV, LENGTH, VOCAB

Array = jax.Array
KV_HEADS = "activation_kv_heads"
ARCHITECTURES = ("LlamaForCausalLM", "Qwen2ForCausalLM")


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
  """Hyper-parameters of a decoder-only network (defaults: the `tiny` size for tests).

  `vocab_size` is the HF vocabulary's (the table's rows); rso ids run 1..vocab_size and the
  logits have `vocab_size + 1` columns (see the module docstring). `architecture` is the HF
  class an export writes (`LlamaForCausalLM`, `Qwen2ForCausalLM`).
  """
  vocab_size: int = 128
  emb_dim: int = 128
  num_heads: int = 4
  num_kv_heads: int = 2
  head_dim: int = 32
  mlp_dim: int = 256
  num_layers: int = 2
  rope_theta: float = 10000.0
  layer_norm_epsilon: float = 1e-6
  qkv_bias: bool = False
  out_bias: bool = False
  tie_word_embeddings: bool = False
  dropout_rate: float = 0.0  # on the attention weights (HF's attention_dropout)
  max_position_embeddings: int = 4096  # recorded for export; the default rope has no limit
  architecture: str = "LlamaForCausalLM"
  dtype: str = "float32"
  param_dtype: str = "float32"
  remat: bool = False

  def __post_init__(self):
    for name in ("vocab_size", "emb_dim", "num_heads", "num_kv_heads", "head_dim", "mlp_dim",
                 "num_layers"):
      if int(getattr(self, name)) <= 0:
        raise ValueError(f"DecoderConfig.{name} must be positive, got {getattr(self, name)!r}")
    if self.num_heads % self.num_kv_heads:
      raise ValueError(f"DecoderConfig.num_heads={self.num_heads} is not a multiple of "
                       f"num_kv_heads={self.num_kv_heads}")
    if self.head_dim % 2:
      raise ValueError(f"DecoderConfig.head_dim={self.head_dim} must be even (rotary halves)")
    if not (np.isfinite(self.rope_theta) and self.rope_theta > 0):
      raise ValueError(f"DecoderConfig.rope_theta must be > 0, got {self.rope_theta!r}")
    if not 0.0 <= self.dropout_rate < 1.0:
      raise ValueError(f"DecoderConfig.dropout_rate must be in [0, 1), got {self.dropout_rate!r}")
    if self.architecture not in ARCHITECTURES:
      raise ValueError(f"DecoderConfig.architecture={self.architecture!r}: use one of "
                       f"{ARCHITECTURES}")
    for name in ("dtype", "param_dtype"):
      try:
        jnp.dtype(getattr(self, name))
      except TypeError as e:
        raise ValueError(f"DecoderConfig.{name}={getattr(self, name)!r} is not a dtype") from e

  @property
  def activation_dtype(self):
    return jnp.dtype(self.dtype)

  @property
  def weight_dtype(self):
    return jnp.dtype(self.param_dtype)

  @property
  def num_logits(self) -> int:
    """Columns of the logits: rso ids 0 (padding) .. vocab_size."""
    return self.vocab_size + 1


def _constrain(x: Array, axes) -> Array:
  return nn.with_logical_constraint(x, tuple(axes))


def rotary(x: Array, positions: Array, theta: float) -> Array:
  """HF's rotary embedding of `x` `[R, L, heads, D]` at integer `positions` `[R, L]`.

  `x * cos + rotate_half(x) * sin`, angles `position * theta^(-2i/D)` for i < D/2 repeated over
  both halves, `rotate_half(x) = concat(-x[D/2:], x[:D/2])`; computed in float32.
  """
  d = x.shape[-1]
  inv_freq = 1.0 / (theta ** (jnp.arange(0, d, 2, dtype=jnp.float32) / d))  # [D/2]
  # [R, L, 1] x [D/2] -> [R, L, D/2] -> [R, L, 1, D]
  angles = positions.astype(jnp.float32)[..., None] * inv_freq
  angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]
  x32 = x.astype(jnp.float32)
  half = d // 2
  rotated = jnp.concatenate([-x32[..., half:], x32[..., :half]], axis=-1)
  return (x32 * jnp.cos(angles) + rotated * jnp.sin(angles)).astype(x.dtype)


def _param(module: nn.Module, name: str, init, shape: Tuple[int, ...], axes: Tuple[str, ...],
           dtype) -> Array:
  return module.param(name, nn.with_logical_partitioning(init, axes), shape, dtype)


class Projection(nn.Module):
  """A dense layer with an optional bias: `[..., *in] -> [..., *features]`, contracting the last
  `num_in_dims` dims (`kernel` as `network.DenseGeneral`'s, `bias` `[*features]`)."""
  features: Tuple[int, ...]
  kernel_axes: Tuple[str, ...]
  bias_axes: Optional[Tuple[str, ...]]
  num_in_dims: int = 1
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    in_shape = x.shape[-self.num_in_dims:]
    fan_in, fan_out = int(np.prod(in_shape)), int(np.prod(self.features))
    base = nn.initializers.variance_scaling(1.0, "fan_in", "normal")
    init = lambda key, shape, dtype: base(key, (fan_in, fan_out), dtype).reshape(shape)
    kernel = _param(self, "kernel", init, tuple(in_shape) + tuple(self.features), self.kernel_axes,
                    self.param_dtype)
    # [..., *in] x [*in, *features] -> [..., *features]
    y = kernels.dense(x.astype(self.dtype), kernel.astype(self.dtype), self.num_in_dims)
    if self.bias_axes is not None:
      bias = _param(self, "bias", nn.initializers.zeros, tuple(self.features), self.bias_axes,
                    self.param_dtype)
      y = y + bias.astype(self.dtype)
    return y


class Attention(nn.Module):
  """Grouped-query self-attention over an optional shared prefix, with an optional KV cache."""
  config: DecoderConfig

  def _proj(self, name: str, x: Array, heads: int, head_axis: str, bias: bool) -> Array:
    cfg = self.config
    # [R, L, E] -> [R, L, heads, D]
    return Projection((heads, cfg.head_dim), ("embed", head_axis, "kv"),
                      (head_axis, "kv") if bias else None, dtype=cfg.activation_dtype,
                      param_dtype=cfg.weight_dtype, name=name)(x)

  @nn.compact
  def __call__(self, x: Array, positions: Array, prefix: Optional[Tuple[Array, Array]],
               prefix_mask: Optional[Array], self_mask: Optional[Array], enable_dropout: bool,
               decode: bool = False, decode_position: Optional[Array] = None
               ) -> Tuple[Array, Tuple[Array, Array]]:
    """`x` `[R, Lq, E]` at `positions` `[R, Lq]` -> (`[R, Lq, E]`, its own (keys, values)
    `[R, Lq, K, D]`).

    `prefix`: keys / values `[B, Lp, K, D]` (R = B * N rows, prompt-major) with `prefix_mask`
    `[B, Lp]` (True = attend), or None. `self_mask`: `[R or 1, Lq, Lq]` over the rows' own
    tokens (None with a cached step, which attends to cache columns <= `decode_position`).
    """
    cfg = self.config
    k_heads, groups = cfg.num_kv_heads, cfg.num_heads // cfg.num_kv_heads
    # [R, Lq, E] -> [R, Lq, H, D] and [R, Lq, K, D], rotated at their positions
    q = _constrain(self._proj("query", x, cfg.num_heads, "heads", cfg.qkv_bias),
                   (BATCH, LENGTH, HEADS, KV))
    k = _constrain(self._proj("key", x, k_heads, "kv_heads", cfg.qkv_bias),
                   (BATCH, LENGTH, KV_HEADS, KV))
    v = _constrain(self._proj("value", x, k_heads, "kv_heads", cfg.qkv_bias),
                   (BATCH, LENGTH, KV_HEADS, KV))
    q = rotary(q, positions, cfg.rope_theta) * jnp.asarray(cfg.head_dim ** -0.5, q.dtype)
    k = rotary(k, positions, cfg.rope_theta)
    own = (k, v)
    if decode:
      k, v, self_mask = self._cache(k, v, self_mask, decode_position)
    r, lq = x.shape[0], x.shape[1]
    b = r if prefix is None else prefix[0].shape[0]
    n = r // b
    # [R, Lq, H, D] -> [B, N, Lq, K, G, D]
    qg = q.reshape(b, n, lq, k_heads, groups, cfg.head_dim)
    # own keys [R, Ls, K, D] -> [B, N, Ls, K, D]
    ks, vs = (t.reshape(b, n, t.shape[1], k_heads, cfg.head_dim) for t in (k, v))
    # [B, N, K, G, Lq, Ls]
    logits = jnp.einsum("bnqkgd,bnskd->bnkgqs", qg, ks, preferred_element_type=jnp.float32)
    if self_mask is not None:
      m = self_mask.reshape(((b, n) if self_mask.shape[0] == r else (1, 1)) + self_mask.shape[1:])
      logits = jnp.where(m[:, :, None, None], logits, kernels.NEG_INF)
    if prefix is not None:
      pk, pv = prefix
      # [B, N, K, G, Lq, Lp]
      plogits = jnp.einsum("bnqkgd,bpkd->bnkgqp", qg, pk, preferred_element_type=jnp.float32)
      plogits = jnp.where(prefix_mask[:, None, None, None, None, :], plogits, kernels.NEG_INF)
      logits = jnp.concatenate([plogits, logits], axis=-1)
    weights = jax.nn.softmax(logits, axis=-1).astype(cfg.activation_dtype)
    if enable_dropout and cfg.dropout_rate > 0:
      weights = nn.Dropout(rate=cfg.dropout_rate)(weights, deterministic=False)
    if prefix is not None:
      lp = prefix[0].shape[1]
      # [B, N, K, G, Lq, Lp] x [B, Lp, K, D] -> [B, N, Lq, K, G, D]
      out = jnp.einsum("bnkgqp,bpkd->bnqkgd", weights[..., :lp], pv.astype(weights.dtype))
      out = out + jnp.einsum("bnkgqs,bnskd->bnqkgd", weights[..., lp:], vs.astype(weights.dtype))
    else:
      out = jnp.einsum("bnkgqs,bnskd->bnqkgd", weights, vs.astype(weights.dtype))
    # [B, N, Lq, K, G, D] -> [R, Lq, H, D] -> [R, Lq, E]
    out = _constrain(out.reshape(r, lq, cfg.num_heads, cfg.head_dim), (BATCH, LENGTH, HEADS, KV))
    out = Projection((x.shape[-1],), ("heads", "kv", "embed"),
                     ("embed",) if cfg.out_bias else None, num_in_dims=2,
                     dtype=cfg.activation_dtype, param_dtype=cfg.weight_dtype, name="out")(out)
    return _constrain(out, (BATCH, LENGTH, EMBED)), own

  def _cache(self, k: Array, v: Array, self_mask: Optional[Array],
             decode_position: Optional[Array]) -> Tuple[Array, Array, Optional[Array]]:
    """The self-attention cache `[R, K, D, L]` (T5's layout, grown by
    `network.grow_decode_cache`): the first call lays it out and passes its keys through; a
    step writes column p and attends to columns <= p. Returns keys / values `[R, Ls, K, D]`."""
    is_initialized = self.has_variable("cache", "cached_key")
    shape = (k.shape[0], k.shape[2], k.shape[3], k.shape[1])
    dt = self.config.activation_dtype
    cached_key = self.variable("cache", "cached_key", jnp.zeros, shape, dt)
    cached_value = self.variable("cache", "cached_value", jnp.zeros, shape, dt)
    if not is_initialized:
      return k, v, self_mask
    if k.shape[1] != 1:
      raise ValueError(f"cached decoding takes one token per step, got length {k.shape[1]}")
    if decode_position is None:
      raise ValueError("a cached decoding step needs decode_position")
    p = decode_position
    to_cache = lambda t: jnp.transpose(t, (0, 2, 3, 1)).astype(dt)  # [R, 1, K, D] -> [R, K, D, 1]
    cached_key.value = jax.lax.dynamic_update_slice(cached_key.value, to_cache(k), (0, 0, 0, p))
    cached_value.value = jax.lax.dynamic_update_slice(cached_value.value, to_cache(v),
                                                      (0, 0, 0, p))
    length = cached_key.value.shape[-1]
    back = lambda t: jnp.transpose(t, (0, 3, 1, 2))  # [R, K, D, L] -> [R, L, K, D]
    mask = (jnp.arange(length) <= p)[None, None, :]  # [1, 1, L]
    return back(cached_key.value), back(cached_value.value), mask


class DecoderLayer(nn.Module):
  config: DecoderConfig

  @nn.compact
  def __call__(self, x: Array, positions: Array, prefix: Optional[Tuple[Array, Array]],
               prefix_mask: Optional[Array], self_mask: Optional[Array], enable_dropout: bool,
               decode: bool, decode_position: Optional[Array] = None
               ) -> Tuple[Array, Tuple[Array, Array]]:
    cfg = self.config
    dt, pdt = cfg.activation_dtype, cfg.weight_dtype
    # [R, L, E] -> [R, L, E]
    h = network.RMSNorm(cfg.layer_norm_epsilon, dt, pdt, name="pre_self_attention_layer_norm")(x)
    h, own = Attention(cfg, name="self_attention")(h, positions, prefix, prefix_mask, self_mask,
                                                   enable_dropout, decode, decode_position)
    x = x + h
    h = network.RMSNorm(cfg.layer_norm_epsilon, dt, pdt, name="pre_mlp_layer_norm")(x)
    h = network.MlpBlock(cfg.mlp_dim, ("silu", "linear"), 0.0, dt, pdt, name="mlp")(h, False)
    x = x + h
    return _constrain(x, (BATCH, LENGTH, EMBED)), own


def _lengths(tokens: Array) -> Array:
  """`[B, L]` right-padded tokens -> `[B]` int32 count of non-pad tokens."""
  return jnp.sum(tokens > 0, axis=-1).astype(jnp.int32)


def prompt_cut(encoder_input_tokens: Array) -> Array:
  """`[B, Lp]` prompts (tokens, EOS, padding) -> `[B]` c_b: the prompt's length without its EOS,
  minus 1, at least 0. The prefix holds positions < c_b; the response's row reads token c_b at
  its position 0."""
  return jnp.maximum(_lengths(encoder_input_tokens) - 2, 0)


class DecodePosition(nn.Module):
  """The cached decode's step counter (`cache/position`)."""

  @nn.compact
  def __call__(self) -> Optional[Array]:
    """None on the call that lays out the cache; else this step's position, counted."""
    if not self.has_variable("cache", "position"):
      self.variable("cache", "position", lambda: jnp.array(0, jnp.int32))
      return None
    position = self.variable("cache", "position", lambda: jnp.array(0, jnp.int32))
    p = position.value
    position.value = p + 1
    return p


class DecoderTransformer(nn.Module):
  """Decoder-only LM with the T5 network's `encode` / `decode` / `__call__` (module docstring)."""
  config: DecoderConfig

  def setup(self):
    cfg = self.config
    self.token_embedder = network.Embed(cfg.vocab_size, cfg.emb_dim, cfg.activation_dtype,
                                        cfg.weight_dtype)
    layer_cls = (nn.remat(DecoderLayer, static_argnums=(6, 7)) if cfg.remat else DecoderLayer)
    self.layers = [layer_cls(cfg, name=f"layers_{i}") for i in range(cfg.num_layers)]
    self.decode_position = DecodePosition()
    self.decoder_norm = network.RMSNorm(cfg.layer_norm_epsilon, cfg.activation_dtype,
                                        cfg.weight_dtype)
    if not cfg.tie_word_embeddings:
      self.logits_dense = network.DenseGeneral(
          features=(cfg.vocab_size,), kernel_axes=("embed", "vocab"), dtype=jnp.float32,
          param_dtype=cfg.weight_dtype)

  def _embed(self, tokens: Array) -> Array:
    # rso ids [R, L] (0 = padding, k + 1 = HF token k) -> [R, L, E]
    return self.token_embedder(jnp.maximum(tokens.astype(jnp.int32) - 1, 0))

  def _logits(self, y: Array) -> Array:
    """Final-normed states `[R, L, E]` -> float32 logits `[R, L, vocab_size + 1]` (column 0, the
    padding id, at NEG_INF)."""
    if self.config.tie_word_embeddings:
      logits = self.token_embedder.attend(y)
    else:
      logits = self.logits_dense(y)
    logits = _constrain(logits.astype(jnp.float32), (BATCH, LENGTH, VOCAB))
    pad = jnp.full(logits.shape[:-1] + (1,), kernels.NEG_INF, jnp.float32)
    return jnp.concatenate([pad, logits], axis=-1)

  def encode(self, encoder_input_tokens: Array, enable_dropout: bool = False
             ) -> Tuple[Tuple[Array, Array], ...]:
    """The prefill: `[B, Lp]` prompts -> per layer (keys, values) `[B, Lp, K, D]`."""
    tokens = encoder_input_tokens.astype(jnp.int32)
    lp = tokens.shape[1]
    positions = jnp.broadcast_to(jnp.arange(lp, dtype=jnp.int32), tokens.shape)
    # [1, Lp, Lp] causal (a key past the prompt is only seen by queries past it, never read)
    causal = jnp.tril(jnp.ones((lp, lp), bool))[None]
    x = self._embed(tokens)
    prefix = []
    for layer in self.layers:
      x, own = layer(x, positions, None, None, causal, enable_dropout, False)
      prefix.append(own)
    return tuple(prefix)

  def decode(self, encoded: Tuple[Tuple[Array, Array], ...], encoder_input_tokens: Array,
             decoder_input_tokens: Array, decoder_target_tokens: Optional[Array] = None,
             enable_dropout: bool = False, decode: bool = False,
             max_decode_length: Optional[int] = None, prefill_cross_cache: bool = False,
             decode_window: Optional[int] = None, hidden_only: bool = False) -> Array:
    """Response logits `[B * N, Ld, V + 1]` (or, `hidden_only`, the final-normed states
    `[B * N, Ld, E]`) from the prefix of `encode` and the rows' decoder inputs (T5's
    shift-right convention: position 0 holds the start id, replaced by the prompt's token c_b).

    `decode=True`: one cached step (Ld = 1) at the position the `cache` collection counts, or
    the call laying out the cache (the sampler's first, abstract call). `prefill_cross_cache`
    and `decode_window` are the T5 decoder's arguments: the prefix is passed every step and
    the cache's own length is its window, so both are accepted and unused.
    """
    del decoder_target_tokens, prefill_cross_cache, decode_window
    prompts = encoder_input_tokens.astype(jnp.int32)
    tokens = decoder_input_tokens.astype(jnp.int32)
    b, r, ld = prompts.shape[0], tokens.shape[0], tokens.shape[1]
    if r % b:
      raise ValueError(f"{r} decoder rows for {b} prompts: need N rows per prompt")
    n = r // b
    cut = prompt_cut(prompts)  # [B]
    # [B] -> [R]: the prompt's token c_b, read at the row's position 0
    first = jnp.repeat(jnp.take_along_axis(prompts, cut[:, None], axis=1)[:, 0], n)
    start = jnp.repeat(cut, n)  # [R]
    prefix_mask = jnp.arange(prompts.shape[1])[None, :] < cut[:, None]  # [B, Lp]
    decode_position = None
    offsets = jnp.broadcast_to(jnp.arange(ld, dtype=jnp.int32), (r, ld))
    if decode:
      if max_decode_length is None:
        raise ValueError("decode=True needs max_decode_length")
      decode_position = self.decode_position()
      if decode_position is not None:
        offsets = jnp.broadcast_to(decode_position, (r, 1))
    # [R, Ld]: the start id at offset 0 is the prompt's token c_b
    tokens = jnp.where(offsets == 0, first[:, None], tokens)
    positions = start[:, None] + offsets
    self_mask = None if decode_position is not None else jnp.tril(
        jnp.ones((ld, ld), bool))[None]
    y = self._embed(tokens)
    for layer, kv in zip(self.layers, encoded):
      y, _ = layer(y, positions, kv, prefix_mask, self_mask, enable_dropout, decode,
                   decode_position)
    y = _constrain(self.decoder_norm(y), (BATCH, LENGTH, EMBED))
    if hidden_only:
      return y
    return self._logits(y)

  def causal_logits(self, tokens: Array) -> Array:
    """HF's causal LM forward: `[B, L]` rso ids (positions 0..L-1) -> logits `[B, L, V + 1]`."""
    tokens = tokens.astype(jnp.int32)
    length = tokens.shape[1]
    positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), tokens.shape)
    x = self._embed(tokens)
    causal = jnp.tril(jnp.ones((length, length), bool))[None]
    for layer in self.layers:
      x, _ = layer(x, positions, None, None, causal, False, False)
    return self._logits(self.decoder_norm(x))

  def __call__(self, encoder_input_tokens: Array, decoder_input_tokens: Array,
               decoder_target_tokens: Optional[Array] = None, enable_dropout: bool = True,
               decode: bool = False, max_decode_length: Optional[int] = None,
               prefill_cross_cache: bool = False) -> Array:
    """Prompt `[B, Lp]` and responses `[B * N, Ld]` -> logits `[B * N, Ld, V + 1]`."""
    prefix = self.encode(encoder_input_tokens, enable_dropout=enable_dropout)
    return self.decode(prefix, encoder_input_tokens, decoder_input_tokens,
                       decoder_target_tokens, enable_dropout=enable_dropout, decode=decode,
                       max_decode_length=max_decode_length)
