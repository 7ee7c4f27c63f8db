"""One batch of the sampling stage: N candidates per prompt -> rewards -> selection -> pairs.

  process_batch   B prompts -> (records, Accum): the records the stage writes (a labeled pair,
                  or one selected response) and the batch's statistics
  Accum           running sums of the statistics (`stats.json`)

Every random choice comes from one key per batch, split three ways: decoding, selection, and
the per-prompt random order of the selected candidates before pairing.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, List, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rso_jax import inference
from rso_jax import pairs as pairs_lib
from rso_jax import recipe
from rso_jax import rejection


def strip_padding(tokens: np.ndarray, eos_id: int) -> List[int]:
  """Token row up to and including EOS (padding removed)."""
  ids = [int(t) for t in tokens]
  if eos_id in ids:
    return ids[:ids.index(eos_id) + 1]
  return [t for t in ids if t > 0]


@dataclasses.dataclass
class Accum:
  """Running sums for stats.json."""
  prompts: int = 0
  prompts_truncated: int = 0
  candidates: int = 0
  valid_candidates: int = 0
  unfinished: int = 0
  empty: int = 0
  retokenized: int = 0
  not_retokenizable: int = 0
  reward_unscorable: int = 0
  labels_unscorable: int = 0
  accepted: int = 0
  visited: int = 0
  rounds: int = 0
  pairs: int = 0
  responses: int = 0  # records of a response-writing run (selected responses, no pairs)
  skipped_identical: int = 0
  skipped_invalid: int = 0
  reward_all: float = 0.0
  reward_selected: float = 0.0
  reward_chosen: float = 0.0
  reward_rejected: float = 0.0
  golden_all: float = 0.0
  golden_selected: float = 0.0
  golden_chosen: float = 0.0
  golden_rejected: float = 0.0
  label_golden_agree: float = 0.0
  label_golden_decided: int = 0

  def add(self, other: "Accum") -> None:
    for f in dataclasses.fields(self):
      setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

  def summary(self) -> Dict[str, Any]:
    d = dataclasses.asdict(self)
    div = lambda a, b: (a / b) if b else float("nan")
    d.update({
        "rejection/acceptance_rate": div(self.accepted, self.visited),
        "rejection/rounds": div(self.rounds, self.prompts),
        "rejection/accepted_per_prompt": div(self.accepted, self.prompts),
        "reward/all_mean": div(self.reward_all, self.valid_candidates),
        "reward/selected_mean": div(self.reward_selected, self.accepted),
        "reward/chosen_mean": div(self.reward_chosen, self.pairs),
        "reward/rejected_mean": div(self.reward_rejected, self.pairs),
        "golden/all_mean": div(self.golden_all, self.valid_candidates),
        "golden/selected_mean": div(self.golden_selected, self.accepted),
        "golden/chosen_mean": div(self.golden_chosen, self.pairs),
        "golden/rejected_mean": div(self.golden_rejected, self.pairs),
        "golden/label_agreement": div(self.label_golden_agree, self.label_golden_decided),
        "pairs_per_prompt": div(self.pairs, self.prompts),
        "responses_per_prompt": div(self.responses, self.prompts),
    })
    return d


@dataclasses.dataclass
class _Candidates:
  """A batch's N candidates per prompt, scored (NumPy, `[B, N]` unless noted)."""
  out: inference.Generation
  rewards: np.ndarray        # float32; NaN where the reward model cannot read the response
  valid: np.ndarray          # finished (or kept unfinished), non-empty, consistent, scorable
  nonempty: np.ndarray       # more than the EOS token
  inconsistent: np.ndarray   # the text's own tokenization is not the decoded tokens
  unscorable: np.ndarray     # otherwise valid, but the reward model cannot read it whole


def _score_candidates(policy: inference.Generator, scorer: inference.RewardModel,
                      prompts: Sequence[str], key, *, num_candidates: int,
                      max_decode_length: Optional[int], temperature: float,
                      top_k: Optional[int], top_p: Optional[float],
                      keep_unfinished: bool) -> _Candidates:
  """N decodes per prompt and their rewards; which candidates may be selected."""
  out = policy.generate(list(prompts), key=key, num_decodes=num_candidates,
                        temperature=temperature, top_k=top_k, top_p=top_p,
                        max_decode_length=max_decode_length, batch_size=len(prompts),
                        canonical=True)  # text, tokens and log π of one response agree
  b, n, _ = out.tokens.shape
  lengths, finished = np.asarray(out.lengths), np.asarray(out.finished)
  nonempty = lengths > 1
  # A candidate without EOS within max_decode_length is truncated: invalid unless configured
  # (counted as `unfinished` either way).
  valid = (finished | keep_unfinished) & nonempty
  # A text whose own tokenization is longer than the decode length is not the tokens it came
  # from: the reward model would read one response and the policy train on another.
  inconsistent = (np.zeros_like(valid) if out.consistent is None
                  else ~np.asarray(out.consistent))
  valid = valid & ~inconsistent
  # Pairwise: Eq. 7's baseline y_b is the prompt's first valid (finished, non-empty) candidate.
  rewards = np.asarray(scorer.reward(list(prompts), out.texts, valid=valid), np.float32)
  if rewards.shape != (b, n):
    raise ValueError(f"reward model returned shape {rewards.shape}, expected {(b, n)}")
  # NaN: the reward model could not read the whole response (the inference layer's rule).
  unscorable = valid & np.isnan(rewards)
  valid = valid & ~unscorable
  bad = valid & ~np.isfinite(rewards)
  if bad.any():
    i, j = np.argwhere(bad)[0]
    raise ValueError(f"reward model gave a non-finite reward {rewards[i, j]} for prompt "
                     f"{prompts[i]!r}, response {out.texts[i][j]!r}")
  return _Candidates(out, rewards, valid, nonempty, inconsistent, unscorable)


def _select(c: _Candidates, masked: jax.Array, key, *, strategy: str, num_samples: int,
            beta: float, rejection_mode: str, proposal_correction: bool, rest_threshold: float):
  """`rejection.Selection` of up to `num_samples` valid candidates per prompt (host arrays);
  `masked`: the rewards `[B, N]`, 0 where a candidate is invalid."""
  correction = None
  if proposal_correction:
    correction = rejection.ProposalCorrection(jnp.asarray(c.out.model_logps),
                                              jnp.asarray(c.out.proposal_logps))
  if strategy == "rso":
    sel = rejection.select("rso", key, masked, num_samples, beta, mask=jnp.asarray(c.valid),
                           log_prob_correction=correction, mode=rejection_mode)
  else:
    sel = rejection.select(strategy, key, masked, num_samples, mask=jnp.asarray(c.valid),
                           threshold=rest_threshold)
  return jax.device_get(sel)


def _label_fn(scorer: inference.RewardModel, label_with: str, prompts, texts, unscorable: set,
              key: Optional[jax.Array] = None):
  """preference_fn over candidate indices for `pairs.make_pairs` (host-side), or None.

  "preference": the reward model's P(y_a ≻ y_b); "draw": a label drawn from it, 1 with that
  probability (a simulated annotator: with the oracle reward, the Bradley–Terry rater), from
  `key`. A preference the reward model cannot compute (responses too long together) counts as
  a tie for the bracket; the pair is recorded in `unscorable` and not written.
  """
  if label_with == "reward":
    return None
  rng = None
  if label_with == "draw":
    rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel().tolist())

  def pref(idx_a, idx_b):
    a, b = np.asarray(idx_a), np.asarray(idx_b)
    bsz, p = a.shape
    flat_p = [prompts[i] for i in range(bsz) for _ in range(p)]
    ya = [texts[i][a[i, j]] for i in range(bsz) for j in range(p)]
    yb = [texts[i][b[i, j]] for i in range(bsz) for j in range(p)]
    prob = np.asarray(scorer.prefer(flat_p, ya, yb), np.float32).reshape(bsz, p)
    for i, j in np.argwhere(~np.isfinite(prob)):
      unscorable.add((int(i), frozenset((int(a[i, j]), int(b[i, j])))))
    scored = np.isfinite(prob)
    if rng is not None:  # every scored pair's label drawn (a 0.5 preference: a fair coin)
      prob = np.where(scored, (rng.random(prob.shape) < prob).astype(np.float32), prob)
    return jnp.asarray(np.where(scored, prob, 0.5))
  return pref


def _batch_stats(c: _Candidates, sel, m: int, golden: Optional[np.ndarray]) -> Accum:
  """The candidate and selection counts of the first `m` prompts (the rest are padding)."""
  out, finished = c.out, np.asarray(c.out.finished)
  n = out.tokens.shape[1]
  v, sv = c.valid[:m], sel.valid[:m]
  acc = Accum(prompts=m, prompts_truncated=int(out.prompt_truncated[:m].sum()),
              candidates=m * n, valid_candidates=int(v.sum()),
              unfinished=int((~finished[:m]).sum()),
              empty=int((finished[:m] & ~c.nonempty[:m]).sum()),
              retokenized=0 if out.retokenized is None else int(out.retokenized[:m].sum()),
              not_retokenizable=int(c.inconsistent[:m].sum()),
              reward_unscorable=int(c.unscorable[:m].sum()),
              accepted=int(np.sum(sv)), visited=int(np.sum(sel.num_visited[:m])),
              rounds=int(np.sum(sel.rounds[:m])))
  picked = lambda x: float(np.sum(np.take_along_axis(x[:m], sel.indices[:m], 1)[sv]))
  acc.reward_all = float(c.rewards[:m][v].sum())
  acc.reward_selected = picked(np.where(c.valid, c.rewards, 0.0))
  if golden is not None:
    acc.golden_all = float(golden[:m][v].sum())
    acc.golden_selected = picked(golden)
  return acc


def _side(c: _Candidates, golden: Optional[np.ndarray], eos: int, i: int, side: str,
          j: int) -> dict:
  """Prompt i's fields of one side (`chosen` / `rejected`) from candidate j."""
  rec = {side: strip_padding(c.out.tokens[i, j], eos),
         f"{side}_pretokenized": c.out.texts[i][j],
         f"ref_{side}_logps": float(c.out.model_logps[i, j]),
         f"{side}_reward": float(c.rewards[i, j])}
  if golden is not None:
    rec[f"{side}_golden_reward"] = float(golden[i, j])
  return rec


def _response_records(c: _Candidates, sel, golden, prompts, eos: int, m: int,
                      acc: Accum) -> List[dict]:
  """One record per selected response (`rejected` empty)."""
  records = []
  for i in range(m):
    for j in np.flatnonzero(sel.valid[i]):
      records.append({"inputs": strip_padding(c.out.prompt_tokens[i], eos),
                      "inputs_pretokenized": prompts[i], "rejected": [],
                      "rejected_pretokenized": "",
                      **_side(c, golden, eos, i, "chosen", int(sel.indices[i, j]))})
      acc.responses += 1
  return records


def _pair_records(c: _Candidates, pairs, no_label: set, golden, prompts, eos: int, m: int,
                  acc: Accum) -> List[dict]:
  """One record per labeled pair; invalid, unlabeled and identical pairs are counted."""
  records = []
  texts = c.out.texts
  for i in range(m):
    for j in range(pairs.chosen.shape[1]):
      if not pairs.valid[i, j]:
        acc.skipped_invalid += 1
        continue
      ch, rj = int(pairs.chosen[i, j]), int(pairs.rejected[i, j])
      if (i, frozenset((ch, rj))) in no_label:
        acc.labels_unscorable += 1
        continue
      if texts[i][ch] == texts[i][rj]:
        acc.skipped_identical += 1
        continue
      rec = {"inputs": strip_padding(c.out.prompt_tokens[i], eos),
             "inputs_pretokenized": prompts[i],
             **_side(c, golden, eos, i, "chosen", ch), **_side(c, golden, eos, i, "rejected", rj)}
      acc.pairs += 1
      acc.reward_chosen += rec["chosen_reward"]
      acc.reward_rejected += rec["rejected_reward"]
      if golden is not None:
        acc.golden_chosen += rec["chosen_golden_reward"]
        acc.golden_rejected += rec["rejected_golden_reward"]
        if golden[i, ch] != golden[i, rj]:
          acc.label_golden_decided += 1
          acc.label_golden_agree += float(golden[i, ch] > golden[i, rj])
      records.append(rec)
  return records


def process_batch(policy: inference.Generator, scorer: inference.RewardModel,
                  prompts: Sequence[str], key, *,
                  num_candidates: int = recipe.PAPER.num_candidates,
                  max_decode_length: Optional[int] = None,
                  temperature: float = recipe.PAPER.temperature,
                  top_k: Optional[int] = recipe.PAPER.top_k,
                  top_p: Optional[float] = recipe.PAPER.top_p, strategy: str,
                  num_samples: int = recipe.PAPER.num_samples, beta: float = recipe.PAPER.beta,
                  rejection_mode: str, proposal_correction: bool, pair_method: str,
                  label_with: str,
                  golden_fn: Optional[Callable] = None, n_real: Optional[int] = None,
                  keep_unfinished: bool = False, responses_only: bool = False,
                  rest_threshold: float = rejection.REST_THRESHOLD):
  """One batch of prompts -> (records, Accum) over its first `n_real` rows (rest: padding).

  `responses_only`: one record per selected response (RAFT / ReST data), no pairs.

  Every random choice comes from `key`, split three ways: decoding, selection, and the
  per-prompt random order of the selected candidates before pairing (`pairs.shuffle_slots`),
  so the pairs are a uniformly random matching / bracket of the selected set whatever the
  selector's own order (rso: acceptance order), alike for every data setting.
  """
  # split(key, 3)[:2] == split(key) (partitionable threefry): decoding and selection draws
  # are those of a two-way split.
  k_sample, k_select, k_pair = jax.random.split(key, 3)
  c = _score_candidates(policy, scorer, prompts, k_sample, num_candidates=num_candidates,
                        max_decode_length=max_decode_length, temperature=temperature,
                        top_k=top_k, top_p=top_p, keep_unfinished=keep_unfinished)
  masked = jnp.asarray(np.where(c.valid, c.rewards, 0.0))
  sel = _select(c, masked, k_select, strategy=strategy, num_samples=num_samples, beta=beta,
                rejection_mode=rejection_mode, proposal_correction=proposal_correction,
                rest_threshold=rest_threshold)
  no_label: set = set()
  pairs = None
  if not responses_only:
    pref_fn = _label_fn(scorer, label_with, prompts, c.out.texts, no_label,
                        key=jax.random.fold_in(key, 3))  # apart from the 3-way split
    pairs = jax.device_get(pairs_lib.make_pairs(
        pair_method, jnp.asarray(sel.indices), jnp.asarray(sel.valid),
        rewards=None if pref_fn else masked, preference_fn=pref_fn, key=k_pair))
  b, n = c.rewards.shape
  m = b if n_real is None else n_real
  golden = None
  if golden_fn is not None:
    golden = np.asarray(golden_fn(list(prompts), c.out.texts), np.float32).reshape(b, n)
  acc = _batch_stats(c, sel, m, golden)
  eos = policy.eos_id
  if responses_only:
    return _response_records(c, sel, golden, prompts, eos, m, acc), acc
  return _pair_records(c, pairs, no_label, golden, prompts, eos, m, acc), acc
