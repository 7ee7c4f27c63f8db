"""The one place a checkpoint is put on a mesh and used: text in, text (or numbers) out.

    policy = inference.load("runs/sft", expect=checkpoints.GENERATIVE_KINDS, role="policy")
    out = policy.generate(["list: apple pear"], key=jax.random.key(0), num_decodes=64)
    out.texts[0][:3], out.model_logps[0, :3]          # texts in the policy's own vocabulary
    rm = inference.load("runs/rm", expect=checkpoints.REWARD_KINDS, role="reward model")
    rm.reward(prompts, out.texts)                      # [B, N] (BT r, or Eq. 7 logit ρ(x, y, y_b))

`load` reads the checkpoint's manifest (`checkpoints.py`), rebuilds its model class, and
restores the params straight into arrays sharded by their logical axes on the mesh. Every text
is tokenized with the checkpoint's own vocabulary and lengths, every batch is padded to a
fixed number of rows (a multiple of the data-parallel size, so each shape compiles once and a
result never depends on what else is in the batch) — here and nowhere else.

Three classes:
  * `Generator` (kinds "seq2seq", "policy"): `generate` (N candidates per prompt; temperature /
    top-k / top-p; tokens, texts, log q and untempered log π), `greedy`, `score` (teacher-forced
    log π of given responses).
  * `OracleRewardModel` (kind "oracle_rm", the embedded task only): r*/τ, optionally with a
    calibrated noise (`tasks.oracle`), with `RewardModel`'s interface.
  * `RewardModel` (kinds "pairwise_rm", "bt_rm"): `reward(prompts [B], responses [B][N],
    baselines=None) -> [B, N]` and `prefer(prompts, y1, y2) -> P(y1 ≻ y2) [M]`. Pairwise: paper
    Eq. 7, `r(x, y) = logit ρ(x, y, y_b)` against one baseline y_b per prompt (a candidate equal
    to it gets exactly 0); BT: `r(x, y)` (minus `r(x, y_b)` with baselines), `prefer` = σ(r1 − r2).
    An encoder-decoder BT model encodes each prompt once for its N responses (`map_prompts`,
    as `Generator.score` does).

Over-length inputs: one rule everywhere (sampler, scorer, evaluation, `infer`):
  * the *context* (the prompt) is cut to what fits, keeping its beginning (`keep_context="start"`,
    default: TL;DR posts lead with subreddit and title) or its end (`"end"`: dialogues, where the
    last turn matters); every cut is counted in `stats["contexts_truncated"]`;
  * a *response* is never cut. For `score` the target length grows to the longest response.
    For a reward model, a response (or, pairwise, both responses with their tags) that does not
    fit the trained length leaves nothing to judge: its reward / preference is NaN and counted in
    `stats["responses_too_long"]`; callers drop and count those (the sampling stage marks such
    candidates invalid).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import flax.linen as nn
import jax
import numpy as np

from rso_jax import checkpoints
from rso_jax import decoding
from rso_jax import errors
from rso_jax import models
from rso_jax import networks
from rso_jax import partitioning
from rso_jax import recipe
from rso_jax import reward_models
from rso_jax.tasks import golden
from rso_jax.tasks import oracle
from rso_jax.tasks import text_formats

KEEP_CONTEXT = ("start", "end")
Texts = Sequence[str]


@dataclasses.dataclass
class Generation:
  """Decodes of P prompts, N each (NumPy).

  Attributes:
    texts: `[P][N]` response texts (cut at EOS, in the checkpoint's vocabulary).
    tokens: `[P, N, L]` int32 response tokens, EOS included, 0 after it.
    lengths: `[P, N]` generated tokens incl. EOS (L when unfinished).
    finished: `[P, N]` bool, EOS emitted within L tokens.
    proposal_logps: `[P, N]` log q(y|x) under the sampling law (0 for greedy).
    model_logps: `[P, N]` untempered log π(y|x) (T = 1, no top-k / top-p).
    prompt_tokens: `[P, Li]` int32 prompt tokens the model read (EOS included, 0-padded).
    prompt_truncated: `[P]` bool, the prompt's context was cut to fit `Li`.
    retokenized: `[P, N]` bool, the decode was replaced by its text's own tokenization
      (`generate(canonical=True)`; all False otherwise).
    consistent: `[P, N]` bool, the text re-encodes to exactly the tokens (with
      `canonical=True`, False only where the text's own tokenization is longer than the
      decode length allowed; None without `canonical`).
  """
  texts: List[List[str]]
  tokens: np.ndarray
  lengths: np.ndarray
  finished: np.ndarray
  proposal_logps: np.ndarray
  model_logps: np.ndarray
  prompt_tokens: np.ndarray
  prompt_truncated: np.ndarray
  retokenized: Optional[np.ndarray] = None
  consistent: Optional[np.ndarray] = None


def _as_texts(name: str, texts: Any) -> List[str]:
  out = []
  for i, t in enumerate(texts):
    if isinstance(t, (bytes, np.bytes_)):
      t = bytes(t).decode("utf-8")
    if not isinstance(t, str):
      raise ValueError(f"{name}[{i}] must be a string, got {type(t).__name__}: {t!r}")
    out.append(t)
  return out


def _pair_texts(prompts: Texts, y1: Texts, y2: Texts
                ) -> Tuple[List[str], List[str], List[str]]:
  """`prefer`'s arguments as three lists of equal length (ValueError otherwise)."""
  prompts, y1, y2 = _as_texts("prompts", prompts), _as_texts("y1", y1), _as_texts("y2", y2)
  if not len(prompts) == len(y1) == len(y2):
    raise ValueError(f"prefer needs equal lengths: {len(prompts)} prompts, {len(y1)} y1, "
                     f"{len(y2)} y2")
  return prompts, y1, y2


def _as_rows(prompts: Texts, responses: Any) -> Tuple[List[str], List[List[str]]]:
  """(prompts [B], responses [B][N]) checked: equal counts, N >= 1 and equal in every row."""
  prompts = _as_texts("prompts", prompts)
  if isinstance(responses, np.ndarray):
    responses = responses.tolist()
  if len(responses) != len(prompts):
    raise ValueError(f"{len(prompts)} prompts but {len(responses)} rows of responses")
  rows = [_as_texts(f"responses[{b}]", row) for b, row in enumerate(responses)]
  for b, row in enumerate(rows):
    if len(row) != len(rows[0]) or not row:
      raise ValueError(f"responses must be [B, N] with N >= 1: row 0 has {len(rows[0])}, "
                       f"row {b} has {len(row)}")
  return prompts, rows


def build_model(manifest: checkpoints.Manifest, vocabulary: Any = None) -> models.BaseModel:
  """The model class a checkpoint of `manifest.kind` was trained as (loss-independent)."""
  vocab = vocabulary if vocabulary is not None else manifest.get_vocabulary()
  settings = dict(manifest.model_settings)
  if manifest.kind in checkpoints.GENERATIVE_KINDS:
    return models.Seq2SeqModel(manifest.network)
  if manifest.kind == "pairwise_rm":
    return reward_models.PairwiseRankingModel(
        manifest.network, vocabulary=vocab,
        response_label=settings.get("response_label", text_formats.RESPONSE_LABEL))
  return reward_models.BradleyTerryRewardModel(
      manifest.network, vocabulary=vocab, pooling=settings.get("pooling", "mean"),
      separator=settings.get("separator", text_formats.BT_SEPARATOR),
      architecture=settings.get("architecture", "encoder"))


class _Loaded:
  """A checkpoint on a mesh: vocabulary, lengths, params, tokenization and padded batches."""

  def __init__(self, manifest: checkpoints.Manifest, mesh, *, path: Optional[str] = None,
               params: Any = None, batch_size: int = 64,
               feature_lengths: Optional[Mapping[str, int]] = None,
               keep_context: str = "start", rules: Optional[Sequence[Tuple[str, Any]]] = None):
    if keep_context not in KEEP_CONTEXT:
      raise ValueError(f"keep_context={keep_context!r}: use one of {KEEP_CONTEXT}")
    if int(batch_size) != batch_size or batch_size < 1:
      raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    self.manifest, self.path, self.kind = manifest, path, manifest.kind
    self.config: networks.NetworkConfig = manifest.network
    self.vocab = manifest.get_vocabulary()
    self.eos_id = int(self.vocab.eos_id)
    lengths = dict(manifest.feature_lengths or {})
    lengths.update({k: int(v) for k, v in (feature_lengths or {}).items() if v})
    for k in ("inputs", "targets"):
      if not lengths.get(k):
        raise errors.CheckpointError(
            f"checkpoint {path!r} records no '{k}' feature length (a converted checkpoint?): "
            f"pass feature_lengths={{'{k}': N}}")
    self.feature_lengths = lengths
    self.keep_context = keep_context
    self.mesh = mesh
    self.rules = tuple(rules) if rules else partitioning.LOGICAL_RULES
    self.dp = partitioning.data_parallel_size(mesh)
    self.batch_size = int(math.ceil(batch_size / self.dp)) * self.dp
    self.stats: Dict[str, int] = {"contexts_truncated": 0, "responses_too_long": 0}
    self.model = build_model(manifest, self.vocab)
    shapes = self.model.input_shapes(1, {"inputs": lengths["inputs"],
                                         "targets": lengths["targets"]})
    with self._ctx():
      boxed = jax.eval_shape(lambda: self.model.get_initial_variables(jax.random.key(0),
                                                                      shapes))["params"]
    shardings = partitioning.logical_shardings(boxed, mesh, self.rules)
    if params is None:
      target = checkpoints.abstract_with_shardings(nn.unbox(boxed), shardings)
      try:
        params = checkpoints.load_params(path, target)
      except (ValueError, KeyError) as e:
        raise errors.CheckpointError(
            f"checkpoint {path!r}: its params do not match its manifest ({manifest.kind}, "
            f"{manifest.network}): {str(e).splitlines()[0][:300]}") from None
      self.params = params
    else:
      self.params = jax.device_put(nn.unbox(params), shardings)

  def _ctx(self):
    return partitioning.MeshRules(self.mesh, self.rules)

  # --- text <-> tokens -------------------------------------------------------------------
  def encode(self, text: str) -> List[int]:
    return [int(t) for t in self.vocab.encode(text)]

  def _cut(self, ids: List[int], keep: int) -> List[int]:
    keep = max(keep, 0)
    return ids[:keep] if self.keep_context == "start" else ids[max(len(ids) - keep, 0):]

  def tokenize_contexts(self, texts: Texts, length: int) -> Tuple[np.ndarray, np.ndarray]:
    """`[M, length]` int32 tokens + EOS (0-padded) and `[M]` bool "context was cut"."""
    out = np.zeros((len(texts), length), np.int32)
    cut = np.zeros((len(texts),), bool)
    for i, t in enumerate(texts):
      ids = self.encode(t)
      if len(ids) + 1 > length:
        ids, cut[i] = self._cut(ids, length - 1), True
      out[i, :len(ids)] = ids
      out[i, len(ids)] = self.eos_id
    self.stats["contexts_truncated"] += int(cut.sum())
    return out, cut

  def tokenize_responses(self, texts: Texts, length: Optional[int] = None, grow: bool = False
                         ) -> Tuple[np.ndarray, np.ndarray]:
    """`[M, L]` tokens + EOS and `[M]` bool "fits": never cut. With `length` None, L is the
    longest response rounded up to a multiple of 16; else rows over `length` are left empty
    and marked as not fitting, unless `grow`: then L is at least `length` and holds them all."""
    ids = [self.encode(t) for t in texts]
    need = max([len(x) + 1 for x in ids] + [1])
    if length is None or (grow and need > length):
      length = max(int(math.ceil(need / 16)) * 16, length or 0)
    out = np.zeros((len(texts), length), np.int32)
    fits = np.array([len(x) + 1 <= length for x in ids], bool)
    for i, x in enumerate(ids):
      if fits[i]:
        out[i, :len(x)] = x
        out[i, len(x)] = self.eos_id
    return out, fits

  def detokenize(self, tokens: np.ndarray) -> List[str]:
    """`[M, L]` response tokens -> M texts (cut at the first EOS, padding dropped)."""
    out = []
    for row in np.asarray(tokens):
      ids = [int(t) for t in row]
      if self.eos_id in ids:
        ids = ids[:ids.index(self.eos_id)]
      out.append(self.vocab.decode([t for t in ids if t > 0]))
    return out

  # --- fixed-shape batches ----------------------------------------------------------------
  def _shard(self, arrays: Sequence[np.ndarray]):
    return [partitioning.shard_batch({"x": a}, self.mesh)["x"] for a in arrays]

  def _map_rows(self, fn, arrays: Sequence[np.ndarray], rows: Optional[int] = None) -> np.ndarray:
    return map_rows(fn, self.params, arrays, rows or self.batch_size, self.mesh, self.rules)


def map_rows(fn, params: Any, arrays: Sequence[np.ndarray], rows: int, mesh,
             rules: Sequence[Tuple[str, Any]] = partitioning.LOGICAL_RULES) -> np.ndarray:
  """`fn(params, *[rows, ...]) -> [rows]` over all M rows of `arrays` (each `[M, ...]`): chunks
  of `rows` sharded over `mesh`'s data axes, the last chunk zero-padded; float32 `[M]`."""
  m = arrays[0].shape[0]
  out = np.zeros((m,), np.float32)
  for start in range(0, m, rows):
    chunk = [a[start:start + rows] for a in arrays]
    n = chunk[0].shape[0]
    chunk = [np.concatenate([c, np.zeros((rows - n,) + c.shape[1:], c.dtype)]) for c in chunk]
    with partitioning.MeshRules(mesh, rules):
      res = fn(params, *[partitioning.shard_batch({"x": c}, mesh)["x"] for c in chunk])
    out[start:start + n] = np.asarray(partitioning.to_host(res), np.float32)[:n]
  return out


def map_prompts(fn, params: Any, prompt_tokens: np.ndarray, responses: np.ndarray,
                prompts_per_call: int, mesh,
                rules: Sequence[Tuple[str, Any]] = partitioning.LOGICAL_RULES) -> np.ndarray:
  """`fn(params, [R, Li], [R * N, Lt]) -> [R * N]` over P prompts with N responses each:
  `prompt_tokens` `[P, Li]`, `responses` `[P, N, Lt]`, R = `prompts_per_call` prompts per call
  (a multiple of the mesh's data-parallel size) sharded over `mesh`'s data axes, the last call
  padded by repeating its last prompt. Each prompt's encoder output serves its N responses
  (prompt-major rows). float32 `[P, N]`."""
  p, n, length = responses.shape
  out = np.zeros((p, n), np.float32)
  for start, idx, m in _prompt_chunks(p, prompts_per_call):
    with partitioning.MeshRules(mesh, rules):
      enc = partitioning.shard_batch({"x": prompt_tokens[idx]}, mesh)["x"]
      tgt = partitioning.shard_batch(
          {"x": responses[idx].reshape(prompts_per_call * n, length)}, mesh)["x"]
      res = fn(params, enc, tgt)
    out[start:start + m] = np.asarray(partitioning.to_host(res), np.float32).reshape(
        prompts_per_call, n)[:m]
  return out


def _prompt_chunks(num: int, rows: int):
  """(start, row indices padded to `rows` by repeating the last one, real rows)."""
  for start in range(0, num, rows):
    end = min(start + rows, num)
    yield start, list(range(start, end)) + [end - 1] * (rows - (end - start)), end - start


class Generator(_Loaded):
  """A seq2seq / policy checkpoint: generate, greedy, score (see the module docstring)."""

  def generate(self, prompts: Texts, *, key: jax.Array, num_decodes: int = 1,
               temperature: float = recipe.PAPER.temperature,
               top_k: Optional[int] = recipe.PAPER.top_k,
               top_p: Optional[float] = None, max_decode_length: Optional[int] = None,
               batch_size: Optional[int] = None, canonical: bool = False,
               progress: Optional[Callable[[int, int], None]] = None) -> Generation:
    """`num_decodes` samples for each prompt (temperature 0 = greedy).

    Prompts run in chunks of `batch_size` rows (default: the loader's; padded by repeating
    the last prompt); the chunk starting at prompt index s draws with `fold_in(key, s)`, so the
    samples are a function of (key, batch_size, prompts) only, not of the mesh.

    `canonical=True` (the sampling stage): a decode whose text does not re-encode to its
    tokens (a SentencePiece segmentation the tokenizer would not produce, "▁th" "e" for
    "▁the"; bytes that are not valid UTF-8) is replaced by its text's own tokenization (the
    text normalized by one encode / decode round), and its `model_logps` are re-scored on
    those tokens, so text, tokens and log π describe the same response: what the reward
    model reads is what the policy is trained on. `proposal_logps` stay the sampled path's.
    Marked in `retokenized`; a text whose own tokenization is longer than the decode length
    is left as sampled and marked not `consistent` (callers drop it).

    `progress(done, total)`: called after each chunk with the prompts decoded so far.
    """
    prompts = _as_texts("prompts", prompts)
    if not prompts:
      raise ValueError("generate: no prompts")
    length = int(max_decode_length or self.feature_lengths["targets"])
    rows = int(math.ceil((batch_size or self.batch_size) / self.dp)) * self.dp
    tokens, cut = self.tokenize_contexts(prompts, self.feature_lengths["inputs"])
    parts = []
    for start, idx, n in _prompt_chunks(len(prompts), rows):
      with self._ctx():
        enc = self._shard([tokens[idx]])[0]
        out = partitioning.to_host(decoding.sample(
            self.model.module, self.params, enc, jax.random.fold_in(key, start),
            num_decodes=num_decodes, max_decode_length=length, temperature=temperature,
            top_k=top_k, top_p=top_p, vocab_size=self.vocab.vocab_size))
      parts.append(jax.tree.map(lambda x, n=n: np.asarray(x)[:n], out))
      if progress is not None:
        progress(start + n, len(prompts))
    cat = lambda f: np.concatenate([getattr(p, f) for p in parts])
    toks = cat("tokens")
    gen = Generation(texts=[self.detokenize(row) for row in toks], tokens=toks,
                     lengths=cat("lengths"), finished=cat("finished"),
                     proposal_logps=cat("proposal_logps"), model_logps=cat("model_logps"),
                     prompt_tokens=tokens, prompt_truncated=cut,
                     retokenized=np.zeros(toks.shape[:2], bool))
    return self._canonicalize(prompts, gen, batch_size) if canonical else gen

  def _canonicalize(self, prompts: List[str], gen: Generation,
                    batch_size: Optional[int]) -> Generation:
    """`generate(canonical=True)`: decodes replaced by their texts' own tokenization."""
    p, n, length = gen.tokens.shape
    gen.consistent = np.ones((p, n), bool)
    changed = []
    for i in range(p):
      for j in range(n):
        row = [int(t) for t in gen.tokens[i, j]]
        ids = row[:row.index(self.eos_id)] if self.eos_id in row else row
        ids = [t for t in ids if t > 0]
        text = gen.texts[i][j]
        canon = self.encode(text)
        if canon == ids:
          continue
        text = self.vocab.decode(canon)  # one normalization round: a fixed point
        canon = self.encode(text)
        new = canon + [self.eos_id] if gen.finished[i, j] else canon
        if len(new) > length:  # its own tokenization does not fit: kept as sampled, marked
          gen.consistent[i, j] = False
          continue
        gen.tokens[i, j] = 0
        gen.tokens[i, j, :len(new)] = new
        gen.lengths[i, j] = len(new)
        gen.texts[i][j] = text
        gen.retokenized[i, j] = True
        changed.append((i, j))
    if changed:  # re-score the replaced responses only, one per row: [M, 1, L]
      rows, cols = (np.array(x) for x in zip(*changed))
      scores = self.score([prompts[i] for i in rows], gen.tokens[rows, cols][:, None, :],
                          batch_size=batch_size)
      gen.model_logps[rows, cols] = scores[:, 0]
    return gen

  def greedy(self, prompts: Texts, *, max_decode_length: Optional[int] = None,
             top_k: Optional[int] = 40, batch_size: Optional[int] = None) -> Generation:
    """One greedy decode per prompt (the sampler at temperature 0: top-k does not change an
    argmax, and keeping it shares one compiled program with sampled decodes)."""
    return self.generate(prompts, key=jax.random.key(0), num_decodes=1, temperature=0.0,
                         top_k=top_k, max_decode_length=max_decode_length,
                         batch_size=batch_size)

  def score(self, prompts: Texts, responses: Any, *, batch_size: Optional[int] = None
            ) -> np.ndarray:
    """Teacher-forced untempered `log π(y|x)` `[P, N]` of responses to prompts.

    `responses`: `[P][N]` texts, or `[P, N, L]` int tokens in this checkpoint's vocabulary
    (EOS included, 0 after it). Responses are never cut.
    """
    prompts = _as_texts("prompts", prompts)
    if isinstance(responses, np.ndarray) and np.issubdtype(responses.dtype, np.integer):
      if responses.ndim != 3 or responses.shape[0] != len(prompts):
        raise ValueError(f"response tokens must be [P={len(prompts)}, N, L], got "
                         f"{responses.shape}")
      resp = responses.astype(np.int32)
    else:
      prompts, rows = _as_rows(prompts, responses)
      flat, _ = self.tokenize_responses([y for row in rows for y in row])
      resp = flat.reshape(len(rows), len(rows[0]), -1)
    tokens, _ = self.tokenize_contexts(prompts, self.feature_lengths["inputs"])
    rows = int(math.ceil((batch_size or self.batch_size) / self.dp)) * self.dp
    module = self.model.module
    return map_prompts(lambda p, e, t: decoding.score(module, p, e, t), self.params, tokens,
                       resp, rows, self.mesh, self.rules)


class RewardModel(_Loaded):
  """A pairwise ρ or Bradley–Terry checkpoint: reward, prefer (see the module docstring).

  `symmetrize=True` (pairwise only) averages both presentation orders,
  `logit ρ = (ℓ(x, y1, y2) − ℓ(x, y2, y1)) / 2` (removes position bias; twice the compute).
  `response_length`: the decode length of the policy whose responses it scores. A Bradley–Terry
  model then reads every response whole: up to that many tokens plus EOS
  (`reward_models.response_feature_lengths`) at one shape even when it was trained shorter, and
  a text that re-encodes longer than its decode (a SentencePiece round trip) at the next
  multiple of 16 tokens. A pairwise model's input length holds two responses of the
  experiment's lengths (`tasks.ranking_feature_lengths`); it cuts contexts, never responses.
  """

  def __init__(self, *args, symmetrize: bool = False, response_length: Optional[int] = None,
               **kwargs):
    super().__init__(*args, **kwargs)
    self.symmetrize = bool(symmetrize)
    self.reads_whole_responses = response_length is not None and self.kind == "bt_rm"
    if self.reads_whole_responses:
      need = reward_models.response_feature_lengths(
          {"inputs": self.feature_lengths["inputs"], "targets": response_length})["targets"]
      self.feature_lengths["targets"] = max(self.feature_lengths["targets"], need)
    m = self.model
    if self.kind == "pairwise_rm":
      self._fn = lambda p, t: reward_models.preference_logits_jit(
          m.module, p, t, token_a=m.token_a, token_b=m.token_b)
    else:
      self._fn = lambda p, x, y: reward_models.bt_rewards_jit(
          m.module, p, x, y, separator=m.separator_ids, eos_id=m.eos_id)

  # --- pairwise ρ ---------------------------------------------------------------------------
  def ranking_tokens(self, prompts: Texts, y_a: Texts, y_b: Texts
                     ) -> Tuple[np.ndarray, np.ndarray]:
    """`[M, Li]` ranking inputs `[CONTEXT] x [R A] y_a [R B] y_b` + EOS and `[M]` "fits".

    An input that fits is tokenized exactly as the training task does (the whole string); one
    that does not has its context cut (counted), the tags and both responses kept whole; when
    even the responses do not fit, the row is left empty and marked.
    """
    length = self.feature_lengths["inputs"]
    label = self.model.response_label
    tag = self.encode(text_formats.CONTEXT_TAG)
    out = np.zeros((len(prompts), length), np.int32)
    fits = np.ones((len(prompts),), bool)
    for i, (x, a, b) in enumerate(zip(prompts, y_a, y_b)):
      ids = self.encode(text_formats.ranking_input_text(x, a, b, label))
      if len(ids) + 1 > length:
        tail = self.encode(f" [{label} A] {a} [{label} B] {b}")
        context = self.encode(f"{text_formats.CONTEXT_TAG} {x}")[len(tag):]
        budget = length - 1 - len(tag) - len(tail)
        if budget < 0:
          fits[i] = False
          continue
        ids = tag + self._cut(context, budget) + tail
        self.stats["contexts_truncated"] += 1
      out[i, :len(ids)] = ids
      out[i, len(ids)] = self.eos_id
    self.stats["responses_too_long"] += int((~fits).sum())
    return out, fits

  def _preference_logits(self, prompts: List[str], y_a: List[str], y_b: List[str]) -> np.ndarray:
    """logit ρ(x, y_a, y_b) `[M]`, one order, identical inputs computed once; NaN: no fit."""
    keys = list(zip(prompts, y_a, y_b))
    unique = sorted(set(keys))
    if not unique:
      return np.zeros((0,), np.float32)
    where = {k: i for i, k in enumerate(unique)}
    tokens, fits = self.ranking_tokens(*zip(*unique))
    logits = np.where(fits, self._map_rows(self._fn, [tokens]), np.nan)
    return logits[[where[k] for k in keys]].astype(np.float32)

  def _pair_logits(self, prompts, y1, y2) -> np.ndarray:
    fwd = self._preference_logits(prompts, y1, y2)
    if not self.symmetrize:
      return fwd
    return 0.5 * (fwd - self._preference_logits(prompts, y2, y1))

  # --- Bradley–Terry ------------------------------------------------------------------------
  def _bt(self, prompts: List[str], responses: List[str]) -> np.ndarray:
    """r(x, y) `[M]` for aligned prompts and responses (identical pairs computed once)."""
    keys = list(zip(prompts, responses))
    unique = sorted(set(keys))
    if not unique:
      return np.zeros((0,), np.float32)
    where = {k: i for i, k in enumerate(unique)}
    r = self._bt_per_prompt([k[0] for k in unique], [[k[1]] for k in unique])[:, 0]
    return r[[where[k] for k in keys]]

  def _bt_per_prompt(self, prompts: List[str], rows: List[List[str]]) -> np.ndarray:
    """r(x, y) `[P, N]`, N responses per prompt in calls of ~`batch_size` rows; the encoder-
    decoder model encodes each prompt once for its N (decoder rows of one encoder pass), the
    encoder model reads every (x, y) packed. NaN: no fit."""
    n = len(rows[0])
    x_tok, _ = self.tokenize_contexts(prompts, self.feature_lengths["inputs"])
    y_tok, fits = self.tokenize_responses([y for row in rows for y in row],
                                          self.feature_lengths["targets"],
                                          grow=self.reads_whole_responses)
    self.stats["responses_too_long"] += int((~fits).sum())
    per_call = int(math.ceil(max(self.batch_size // n, 1) / self.dp)) * self.dp
    r = map_prompts(self._fn, self.params, x_tok, y_tok.reshape(len(prompts), n, -1), per_call,
                    self.mesh, self.rules)
    return np.where(fits.reshape(len(prompts), n), r, np.nan).astype(np.float32)

  # --- the interface ------------------------------------------------------------------------
  def prefer(self, prompts: Texts, y1: Texts, y2: Texts) -> np.ndarray:
    """P(y1 ≻ y2 | x) `[M]` float32 (ρ with y1 shown as A, or σ(r1 − r2)); NaN: no fit."""
    prompts, y1, y2 = _pair_texts(prompts, y1, y2)
    if self.kind == "pairwise_rm":
      d = self._pair_logits(prompts, y1, y2)
    else:
      r = self._bt(prompts + prompts, y1 + y2)
      d = r[:len(prompts)] - r[len(prompts):]
    with np.errstate(over="ignore", invalid="ignore"):
      return (1.0 / (1.0 + np.exp(-d))).astype(np.float32)

  def reward(self, prompts: Texts, responses: Any, baselines: Optional[Texts] = None,
             valid: Optional[np.ndarray] = None) -> np.ndarray:
    """Pointwise rewards `[B, N]` float32 for B prompts and N responses each; NaN: no fit.

    Pairwise (paper Eq. 7): `logit ρ(x, y, y_b)`; a response equal to its baseline gets
    exactly 0. `baselines` default: per prompt its first non-empty response that `valid`
    `[B, N]` (e.g. finished decodes) allows, else its first response (`baseline_texts`).
    BT: `r(x, y)`, or `r(x, y) − r(x, y_b)` with explicit baselines (a per-prompt shift, which
    rejection sampling ignores).
    """
    prompts, rows = _as_rows(prompts, responses)
    n = len(rows[0]) if rows else 0
    if baselines is None:
      base = baseline_texts(rows, valid) if self.kind == "pairwise_rm" else None
    else:
      base = _as_texts("baselines", baselines)
      if len(base) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(base)} baselines")
    out = np.zeros((len(rows), n), np.float32)
    if self.kind == "pairwise_rm":
      todo = [(b, j) for b, row in enumerate(rows) for j, y in enumerate(row) if y != base[b]]
      if todo:
        logits = self._pair_logits([prompts[b] for b, _ in todo],
                                   [rows[b][j] for b, j in todo], [base[b] for b, _ in todo])
        for (b, j), v in zip(todo, logits):
          out[b, j] = v
      return out
    if self.model.architecture == "encoder_decoder":
      r = self._bt_per_prompt(prompts, [row + [base[b]] for b, row in enumerate(rows)]
                              if base else rows)
      out, r_base = r[:, :n], (r[:, n] if base else None)
    else:
      flat_p = [p for p in prompts for _ in range(n)]
      flat_y = [y for row in rows for y in row]
      r = self._bt(flat_p + (prompts if base else []), flat_y + (base or []))
      out = r[:len(prompts) * n].reshape(len(prompts), n)
      r_base = r[len(prompts) * n:] if base else None
    if base:
      same = np.array([[y == base[b] for y in row] for b, row in enumerate(rows)])
      out = np.where(same, 0.0, out - r_base[:, None])
    return out.astype(np.float32)


class OracleRewardModel:
  """The embedded task's oracle reward (kind "oracle_rm"): r̂(x, y) = r*(x, y)/τ + σ z(x, y).

  No network: the manifest's `model_settings` hold `tau`, `noise_std` (σ; 0 = exact r*/τ),
  `noise_seed` (z is a fixed function of the texts: `tasks.oracle.text_normals`) and `ordered`
  (which r*: `tasks.golden.golden_reward`); its `task` names the environment it scores.
  `reward` and `prefer` have `RewardModel`'s interface (`prefer` = σ(r̂1 − r̂2): with σ = 0
  the simulated annotator's Bradley–Terry probability), so it serves the sampling stage,
  labelling, the reward-quality measurement and the evaluation wherever a reward checkpoint
  does.
  """
  kind = checkpoints.ORACLE_KIND

  def __init__(self, manifest: checkpoints.Manifest, mesh=None, *, path: Optional[str] = None,
               **unused):
    del mesh, unused  # no arrays to place
    self.manifest, self.path = manifest, path
    settings = dict(manifest.model_settings)
    try:
      self.tau = float(settings["tau"])
      self.noise_std = float(settings.get("noise_std", 0.0))
      self.noise_seed = int(settings.get("noise_seed", 0))
    except (KeyError, TypeError, ValueError) as e:
      raise errors.CheckpointError(f"oracle reward {path!r}: its manifest's model_settings "
                                   f"{settings!r} need a number 'tau' ({e})") from None
    if not (self.tau > 0 and self.noise_std >= 0 and math.isfinite(self.noise_std)):
      raise errors.CheckpointError(f"oracle reward {path!r}: tau={self.tau!r} must be > 0 and "
                                   f"noise_std={self.noise_std!r} finite and >= 0")
    self.golden = golden.golden_reward_of(manifest.task or "")
    if self.golden is not None and "ordered" in settings:  # the r* it was written for
      self.golden = functools.partial(golden.golden_rewards, ordered=bool(settings["ordered"]))
    if self.golden is None:
      raise errors.CheckpointError(f"oracle reward {path!r} scores task {manifest.task!r}, "
                                   "which has no golden reward (only the embedded synthetic_* "
                                   "tasks have r*)")
    self.stats = {"contexts_truncated": 0, "responses_too_long": 0}

  def _scores(self, prompts: List[str], responses: List[str]) -> np.ndarray:
    """r̂ `[M]` float64 of aligned prompts and responses."""
    r = np.asarray(self.golden(prompts, responses), np.float64) / self.tau
    if self.noise_std:
      r = r + self.noise_std * oracle.text_normals(list(zip(prompts, responses)),
                                                   self.noise_seed)
    return r

  def reward(self, prompts: Texts, responses: Any, baselines: Optional[Texts] = None,
             valid: Optional[np.ndarray] = None) -> np.ndarray:
    """r̂ `[B, N]` float32 (minus r̂(x, y_b) with `baselines`: a per-prompt shift)."""
    del valid  # every text has a reward
    prompts, rows = _as_rows(prompts, responses)
    n = len(rows[0]) if rows else 0
    out = self._scores([p for p in prompts for _ in range(n)],
                       [y for row in rows for y in row]).reshape(len(prompts), n)
    if baselines is not None:
      base = _as_texts("baselines", baselines)
      if len(base) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(base)} baselines")
      out = out - self._scores(prompts, base)[:, None]
    return out.astype(np.float32)

  def prefer(self, prompts: Texts, y1: Texts, y2: Texts) -> np.ndarray:
    """P(y1 ≻ y2 | x) = σ(r̂(x, y1) − r̂(x, y2)) `[M]` float32."""
    prompts, y1, y2 = _pair_texts(prompts, y1, y2)
    d = self._scores(prompts, y1) - self._scores(prompts, y2)
    return (0.5 * (1.0 + np.tanh(0.5 * d))).astype(np.float32)


def oracle_manifest(task: str, *, tau: float = golden.BT_TEMPERATURE, noise_std: float = 0.0,
                    noise_seed: int = 0, **record: Any) -> checkpoints.Manifest:
  """The manifest of an oracle reward for `task` (`record`: what else to keep with it, e.g.
  its calibration)."""
  return checkpoints.Manifest(
      kind=checkpoints.ORACLE_KIND, network=None, vocabulary=None, task=task, source="oracle",
      model_settings=dict(tau=float(tau), noise_std=float(noise_std),
                          noise_seed=int(noise_seed),
                          ordered=golden.reward_is_ordered(task), **record))


def baseline_texts(rows: List[List[str]], valid: Optional[np.ndarray] = None) -> List[str]:
  """Eq. 7's y_b per prompt: its first non-empty response allowed by `valid` `[B, N]` (all
  when None), else its first response."""
  out = []
  for b, row in enumerate(rows):
    ok = [j for j, y in enumerate(row) if y and (valid is None or valid[b][j])]
    out.append(row[ok[0]] if ok else row[0])
  return out


def load(path: str, *, mesh=None, mesh_shape: Sequence[int] = (-1, 1, 1),
         expect: Optional[Sequence[str]] = None, role: str = "checkpoint",
         params: Any = None, manifest: Optional[checkpoints.Manifest] = None,
         **kwargs) -> Union[Generator, RewardModel]:
  """Opens any checkpoint (run, step, params or converted dir) on a mesh, by its manifest.

  Args:
    path: the checkpoint.
    mesh: a mesh (default: `partitioning.create_mesh(mesh_shape)`).
    expect: the kinds the caller can use (e.g. `checkpoints.REWARD_KINDS`); another kind is a
      one-line `errors.CheckpointError` naming `role`.
    params / manifest: already-loaded pieces (tests; `path` then only names them).
    **kwargs: `batch_size`, `feature_lengths` (override the manifest's), `keep_context`,
      `rules` (logical-axis rules, default `partitioning.LOGICAL_RULES`: a run's LOGICAL_RULES
      shard its sampling and evaluation as its training), and for reward models `symmetrize`.
  """
  manifest = manifest or checkpoints.read_manifest(path)
  if expect is not None:
    checkpoints.check_kind(manifest, path, expect, role)
  mesh = mesh if mesh is not None else partitioning.create_mesh(mesh_shape)
  if manifest.kind == checkpoints.ORACLE_KIND:
    return OracleRewardModel(manifest, path=path)
  cls = Generator if manifest.kind in checkpoints.GENERATIVE_KINDS else RewardModel
  return cls(manifest, mesh, path=path, params=params, **kwargs)
