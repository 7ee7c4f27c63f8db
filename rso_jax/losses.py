"""Preference losses, reward-model losses and token cross-entropy: pure array functions.

Every preference loss reads *sequence* log-probs `[B]` (sums over the response tokens, see
`sequence_logps`) and returns PER-EXAMPLE losses `[B]` in float32; reduce them with
`masked_mean`. Notation (paper, arXiv 2309.06657, Section 3):

  π_w = log π_θ(y_w|x)    policy, chosen        ref_w = log π_sft(y_w|x)   reference, chosen
  π_l = log π_θ(y_l|x)    policy, rejected      ref_l = log π_sft(y_l|x)   reference, rejected
  Δ   = (π_w − ref_w) − (π_l − ref_l)           (natural-log units, no temperature applied)

  sigmoid-norm (Eq. 8, DPO)   −log σ(γΔ)                        `sigmoid_norm`
  hinge        (Eq. 9)        max(0, 1 − γ(π_w − π_l))          `hinge`
  hinge-norm   (Eq. 10, RSO)  max(0, 1 − γΔ)                    `hinge_norm`
  SLiC         (SLiC Eq. 1)   max(0, δ − (π_w − π_l)) − λ·log π_θ(y_ref|x)   `slic_hinge`
  IPO (beyond the paper)      (Δ − 1/(2τ))²                     `ipo`
  conservative DPO            −(1−ε) log σ(γΔ) − ε log σ(−γΔ)   `sigmoid_norm(label_smoothing=ε)`

γ versus β — two different knobs, never to be confused:
  * γ (`gamma`) is the LOSS temperature: it scales Δ inside the loss, here and only here.
    The paper's recipe uses γ = 0.05 (ablated over {0.005, 0.05, 0.5}).
  * β is the SAMPLER's temperature: it defines the target π* ∝ π_sft·exp(r/β) and the
    acceptance test of `rejection.py` (paper: β = 0.5). No function in this module takes a β.
  DPO derives its loss with γ = β; RSO keeps them separate. Pitfall seen in a public JAX DPO
  port: multiplying the log-ratios by β before calling a loss that multiplies by β again (β² in
  effect). Pass RAW log-probs here: each loss applies γ exactly once.

Non-finite inputs: `check_pair_logps` raises on host (NumPy) with the tensor name and example
index; inside jit, `sanitize` replaces non-finite log-probs by 0 BEFORE any arithmetic and returns
a validity mask, so the example is skipped (weight 0), counted, and its gradient stays finite.
`pair_loss_and_metrics` does all of this in one call.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
ArrayLike = Any

_MAX_REPORTED = 10  # example indices listed in an error message


# ---------------------------------------------------------------------------
# Argument checks (static: they run at trace time on Python numbers and shapes).
# ---------------------------------------------------------------------------


def _is_concrete_number(x: Any) -> bool:
  return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool)


def _check_positive(name: str, value: Any) -> None:
  """Raises if a concrete hyper-parameter is not a finite number > 0 (tracers pass)."""
  if isinstance(value, bool) or value is None:
    raise ValueError(f"{name} must be a finite number > 0, got {value!r}.")
  if _is_concrete_number(value) and not (math.isfinite(value) and value > 0):
    raise ValueError(f"{name} must be a finite number > 0, got {value!r}.")


def _f32(name: str, x: ArrayLike) -> Array:
  if x is None:
    raise ValueError(f"{name} is required, got None.")
  return jnp.asarray(x, jnp.float32)


def _same_shape(**arrays: Optional[Array]) -> None:
  shapes = {k: tuple(v.shape) for k, v in arrays.items() if v is not None}
  if len(set(shapes.values())) > 1:
    raise ValueError(f"log-prob arrays must share one shape [B], got {shapes}.")


def _log_ratio_diff(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                    ref_rejected_logps) -> Array:
  """Δ = (π_w − ref_w) − (π_l − ref_l), float32, `[B]`."""
  pw = _f32("policy_chosen_logps", policy_chosen_logps)
  pl = _f32("policy_rejected_logps", policy_rejected_logps)
  rw = _f32("ref_chosen_logps", ref_chosen_logps)
  rl = _f32("ref_rejected_logps", ref_rejected_logps)
  _same_shape(policy_chosen_logps=pw, policy_rejected_logps=pl, ref_chosen_logps=rw,
              ref_rejected_logps=rl)
  return (pw - rw) - (pl - rl)


# ---------------------------------------------------------------------------
# Preference losses: per-example `[B]` float32.
# ---------------------------------------------------------------------------


def sigmoid_norm(policy_chosen_logps: ArrayLike, policy_rejected_logps: ArrayLike,
                 ref_chosen_logps: ArrayLike, ref_rejected_logps: ArrayLike,
                 gamma: float, label_smoothing: float = 0.0) -> Array:
  """Sigmoid-norm / DPO loss (paper Eq. 8): `−log σ(γΔ)`, per example `[B]`.

  With `label_smoothing=ε` (conservative DPO: each label is wrong with probability ε):
  `−(1−ε)·log σ(γΔ) − ε·log σ(−γΔ)`. Uses `log_sigmoid`, stable for any |γΔ|.

  Args:
    policy_chosen_logps: `[B]` log π_θ(y_w|x), nats.
    policy_rejected_logps: `[B]` log π_θ(y_l|x).
    ref_chosen_logps: `[B]` log π_sft(y_w|x).
    ref_rejected_logps: `[B]` log π_sft(y_l|x).
    gamma: loss temperature γ > 0 (not the sampler's β).
    label_smoothing: ε in [0, 0.5); 0 is plain DPO.
  """
  _check_positive("gamma", gamma)
  if _is_concrete_number(label_smoothing) and not 0.0 <= label_smoothing < 0.5:
    raise ValueError(f"label_smoothing must be in [0, 0.5) (0.5 makes every label "
                     f"uninformative), got {label_smoothing!r}.")
  logits = gamma * _log_ratio_diff(policy_chosen_logps, policy_rejected_logps,
                                   ref_chosen_logps, ref_rejected_logps)
  loss = -jax.nn.log_sigmoid(logits)
  if _is_concrete_number(label_smoothing) and label_smoothing == 0.0:
    return loss
  return (1.0 - label_smoothing) * loss - label_smoothing * jax.nn.log_sigmoid(-logits)


def hinge_norm(policy_chosen_logps: ArrayLike, policy_rejected_logps: ArrayLike,
               ref_chosen_logps: ArrayLike, ref_rejected_logps: ArrayLike,
               gamma: float) -> Array:
  """Hinge-norm loss (RSO, paper Eq. 10): `max(0, 1 − γΔ)`, per example `[B]`.

  Exactly 0, with exactly zero gradient, once γΔ ≥ 1. Args as in `sigmoid_norm`.
  """
  _check_positive("gamma", gamma)
  delta = _log_ratio_diff(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                          ref_rejected_logps)
  return jax.nn.relu(1.0 - gamma * delta)


def hinge(policy_chosen_logps: ArrayLike, policy_rejected_logps: ArrayLike,
          gamma: float) -> Array:
  """Hinge loss (paper Eq. 9): `max(0, 1 − γ(π_w − π_l))`, per example `[B]`; no reference.

  Exactly Eq. 9 (γ inside, margin 1): `slic_hinge(gamma=γ)` is the same hinge divided by γ,
  whose gradients are 1/γ larger -- which changes what gradient clipping does.
  """
  _check_positive("gamma", gamma)
  pw = _f32("policy_chosen_logps", policy_chosen_logps)
  pl = _f32("policy_rejected_logps", policy_rejected_logps)
  _same_shape(policy_chosen_logps=pw, policy_rejected_logps=pl)
  return jax.nn.relu(1.0 - gamma * (pw - pl))


def slic_hinge(policy_chosen_logps: ArrayLike, policy_rejected_logps: ArrayLike,
               gamma: Optional[float] = None, delta: Optional[float] = None,
               sft_logps: Optional[ArrayLike] = None, sft_weight: float = 0.0) -> Array:
  """SLiC calibration hinge (SLiC Eq. 1), margin form: `max(0, δ − (π_w − π_l))` `[B]`.

  Uses no reference model. Give exactly one of `delta` (the margin δ, nats) or `gamma`
  (δ = 1/γ). The paper's Eq. 9 (`hinge`) is the same hinge scaled by γ:
  `max(0, 1 − γ(π_w − π_l)) = γ · max(0, 1/γ − (π_w − π_l))`: same zero region and gradient
  direction, gradients 1/γ larger here (not absorbed where gradient clipping acts).

  With `sft_weight=λ > 0` adds SLiC's regularizer `−λ·log π_θ(y_ref|x)` from `sft_logps`
  `[B]` (the policy's log-prob of a reference target; paper Table 5: no real gain).
  """
  if (gamma is None) == (delta is None):
    raise ValueError(f"slic_hinge takes exactly one of gamma (margin 1/gamma) or delta "
                     f"(margin), got gamma={gamma!r}, delta={delta!r}.")
  if delta is None:
    _check_positive("gamma", gamma)
    delta = 1.0 / gamma
  else:
    _check_positive("delta", delta)
  pw = _f32("policy_chosen_logps", policy_chosen_logps)
  pl = _f32("policy_rejected_logps", policy_rejected_logps)
  _same_shape(policy_chosen_logps=pw, policy_rejected_logps=pl)
  loss = jax.nn.relu(delta - (pw - pl))
  if _is_concrete_number(sft_weight):
    if not (math.isfinite(sft_weight) and sft_weight >= 0):
      raise ValueError(f"sft_weight must be a finite number >= 0, got {sft_weight!r}.")
    if sft_weight == 0:
      return loss
  if sft_logps is None:
    raise ValueError(f"sft_weight={sft_weight!r} needs sft_logps [B] "
                     "(log π_θ(y_ref|x) of a reference target), got None.")
  sft = _f32("sft_logps", sft_logps)
  _same_shape(policy_chosen_logps=pw, sft_logps=sft)
  return loss - sft_weight * sft


def ipo(policy_chosen_logps: ArrayLike, policy_rejected_logps: ArrayLike,
        ref_chosen_logps: ArrayLike, ref_rejected_logps: ArrayLike, tau: float) -> Array:
  """IPO loss (Azar et al. 2023, beyond the paper): `(Δ − 1/(2τ))²`, per example `[B]`.

  τ > 0 is IPO's regularization strength: Δ is regressed onto 1/(2τ) (no γ). Unlike the
  other losses the gradient pushes Δ back down once it exceeds the target.
  """
  _check_positive("tau", tau)
  delta = _log_ratio_diff(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                          ref_rejected_logps)
  return jnp.square(delta - 1.0 / (2.0 * tau))


def bradley_terry(chosen_rewards: ArrayLike, rejected_rewards: ArrayLike,
                  label_smoothing: float = 0.0) -> Array:
  """Bradley–Terry reward-model loss `−log σ(r_w − r_l)` per example `[B]` (optional ε)."""
  if _is_concrete_number(label_smoothing) and not 0.0 <= label_smoothing < 0.5:
    raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing!r}.")
  rw = _f32("chosen_rewards", chosen_rewards)
  rl = _f32("rejected_rewards", rejected_rewards)
  _same_shape(chosen_rewards=rw, rejected_rewards=rl)
  logits = rw - rl
  return (-(1.0 - label_smoothing) * jax.nn.log_sigmoid(logits)
          - label_smoothing * jax.nn.log_sigmoid(-logits))


def bt_loss_and_metrics(chosen_rewards: Array, rejected_rewards: Array,
                        weights: Optional[Array] = None, *, margin: float = 0.0,
                        center_weight: float = 0.0) -> Tuple[Array, Dict[str, Array]]:
  """Bradley–Terry reward loss and metrics over pairs with weight > 0.

  loss = mean_w[−log σ(r_w − r_l − margin) + center_weight·(r_w + r_l)²].
  """
  rw = jnp.asarray(chosen_rewards, jnp.float32)
  rl = jnp.asarray(rejected_rewards, jnp.float32)
  w = jnp.ones_like(rw) if weights is None else jnp.asarray(weights, jnp.float32)
  bt = bradley_terry(rw - margin, rl)
  center = jnp.square(rw + rl)
  loss = masked_mean(bt + center_weight * center, w)
  diff = rw - rl
  acc = jnp.where(diff > 0, 1.0, jnp.where(diff == 0, 0.5, 0.0))
  metrics = {
      "loss": loss,
      "bt_loss": masked_mean(bt, w),
      "center_loss": masked_mean(center, w),
      "accuracy": masked_mean(acc, w),
      "margin": masked_mean(diff, w),
      "mean_reward": masked_mean(0.5 * (rw + rl), w),
      "rewards/chosen": masked_mean(rw, w),
      "rewards/rejected": masked_mean(rl, w),
      "pairs/skipped_identical": jnp.sum(w <= 0).astype(jnp.float32),
  }
  return loss, metrics


# ---------------------------------------------------------------------------
# Registry.
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PairLoss:
  """A preference loss with one calling convention for the trainer.

  `loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, **hparams) -> [B]`;
  `uses_reference=False` (SLiC) ignores the reference log-probs, which may then be None.
  """
  name: str
  fn: Callable[..., Array]
  uses_reference: bool

  def __call__(self, policy_chosen_logps: ArrayLike, policy_rejected_logps: ArrayLike,
               ref_chosen_logps: Optional[ArrayLike] = None,
               ref_rejected_logps: Optional[ArrayLike] = None, **hparams: Any) -> Array:
    if not self.uses_reference:
      return self.fn(policy_chosen_logps, policy_rejected_logps, **hparams)
    if ref_chosen_logps is None or ref_rejected_logps is None:
      raise ValueError(f"loss {self.name!r} needs ref_chosen_logps and ref_rejected_logps, "
                       "got None.")
    return self.fn(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                   ref_rejected_logps, **hparams)


_LOSSES: Dict[str, PairLoss] = {
    "sigmoid_norm": PairLoss("sigmoid_norm", sigmoid_norm, True),
    "hinge_norm": PairLoss("hinge_norm", hinge_norm, True),
    "hinge": PairLoss("hinge", hinge, False),
    "slic_hinge": PairLoss("slic_hinge", slic_hinge, False),
    "ipo": PairLoss("ipo", ipo, True),
}

LOSS_NAMES: Tuple[str, ...] = tuple(sorted(_LOSSES))


def get_loss_fn(name: str) -> PairLoss:
  """Looks up a preference loss by name (`-` and case are normalized: "hinge-norm" works)."""
  key = str(name).strip().lower().replace("-", "_")
  if key not in _LOSSES:
    raise ValueError(f"unknown loss name {name!r}; valid names: {', '.join(LOSS_NAMES)}.")
  return _LOSSES[key]


# ---------------------------------------------------------------------------
# Masks, non-finite handling and metrics.
# ---------------------------------------------------------------------------


def masked_mean(values: ArrayLike, weights: Optional[ArrayLike] = None) -> Array:
  """Weighted mean `Σ w·v / Σ w` over all entries; entries with w ≤ 0 never touch the result.

  NaN/inf in a masked entry does not leak (selected away with `jnp.where`); 0 if Σ w = 0.
  """
  v = jnp.asarray(values, jnp.float32)
  if weights is None:
    return jnp.mean(v)
  w = jnp.asarray(weights, jnp.float32)
  if w.shape != v.shape:
    raise ValueError(f"weights shape {w.shape} != values shape {v.shape}.")
  keep = w > 0
  total = jnp.sum(jnp.where(keep, jnp.where(keep, v, 0.0) * w, 0.0))
  denom = jnp.sum(jnp.where(keep, w, 0.0))
  return jnp.where(denom > 0, total / jnp.where(denom > 0, denom, 1.0), 0.0)


def sanitize(*logps: Optional[ArrayLike]) -> Tuple[Any, ...]:
  """Replaces non-finite log-probs by 0 and marks their examples invalid.

  Args:
    *logps: arrays of one shape `[B]` (None entries pass through as None).

  Returns:
    `(*clean_logps, valid)`: float32 arrays with every NaN/±inf replaced by 0 (via `jnp.where`
    before any arithmetic, so the gradient w.r.t. a bad entry is exactly 0, never NaN), and a
    bool `[B]` mask that is False where ANY input of that example was non-finite.
  """
  arrays = [None if x is None else jnp.asarray(x, jnp.float32) for x in logps]
  present = [x for x in arrays if x is not None]
  if not present:
    raise ValueError("sanitize needs at least one log-prob array.")
  _same_shape(**{f"logps[{i}]": x for i, x in enumerate(arrays)})
  valid = jnp.ones(present[0].shape, bool)
  for x in present:
    valid &= jnp.isfinite(x)
  clean = tuple(None if x is None else jnp.where(jnp.isfinite(x), x, 0.0) for x in arrays)
  return clean + (valid,)


def preference_metrics(policy_chosen_logps: ArrayLike, policy_rejected_logps: ArrayLike,
                       ref_chosen_logps: Optional[ArrayLike],
                       ref_rejected_logps: Optional[ArrayLike], gamma: float,
                       weights: Optional[ArrayLike] = None) -> Dict[str, Array]:
  """TRL-named scalar metrics over the examples with weight > 0 and finite log-probs.

  Implicit rewards: `chosen = γ·(π_w − ref_w)`, `rejected = γ·(π_l − ref_l)` (a missing
  reference counts as 0, as TRL's reference-free mode). Returns `rewards/chosen`,
  `rewards/rejected` (means), `rewards/accuracies` (fraction with chosen > rejected, strict),
  `rewards/margins` (mean chosen − rejected), `logps/chosen`, `logps/rejected` (policy means).
  """
  _check_positive("gamma", gamma)
  pw = _f32("policy_chosen_logps", policy_chosen_logps)
  zeros = jnp.zeros_like(pw)
  rw = zeros if ref_chosen_logps is None else ref_chosen_logps
  rl = zeros if ref_rejected_logps is None else ref_rejected_logps
  pw, pl, rw, rl, valid = sanitize(pw, policy_rejected_logps, rw, rl)
  w = valid.astype(jnp.float32)
  if weights is not None:
    weights = jnp.asarray(weights, jnp.float32)
    if weights.shape != pw.shape:
      raise ValueError(f"weights shape {weights.shape} != log-prob shape {pw.shape}.")
    w = jnp.where(valid, weights, 0.0)
  chosen = gamma * (pw - rw)
  rejected = gamma * (pl - rl)
  return {
      "rewards/chosen": masked_mean(chosen, w),
      "rewards/rejected": masked_mean(rejected, w),
      "rewards/accuracies": masked_mean((chosen > rejected).astype(jnp.float32), w),
      "rewards/margins": masked_mean(chosen - rejected, w),
      "logps/chosen": masked_mean(pw, w),
      "logps/rejected": masked_mean(pl, w),
  }


def pair_loss_and_metrics(
    loss: str | PairLoss, policy_chosen_logps: ArrayLike, policy_rejected_logps: ArrayLike,
    ref_chosen_logps: Optional[ArrayLike] = None,
    ref_rejected_logps: Optional[ArrayLike] = None, *, weights: Optional[ArrayLike] = None,
    metrics_gamma: Optional[float] = None, **hparams: Any
) -> Tuple[Array, Array, Dict[str, Array]]:
  """Sanitize → per-example loss → weighted mean → metrics, safe under jit and grad.

  Examples with any non-finite log-prob (including `sft_logps` in `hparams`) get weight 0 and
  are counted in `loss/nonfinite_pairs` (only those with weight > 0 are counted).

  Args:
    loss: a name for `get_loss_fn` or a `PairLoss`.
    policy_chosen_logps .. ref_rejected_logps: `[B]` sequence log-probs.
    weights: `[B]` example weights (0 = padding example); default all 1.
    metrics_gamma: γ of the implicit rewards in the metrics; default `hparams["gamma"]`,
      else 1.
    **hparams: the loss's hyper-parameters (`gamma`, `tau`, `delta`, `sft_weight`, ...).

  Returns:
    `(loss, per_example_loss [B], metrics)`: the scalar weighted mean, per-example losses
    (0 for skipped examples) and `preference_metrics` plus `loss`, `loss/nonfinite_pairs`.
  """
  spec = get_loss_fn(loss) if isinstance(loss, str) else loss
  sft = hparams.pop("sft_logps", None)
  if not spec.uses_reference:
    ref_for_loss = (None, None)
  else:
    ref_for_loss = (ref_chosen_logps, ref_rejected_logps)
    if ref_chosen_logps is None or ref_rejected_logps is None:
      raise ValueError(f"loss {spec.name!r} needs ref_chosen_logps and ref_rejected_logps.")
  pw, pl, rw, rl, sft, valid = sanitize(policy_chosen_logps, policy_rejected_logps,
                                        *ref_for_loss, sft)
  if sft is not None:
    hparams["sft_logps"] = sft
  w = jnp.ones(valid.shape, jnp.float32) if weights is None else jnp.asarray(
      weights, jnp.float32)
  if w.shape != valid.shape:
    raise ValueError(f"weights shape {w.shape} != log-prob shape {valid.shape}.")
  nonfinite = jnp.sum((w > 0) & ~valid).astype(jnp.int32)
  w = jnp.where(valid, w, 0.0)
  per_example = spec(pw, pl, rw, rl, **hparams)
  per_example = jnp.where(w > 0, per_example, 0.0)
  mean_loss = masked_mean(per_example, w)
  if metrics_gamma is None:
    metrics_gamma = hparams.get("gamma", 1.0)
  # Metrics sanitize their own inputs; for SLiC the (unused) references may be None.
  metrics = preference_metrics(pw, pl, rw if spec.uses_reference else ref_chosen_logps,
                               rl if spec.uses_reference else ref_rejected_logps,
                               metrics_gamma, w)
  metrics["loss"] = mean_loss
  metrics["loss/nonfinite_pairs"] = nonfinite
  return mean_loss, per_example, metrics


def check_pair_logps(policy_chosen_logps: Optional[ArrayLike] = None,
                     policy_rejected_logps: Optional[ArrayLike] = None,
                     ref_chosen_logps: Optional[ArrayLike] = None,
                     ref_rejected_logps: Optional[ArrayLike] = None, *,
                     weights: Optional[ArrayLike] = None, max_logp: float = 1e-3,
                     **other_logps: ArrayLike) -> None:
  """Host-side (NumPy) check of sequence log-probs; raises ValueError naming tensor and index.

  Checks, for examples with weight > 0: equal shapes, finiteness, and `logp ≤ max_logp`
  (a log-probability is ≤ 0: a positive value usually means a negative log-likelihood was
  passed). `other_logps` are checked the same way (e.g. `sft_logps=...`).
  """
  named = dict(policy_chosen_logps=policy_chosen_logps,
               policy_rejected_logps=policy_rejected_logps,
               ref_chosen_logps=ref_chosen_logps, ref_rejected_logps=ref_rejected_logps)
  named.update(other_logps)
  arrays = {k: np.asarray(v, np.float64) for k, v in named.items() if v is not None}
  shapes = {k: v.shape for k, v in arrays.items()}
  if len(set(shapes.values())) > 1:
    raise ValueError(f"log-prob arrays must share one shape [B], got {shapes}.")
  keep = None
  if weights is not None:
    keep = np.asarray(weights) > 0
    if arrays and keep.shape != next(iter(shapes.values())):
      raise ValueError(f"weights shape {keep.shape} != log-prob shape "
                       f"{next(iter(shapes.values()))}.")
  for name, x in arrays.items():
    active = np.ones(x.shape, bool) if keep is None else keep
    for bad, what in ((~np.isfinite(x), "non-finite values (NaN/inf)"),
                      (np.isfinite(x) & (x > max_logp),
                       f"positive values (> {max_logp}); a log-probability is <= 0, "
                       "was a negative log-likelihood passed?")):
      idx = np.argwhere(bad & active)
      if idx.size:
        where = [tuple(int(j) for j in i) if len(i) > 1 else int(i[0])
                 for i in idx[:_MAX_REPORTED]]
        vals = [float(x[tuple(i)]) for i in idx[:_MAX_REPORTED]]
        raise ValueError(f"{name} has {what} at example index {where} (values {vals}); "
                         f"{len(idx)} bad example(s) in total.")


def pair_token_flags(chosen_targets: ArrayLike, chosen_weights: ArrayLike,
                     rejected_targets: ArrayLike,
                     rejected_weights: ArrayLike) -> Dict[str, Array]:
  """Degenerate pairs from target tokens `[B, L]` (lengths may differ; jit-safe).

  Returns bool `[B]` masks: `identical` (same tokens at the same weighted positions: such a
  pair has Δ ≡ 0 and gives no signal), `empty_chosen`, `empty_rejected` (no weighted token).
  """
  ct, cw = jnp.asarray(chosen_targets), jnp.asarray(chosen_weights) > 0
  rt, rw = jnp.asarray(rejected_targets), jnp.asarray(rejected_weights) > 0
  if ct.shape != cw.shape or rt.shape != rw.shape or ct.shape[:-1] != rt.shape[:-1]:
    raise ValueError(f"targets/weights shapes must be [B, L]: chosen {ct.shape}/{cw.shape}, "
                     f"rejected {rt.shape}/{rw.shape}.")
  length = max(ct.shape[-1], rt.shape[-1])
  pad = lambda x, v: jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, length - x.shape[-1])],
                             constant_values=v)
  ct, cw, rt, rw = pad(ct, 0), pad(cw, False), pad(rt, 0), pad(rw, False)
  same = jnp.all((cw == rw) & (~cw | (ct == rt)), axis=-1)
  return {"identical": same, "empty_chosen": ~jnp.any(cw, -1),
          "empty_rejected": ~jnp.any(rw, -1)}


# ---------------------------------------------------------------------------
# Token-level cross-entropy and sequence log-probs (reused by the models).
# ---------------------------------------------------------------------------


def _logits_and_targets(logits: ArrayLike, targets: ArrayLike) -> Tuple[Array, Array]:
  """float32 logits `[B, L, V]` and targets `[B, L]`, their shapes checked."""
  logits = jnp.asarray(logits, jnp.float32)
  targets = jnp.asarray(targets)
  if logits.ndim != targets.ndim + 1 or logits.shape[:-1] != targets.shape:
    raise ValueError(f"logits must be [B, L, V] and targets [B, L], got {logits.shape} and "
                     f"{targets.shape}.")
  return logits, targets


def _token_logps(logits: ArrayLike, targets: ArrayLike) -> Tuple[Array, Array]:
  """float32 `(log_softmax(logits) [B, L, V], log Z [B, L])`."""
  logits, _ = _logits_and_targets(logits, targets)
  log_z = jax.nn.logsumexp(logits, axis=-1)
  return logits - log_z[..., None], log_z


def _gather(log_probs: Array, targets: Array) -> Array:
  return jnp.take_along_axis(log_probs, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]


def token_cross_entropy(logits: ArrayLike, targets: ArrayLike, weights: ArrayLike,
                        z_loss: float = 0.0,
                        label_smoothing: float = 0.0) -> Tuple[Array, Array]:
  """T5X-style weighted per-token cross-entropy with optional z-loss.

  Per token: `−Σ_v q_v log p_v − C + z_loss·(log Z)²`, with soft targets q (1−ε on the target,
  ε/(V−1) elsewhere), C their entropy term (T5X's normalizing constant, so the minimum is 0),
  computed in float32 without a one-hot `[B, L, V]`. Positions with weight ≤ 0 give 0.

  Args:
    logits: `[B, L, V]` decoder logits (any float dtype).
    targets: `[B, L]` int token ids.
    weights: `[B, L]` loss weights (0 = padding).
    z_loss: coefficient of `(log Z)²` (T5X default 1e-4 in its configs).
    label_smoothing: ε in [0, 1).

  Returns:
    `(loss [B, L], z_loss_term [B, L])`, both multiplied by `weights`; `loss` includes the
    z-loss term (as T5X's `compute_weighted_cross_entropy`).
  """
  if _is_concrete_number(label_smoothing) and not 0.0 <= label_smoothing < 1.0:
    raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing!r}.")
  if _is_concrete_number(z_loss) and not (math.isfinite(z_loss) and z_loss >= 0):
    raise ValueError(f"z_loss must be a finite number >= 0, got {z_loss!r}.")
  log_probs, log_z = _token_logps(logits, targets)
  w = jnp.asarray(weights, jnp.float32)
  if w.shape != log_z.shape:
    raise ValueError(f"weights shape {w.shape} != targets shape {log_z.shape}.")
  target_lp = _gather(log_probs, jnp.asarray(targets))
  if _is_concrete_number(label_smoothing) and label_smoothing == 0.0:
    loss = -target_lp
  else:
    vocab = log_probs.shape[-1]
    confidence = 1.0 - label_smoothing
    low = label_smoothing / (vocab - 1)
    const = -(confidence * jnp.log(confidence)
              + (vocab - 1) * low * jnp.log(low + 1e-20))
    loss = -(confidence - low) * target_lp - low * jnp.sum(log_probs, axis=-1) - const
  z_term = z_loss * jnp.square(log_z)
  keep = w > 0
  loss = jnp.where(keep, (loss + z_term) * w, 0.0)
  z_term = jnp.where(keep, z_term * w, 0.0)
  return loss, z_term


def sequence_logps(logits: ArrayLike, targets: ArrayLike, weights: ArrayLike) -> Array:
  """Sequence log-probs `[B]`: `Σ_t w_t·log_softmax(logits)[t, y_t]` in float32 (T = 1).

  This is the untempered log π(y|x) the losses read. Positions with weight ≤ 0 give 0 even if
  their logits are non-finite.
  """
  logits, targets = _logits_and_targets(logits, targets)
  w = jnp.asarray(weights, jnp.float32)
  if w.shape != targets.shape:
    raise ValueError(f"weights shape {w.shape} != targets shape {targets.shape}.")
  # logit of y_t - log Z_t: no [B, L, V] log-softmax buffer.
  lp = _gather(logits, targets) - jax.nn.logsumexp(logits, axis=-1)
  return jnp.sum(jnp.where(w > 0, lp * w, 0.0), axis=-1)
