"""KV-cached sampling of N candidates per prompt, greedy decoding and teacher-forced scoring.

Pure functions over `(module, params)` where `module` is a `network.Transformer` (anything with
its `encode` / `decode` methods and flax `cache` collection). Token conventions follow seqio's
T5 vocabularies: 0 = padding and decoder start (BOS), 1 = EOS.

Sampling (paper Sec. 3.2 / Sec. 5: N = 64 candidates per prompt, temperature 0.7, top-k 40):
  * the encoder runs once on the `B` prompts; the `B * N` candidate rows (prompt-major: rows
    `b*N .. b*N+N-1` belong to prompt `b`) share its output and the cross-attention keys/values
    (`[B, Le, H, D]` in the cache). Only the self-attention cache is per candidate.
  * every step the next-token law is built from the float32 logits in this order:
      1. the pad token 0 is removed (a 0 inside a response could not be told apart from
         padding, and `score` ignores pad targets);
      2. temperature: `logits / T` (T = 0 means greedy argmax);
      3. top-k: keep the k largest tempered logits (k is clipped to the vocabulary size);
      4. top-p (nucleus) on the tempered, top-k-truncated law: keep the most probable tokens,
         in decreasing order, while the probability mass *before* a token is < p (so the
         token that crosses p is kept and at least one token always survives);
    the surviving logits are renormalized; this is the proposal law q.
  * each sequence returns `log q(y|x)` (the proposal, what was actually sampled from) and
    `log π(y|x)` under the untempered model (T = 1, no pad removal, no top-k / top-p): the
    `log π_sft(y|x)` of the preference losses (Eq. 8-10), equal to `score` on the same tokens.

Randomness: step t draws with `jax.random.fold_in(key, t)`; results do not depend on how the
batch is sharded.
"""

from __future__ import annotations

import functools
from typing import Any, Optional, Tuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from rso_jax import kernels
from rso_jax import network
from rso_jax import recipe

Array = jax.Array

PAD_ID = 0
EOS_ID = 1


class SampleOutput(flax.struct.PyTreeNode):
  """Sampled candidates.

  Attributes:
    tokens: `[B, N, L]` int32 response tokens; EOS included, 0 after it.
    lengths: `[B, N]` int32 number of generated tokens, EOS included (L if never finished).
    proposal_logps: `[B, N]` float32 `log q(y|x)` under the sampling law (tempered, truncated),
      summed over the generated tokens incl. EOS; 0 for greedy decoding (q is a point mass).
    model_logps: `[B, N]` float32 `log π(y|x)` under the untempered model (T = 1, no top-k / p).
    finished: `[B, N]` bool, True where EOS was emitted within L tokens (False: truncated).
  """
  tokens: Array
  lengths: Array
  proposal_logps: Array
  model_logps: Array
  finished: Array


# ------------------------------------------------------------------------------------------------
# Reshapes.


def tokens_to_decoder_targets(tokens: Array) -> Array:
  """`[B, N, L]` candidate tokens -> `[B * N, L]` decoder targets (prompt-major)."""
  if tokens.ndim != 3:
    raise ValueError(f"tokens must be [B, N, L], got shape {tuple(tokens.shape)}")
  b, n, length = tokens.shape
  return tokens.reshape(b * n, length)


def decoder_targets_to_tokens(targets: Array, num_decodes: int) -> Array:
  """`[B * N, L]` prompt-major rows -> `[B, N, L]` (inverse of `tokens_to_decoder_targets`)."""
  if targets.ndim != 2 or targets.shape[0] % num_decodes:
    raise ValueError(f"targets shape {tuple(targets.shape)} is not [B * N, L] with "
                     f"N = num_decodes = {num_decodes}")
  return targets.reshape(targets.shape[0] // num_decodes, num_decodes, targets.shape[1])


def shift_right(targets: Array, start_id: int = PAD_ID) -> Array:
  """Decoder inputs `[R, L]` from targets `[R, L]`: `start_id` then targets[:, :-1]."""
  start = jnp.full((targets.shape[0], 1), start_id, targets.dtype)
  return jnp.concatenate([start, targets[:, :-1]], axis=1)


# ------------------------------------------------------------------------------------------------
# Validation.


def _check_tokens(name: str, x: Any, ndim: int) -> None:
  shape = tuple(np.shape(x))
  if len(shape) != ndim:
    raise ValueError(f"{name} must have {ndim} dims, got shape {shape}")
  if not jnp.issubdtype(jnp.result_type(x), jnp.integer):
    raise ValueError(f"{name} must hold integer token ids, got dtype {jnp.result_type(x)}")
  if 0 in shape:
    raise ValueError(f"{name} is empty: shape {shape}")


def _check_sampling_args(num_decodes: int, max_decode_length: int, temperature: float,
                         top_k: Optional[int], top_p: Optional[float],
                         eos_id: Optional[int]) -> None:
  if int(num_decodes) != num_decodes or num_decodes < 1:
    raise ValueError(f"num_decodes must be a positive int, got {num_decodes!r}")
  if int(max_decode_length) != max_decode_length or max_decode_length < 1:
    raise ValueError(f"max_decode_length must be a positive int, got {max_decode_length!r}")
  if isinstance(temperature, jax.core.Tracer):
    pass  # a traced temperature (inside the caller's jit) is taken as given
  elif not np.isfinite(temperature) or temperature < 0:
    raise ValueError(f"temperature must be a finite float >= 0, got {temperature!r}")
  if top_k is not None and (int(top_k) != top_k or top_k < 1):
    raise ValueError(f"top_k must be None or a positive int, got {top_k!r}")
  if top_p is not None and not isinstance(top_p, jax.core.Tracer) and not 0.0 < top_p <= 1.0:
    raise ValueError(f"top_p must be None or in (0, 1], got {top_p!r}")
  if eos_id is not None and (int(eos_id) != eos_id or eos_id < 0):
    raise ValueError(f"eos_id must be None or a non-negative int, got {eos_id!r}")
  if eos_id == PAD_ID:
    raise ValueError(f"eos_id must differ from the pad id {PAD_ID}")


# ------------------------------------------------------------------------------------------------
# One sampling step.


def _allowed(logits: Array, vocab_size: Optional[int]) -> Array:
  """float32 logits with the pad token, and ids >= `vocab_size` (the rows a network pads its
  embedding table with, which no vocabulary can decode), set to -inf."""
  x = logits.astype(jnp.float32).at[:, PAD_ID].set(-jnp.inf)
  if vocab_size is not None and vocab_size < x.shape[-1]:
    x = jnp.where(jnp.arange(x.shape[-1]) < vocab_size, x, -jnp.inf)
  return x


def sampling_logits(logits: Array, temperature: Any, top_k: Optional[int],
                    top_p: Optional[Any], vocab_size: Optional[int] = None
                    ) -> Tuple[Array, Array]:
  """The proposal law q of one step, as candidate logits and their token ids.

  Args:
    logits: `[R, V]` model logits (T = 1).
    temperature: T > 0 (a float or a traced scalar).
    top_k: keep the k largest tempered logits (None = off; k is clipped to V).
    top_p: nucleus mass in (0, 1] applied after top-k (None or >= 1 = off; a float or a
      traced scalar).
    vocab_size: ids at or above it are never proposed (None = every id of the table).

  Returns:
    `(cand_logits [R, K], cand_ids [R, K])`: unnormalized log q over K candidate tokens
    (removed ones are -inf); K = min(top_k, V) with top-k, V otherwise.
  """
  v = logits.shape[-1]
  x = _allowed(logits, vocab_size)
  if top_k is None and top_p is None:
    ids = jnp.broadcast_to(jnp.arange(v, dtype=jnp.int32), x.shape)
    return x / temperature, ids
  k = v if top_k is None else min(int(top_k), v)
  # A positive temperature keeps the order, so it is applied to the K survivors only.
  vals, ids = kernels.batch_local_top_k(x, k)  # sorted descending: [R, K]
  vals = vals / temperature
  if top_p is not None:
    probs = jax.nn.softmax(vals, axis=-1)
    # Mass strictly before each sorted token: [R, K]. p >= 1 keeps everything exactly.
    before = jnp.concatenate([jnp.zeros_like(probs[:, :1]),
                              jnp.cumsum(probs, axis=-1)[:, :-1]], axis=-1)
    vals = jnp.where((before < top_p) | (top_p >= 1.0), vals, -jnp.inf)
  return vals, ids.astype(jnp.int32)


def _select(logits: Array, key: Array, temperature: Optional[Array], top_k: Optional[int],
            top_p: Optional[Array], vocab_size: Optional[int] = None
            ) -> Tuple[Array, Array, Array]:
  """Draws one token per row: `[R, V]` logits -> (token [R], log q [R], log π [R]).

  `temperature` None means greedy (static); a traced temperature equal to 0 is greedy too.
  """
  logits = logits.astype(jnp.float32)
  if temperature is None:
    token = jnp.argmax(_allowed(logits, vocab_size), axis=-1).astype(jnp.int32)
    log_q = jnp.zeros(token.shape, jnp.float32)
  else:
    is_greedy = temperature == 0.0
    cand, ids = sampling_logits(logits, jnp.where(is_greedy, 1.0, temperature), top_k, top_p,
                                vocab_size)
    j = jax.random.categorical(key, cand, axis=-1)
    # Greedy = the first candidate when they are sorted (top-k / top-p), else the argmax.
    j = jnp.where(is_greedy, 0 if top_k is not None or top_p is not None
                  else jnp.argmax(cand, axis=-1), j)
    token = jnp.take_along_axis(ids, j[:, None], axis=-1)[:, 0]
    log_q = jnp.take_along_axis(jax.nn.log_softmax(cand, axis=-1), j[:, None], axis=-1)[:, 0]
    log_q = jnp.where(is_greedy, 0.0, log_q)
  # log π(token) = logit - logsumexp(logits), T = 1, nothing removed.
  log_pi = (jnp.take_along_axis(logits, token[:, None], axis=-1)[:, 0]
            - jax.nn.logsumexp(logits, axis=-1))
  return token, log_q, log_pi


# ------------------------------------------------------------------------------------------------
# Sampling loop.

MIN_DECODE_WINDOW = 32


def decode_windows(max_decode_length: int) -> Tuple[int, ...]:
  """The self-attention cache lengths of a decode, `(32, 64, ..., max_decode_length)`.

  Steps at positions `[w_{k-1}, w_k)` run with caches of `w_k` columns: a step's cost follows
  the decoded length (within 2x), not `max_decode_length`, for K = O(log L) compiled copies of
  the step.
  """
  windows = [min(MIN_DECODE_WINDOW, max_decode_length)]
  while windows[-1] < max_decode_length:
    windows.append(min(2 * windows[-1], max_decode_length))
  return tuple(windows)


@functools.partial(jax.jit, static_argnames=("module", "num_decodes", "max_decode_length",
                                             "top_k", "use_top_p", "use_eos", "greedy",
                                             "vocab_size"))
def _sample_jit(module: nn.Module, params: Any, encoder_input_tokens: Array, key: Array,
                temperature: Array, top_p: Array, eos_id: Array, *, num_decodes: int,
                max_decode_length: int, top_k: Optional[int], use_top_p: bool, use_eos: bool,
                greedy: bool, vocab_size: Optional[int] = None) -> SampleOutput:
  """The sampler; temperature / top_p / eos_id are traced so changing them never recompiles."""
  b = encoder_input_tokens.shape[0]
  rows, length = b * num_decodes, max_decode_length
  enc_tokens = encoder_input_tokens.astype(jnp.int32)
  temperature = None if greedy else temperature
  top_p = top_p if use_top_p else None
  # Encoder once on the B prompts: [B, Le] -> [B, Le, E].
  encoded = module.apply({"params": params}, enc_tokens, enable_dropout=False, method="encode")

  def run_decoder(cache, dec_tokens, prefill, window):
    # One cached step: [R, 1] tokens -> [R, 1, V] logits, self-attention caches of `window`.
    variables = {"params": params} if cache is None else {"params": params, "cache": cache}
    logits, mutated = module.apply(
        variables, encoded, enc_tokens, dec_tokens, enable_dropout=False, decode=True,
        max_decode_length=length, prefill_cross_cache=prefill, decode_window=window,
        mutable=["cache"], method="decode")
    return logits, mutated["cache"]

  # Step s runs with self-attention caches of the smallest window > s: one while loop per
  # window, in order, the caches zero-padded to the next window between loops (a loop whose
  # rows have all finished exits at once). Attention reads the whole cache each step, so a
  # step costs O(window), not O(L).
  windows = decode_windows(length)
  # Cache layout from an abstract call on [R, first window] tokens, zero-filled.
  cache_shapes = jax.eval_shape(
      lambda: run_decoder(None, jnp.zeros((rows, windows[0]), jnp.int32), False, windows[0]))[1]
  cache = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), cache_shapes)

  def advance(state, logits, step):
    cache, _, tokens, lengths, finished, log_q, log_pi = state
    token, lq, lp = _select(logits[:, 0, :], jax.random.fold_in(key, step), temperature,
                            top_k, top_p, vocab_size)
    active = jnp.logical_not(finished)
    token = jnp.where(active, token, PAD_ID)
    tokens = jax.lax.dynamic_update_slice(tokens, token[:, None], (0, step))
    lengths = lengths + active.astype(jnp.int32)
    log_q = log_q + jnp.where(active, lq, 0.0)
    log_pi = log_pi + jnp.where(active, lp, 0.0)
    if use_eos:
      finished = finished | (active & (token == eos_id))
    return (cache, token, tokens, lengths, finished, log_q, log_pi)

  zeros_f = jnp.zeros((rows,), jnp.float32)
  state = (cache, jnp.zeros((rows,), jnp.int32), jnp.zeros((rows, length), jnp.int32),
           jnp.zeros((rows,), jnp.int32), jnp.zeros((rows,), bool), zeros_f, zeros_f)

  # Step 0 (decoder start token 0) fills the shared cross-attention cache.
  logits, cache = run_decoder(cache, jnp.full((rows, 1), PAD_ID, jnp.int32), True, windows[0])
  state = advance((cache,) + state[1:], logits, 0)
  carry = (jnp.array(1, jnp.int32), state)
  for window in windows:
    if window > windows[0]:
      carry = (carry[0], (network.grow_decode_cache(carry[1][0], window),) + carry[1][1:])

    def cond(carry, window=window):
      step, state = carry
      return jnp.logical_and(step < window, jnp.logical_not(jnp.all(state[4])))

    def body(carry, window=window):
      step, state = carry
      logits, cache = run_decoder(state[0], state[1][:, None], False, window)
      return step + 1, advance((cache,) + state[1:], logits, step)

    carry = jax.lax.while_loop(cond, body, carry)
  state = carry[1]
  _, _, tokens, lengths, finished, log_q, log_pi = state
  shape2 = (b, num_decodes)
  return SampleOutput(tokens=tokens.reshape(b, num_decodes, length),
                      lengths=lengths.reshape(shape2), proposal_logps=log_q.reshape(shape2),
                      model_logps=log_pi.reshape(shape2), finished=finished.reshape(shape2))


def _run_sampler(module, params, encoder_input_tokens, key, *, num_decodes, max_decode_length,
                 temperature, top_k, top_p, eos_id, greedy, vocab_size=None):
  _check_tokens("encoder_input_tokens", encoder_input_tokens, 2)
  _check_sampling_args(num_decodes, max_decode_length, temperature, top_k, top_p, eos_id)
  if top_p is None:
    top_p = 1.0
  # Without top-k, top-p needs a sort of the whole vocabulary: only compile it in when asked.
  # With top-k the nucleus cut runs on [R, k] and stays in the graph (p = 1 disables it).
  use_top_p = top_k is not None or isinstance(top_p, jax.core.Tracer) or top_p < 1.0
  return _sample_jit(
      module, nn.meta.unbox(params), encoder_input_tokens, key,
      jnp.asarray(temperature, jnp.float32), jnp.asarray(top_p, jnp.float32),
      jnp.int32(EOS_ID if eos_id is None else eos_id), num_decodes=int(num_decodes),
      max_decode_length=int(max_decode_length), top_k=None if top_k is None else int(top_k),
      use_top_p=use_top_p, use_eos=eos_id is not None, greedy=greedy,
      vocab_size=None if vocab_size is None else int(vocab_size))


def sample(module: nn.Module, params: Any, encoder_input_tokens: Array, key: Array, *,
           num_decodes: int = 1, max_decode_length: int,
           temperature: float = recipe.PAPER.temperature,
           top_k: Optional[int] = recipe.PAPER.top_k, top_p: Optional[float] = recipe.PAPER.top_p,
           eos_id: Optional[int] = EOS_ID, vocab_size: Optional[int] = None) -> SampleOutput:
  """Samples `num_decodes` responses per prompt with a KV cache (jitted, batch-shardable).

  The next-token law q is: pad removed, then `logits / temperature`, then top-k, then top-p on
  the tempered top-k law (see the module docstring); `temperature = 0` is greedy decoding.
  Compiled once per (module, shapes, num_decodes, max_decode_length, top_k, eos on/off, and
  top_p on/off when top_k is None); the temperature, top_p and eos_id values are traced.
  Under a mesh context (`jax.set_mesh`) with inputs sharded along (data, fsdp) every step
  stays shard-local; may be called inside the caller's jit.

  Args:
    module: a `network.Transformer`.
    params: its (unboxed or boxed) parameters.
    encoder_input_tokens: `[B, Le]` int prompts (0 = padding).
    key: a `jax.random` key; step t uses `fold_in(key, t)`.
    num_decodes: N candidates per prompt (paper: 64).
    max_decode_length: L, the most tokens generated (EOS included).
    temperature: T >= 0 (paper: 0.7).
    top_k: keep the k most likely tokens (paper: 40); None = off.
    top_p: nucleus mass in (0, 1]; None or 1 = off.
    eos_id: the end token (1); None = never stop early (every sequence has L tokens).
    vocab_size: the vocabulary's real size: ids at or above it (the padding rows of the
      embedding table) are never proposed (None = all ids). log π stays the model's own law.

  Returns:
    `SampleOutput` with `tokens [B, N, L]`, `lengths`, `proposal_logps` (log q),
    `model_logps` (log π, T = 1) and `finished`, each `[B, N]`.
  """
  return _run_sampler(module, params, encoder_input_tokens, key, num_decodes=num_decodes,
                      max_decode_length=max_decode_length, temperature=temperature,
                      top_k=top_k, top_p=top_p, eos_id=eos_id, greedy=False,
                      vocab_size=vocab_size)


def greedy(module: nn.Module, params: Any, encoder_input_tokens: Array, *,
           max_decode_length: int, eos_id: Optional[int] = EOS_ID,
           vocab_size: Optional[int] = None) -> SampleOutput:
  """Greedy decoding (temperature 0, one decode per prompt): `tokens [B, 1, L]`.

  `proposal_logps` is 0 (a point mass); `model_logps` is log π of the greedy sequence.
  """
  return _run_sampler(module, params, encoder_input_tokens, jax.random.key(0), num_decodes=1,
                      max_decode_length=max_decode_length, temperature=0.0, top_k=None,
                      top_p=None, eos_id=eos_id, greedy=True, vocab_size=vocab_size)


# ------------------------------------------------------------------------------------------------
# Teacher-forced scoring.


@functools.partial(jax.jit, static_argnames=("module",))
def _score_tokens_jit(module: nn.Module, params: Any, encoder_input_tokens: Array,
                      decoder_target_tokens: Array) -> Array:
  targets = decoder_target_tokens.astype(jnp.int32)
  logits = module.apply({"params": params}, encoder_input_tokens.astype(jnp.int32),
                        shift_right(targets), targets, enable_dropout=False)
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  token_logps = jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
  return jnp.where(targets > 0, token_logps, 0.0)


def score_tokens(module: nn.Module, params: Any, encoder_input_tokens: Array,
                 decoder_target_tokens: Array) -> Array:
  """Per-token teacher-forced log-probs `[B * N, Ld]` (float32, T = 1; 0 at pad targets).

  Args:
    module: a `network.Transformer`.
    params: its parameters.
    encoder_input_tokens: `[B, Le]` prompts, encoded once each.
    decoder_target_tokens: `[B * N, Ld]` responses, N per prompt, prompt-major (rows
      `b*N .. b*N+N-1` answer prompt b); 0 = padding. Decoder inputs are the targets shifted
      right with 0.
  """
  _check_tokens("encoder_input_tokens", encoder_input_tokens, 2)
  _check_tokens("decoder_target_tokens", decoder_target_tokens, 2)
  b, r = np.shape(encoder_input_tokens)[0], np.shape(decoder_target_tokens)[0]
  if r % b:
    raise ValueError(f"decoder_target_tokens has {r} rows, not a multiple of the {b} prompts "
                     f"in encoder_input_tokens")
  return _score_tokens_jit(module, nn.meta.unbox(params), encoder_input_tokens,
                           decoder_target_tokens)


def score(module: nn.Module, params: Any, encoder_input_tokens: Array,
          decoder_target_tokens: Array) -> Array:
  """Sequence log-probs `log π(y|x)` `[B * N]`: sum of `score_tokens` over non-pad targets."""
  return jnp.sum(score_tokens(module, params, encoder_input_tokens, decoder_target_tokens),
                 axis=-1)
