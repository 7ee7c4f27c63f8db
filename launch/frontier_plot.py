"""The paper-table study's reward–KL frontier as a PNG (imported by `paper_table.py`, which puts
the repository and launch/ on sys.path; matplotlib is imported when a figure is drawn)."""

from __future__ import annotations

import io
from typing import Dict, List, Mapping, Optional

from rso_jax import fs
from study_design import BASELINES, FRONTIER_LOSS, SETTINGS  # pylint: disable=g-multiple-import
from study_report import mean_stderr

_COLORS = {"direct": "tab:blue", "sft_sample_rank": "tab:orange", "rso_sample_rank": "tab:green",
           "raft": "tab:red", "rest": "tab:purple"}
_MARKERS = {"sigmoid_norm": "o", "hinge": "s", "hinge_norm": "^", "sft": "D"}


def _draw_training(ax, paths: Mapping[tuple, List[List[tuple]]], sft: Optional[float]) -> None:
  """Mean r* vs KL along training, averaged over seeds per step, one line per (setting, loss),
  each from π_sft (KL 0) where its r* is known."""
  for (setting, loss), runs in sorted(paths.items()):
    steps = sorted({p[0] for run in runs for p in run})
    pts = []
    for st in steps:
      at = [p for run in runs for p in run if p[0] == st]
      pts.append((sum(p[1] for p in at) / len(at), sum(p[2] for p in at) / len(at)))
    if not pts:
      continue
    xs = ([0.0] if sft is not None else []) + [x for x, _ in pts]
    ys = ([sft] if sft is not None else []) + [y for _, y in pts]
    ax.plot(xs, ys, color=_COLORS.get(setting, "gray"), marker=_MARKERS.get(loss, "x"),
            label=setting if loss == "sft" else f"{setting} / {loss}")
  ax.set_xlabel("KL(π ‖ π_sft), nats")
  ax.set_ylabel("mean golden reward r* of the policy's samples")
  ax.set_title("along training (mean over seeds; first point: π_sft)", fontsize=10)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)


def _draw_gamma_sweep(ax, paths: Mapping[tuple, List[List[tuple]]],
                      curves: Mapping[str, Mapping[int, List[tuple]]],
                      rounds: Mapping[str, List[tuple]], sft: Optional[float]) -> None:
  """The last step over the γ sweep (mean ± SE over seeds per γ), the baselines' last step, and
  round 2's arrows from round 1 (seed means)."""
  if sft is not None:
    ax.plot([0.0], [sft], color="black", marker="*", linestyle="", label="π_sft")
  for setting in [s for s in SETTINGS if s in curves]:
    by_gamma: Dict[float, List[tuple]] = {}
    for pts in curves[setting].values():
      for g, kl, _, r in pts:
        by_gamma.setdefault(g, []).append((kl, r))
    rows = []
    for g, at in sorted(by_gamma.items()):
      kl_m, kl_se = mean_stderr([p[0] for p in at])
      r_m, r_se = mean_stderr([p[1] for p in at])
      rows.append((g, kl_m, kl_se or 0.0, r_m, r_se or 0.0))
    rows.sort(key=lambda row: row[1])
    ax.errorbar([r[1] for r in rows], [r[3] for r in rows], xerr=[r[2] for r in rows],
                yerr=[r[4] for r in rows], color=_COLORS[setting], marker="^", capsize=2,
                label=f"{setting} / {FRONTIER_LOSS}")
    for g, x, _, y, _ in rows:
      ax.annotate(f"γ={g:g}", (x, y), textcoords="offset points", xytext=(3, 3),
                  fontsize=6, color=_COLORS[setting])
  for (setting, _), runs in sorted(paths.items()):  # the baselines' last step, for reference
    last = [run[-1] for run in runs if run]
    if setting in BASELINES and last:
      ax.plot([sum(p[1] for p in last) / len(last)], [sum(p[2] for p in last) / len(last)],
              color=_COLORS.get(setting, "gray"), marker="D", linestyle="", label=setting)
  for i, (_, pts) in enumerate(sorted(rounds.items())):
    m = [sum(p[j] for p in pts) / len(pts) for j in range(4)]
    ax.annotate("", xy=(m[2], m[3]), xytext=(m[0], m[1]),
                arrowprops=dict(arrowstyle="->", color="black", lw=1.0))
    ax.plot([m[2]], [m[3]], color="black", marker="P", linestyle="",
            label="iterative RSO: round 2 (arrow from round 1)" if i == 0 else None)
  ax.set_xlabel("KL(π ‖ π_sft), nats")
  ax.set_title(f"over γ at the last step ({FRONTIER_LOSS}; mean ± SE over seeds)",
               fontsize=10)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)


def draw_frontier(paths: Mapping[tuple, List[List[tuple]]], out: str,
                  curves: Optional[Mapping[str, Mapping[int, List[tuple]]]] = None,
                  rounds: Optional[Mapping[str, List[tuple]]] = None) -> None:
  """Left: mean r* vs KL along training, averaged over seeds per step: {(setting, loss):
  [trajectory per seed]}. Right (with `curves`, `gamma_curves`'s): the same at the last step
  over the γ sweep, mean ± SE over seeds per γ, and the baselines' last step; `rounds`
  ({round-1 cell: [(KL, r*) of round 1 and of round 2, per seed]}): an arrow from round 1 to
  round 2 (seed means). A PNG at `out` (atomically)."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  fig = Figure(figsize=(13.0, 5.0) if curves else (7.0, 5.0), dpi=100)
  FigureCanvasAgg(fig)
  ax = fig.add_subplot(1, 2 if curves else 1, 1)
  # π_sft's mean r* (KL 0), over the seeds: every line starts there.
  sft_r = [p[3] for runs in paths.values() for run in runs for p in run if p[3] == p[3]]
  sft = sum(sft_r) / len(sft_r) if sft_r else None
  _draw_training(ax, paths, sft)
  if curves:
    _draw_gamma_sweep(fig.add_subplot(1, 2, 2, sharey=ax), paths, curves, rounds or {}, sft)
  fig.suptitle("reward–KL frontier")
  fig.tight_layout()
  buf = io.BytesIO()
  fig.savefig(buf, format="png")
  fs.atomic_write_bytes(out, buf.getvalue())
