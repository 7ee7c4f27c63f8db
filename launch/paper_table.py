"""The paper's Table 1 on one experiment, over seeds: one command, resumable, mean ± SE.

    python launch/paper_table.py                       # seeds 0 1 2, the embedded task
    python launch/paper_table.py --seeds 0 --dry_run   # print the runs, run nothing
    python launch/paper_table.py -- --gin.TRAIN_STEPS=100   # flags after -- go to every run

Cells: {direct, sft_sample_rank, rso_sample_rank} x {sigmoid_norm, hinge (Eq. 9), hinge_norm}
(the paper's Table 1) and the baselines RAFT and ReST (`--baselines`; SFT of π_sft on its best
candidate / on the candidates ReST's filter keeps: gin/raft.gin, gin/rest.gin), each
`python -m rso_jax.train` with gin overrides of one experiment (`--experiment`, default
gin/rso_hinge.gin; `direct` adds gin/direct.gin: the loss on D_hf itself). `--ablations` (names
of `ABLATIONS`, or `all`) adds the paper's ablations over the same seeds: the rso_sample_rank /
hinge_norm cell with one knob changed (β 0, 0.05, 5; γ 0.005, 0.5; tournament pairs;
single-pass rejection; proposal correction; best-of-N selection), reported in their own table
beside the unchanged cell. Seed s runs in `RUN_ROOT/seed<s>` with `RANDOM_SEED = s`, so the cells
of one seed share its SFT policy, its reward model and, per data setting, its samples (the
pipeline reuses finished stages); nothing is shared across seeds.

The frontier (`--gammas`, default 0.005 0.5 5): each data setting's hinge_norm cell again at each
γ (the γ ablations are these cells), so the settings are compared at equal KL: each seed's
curve of (KL, golden win rate / mean r*) over γ is interpolated at 1, 2, 4 and 8 nats.
Iterative RSO (`--round2`, default the rso hinge_norm cells at γ 0.05 and 0.5): round 2
(gin/iterative.gin) from that cell's policy, in `RUN_ROOT/seed<s>/round2-<cell>`, reported
beside its round 1 and drawn on the frontier as an arrow.

Resuming: a cell whose evaluation (`RUN_DIR/eval_<cell>.json`) and record
(`RUN_DIR/study_<cell>.json`: its command, with this checkout's gin files relative to it, and
its wall time) exist is reused when the command is the same, from any clone of the repository;
a finished cell of another command is refused (remove it, or use another
`--run_root`). An interrupted cell resumes where its stages stopped.

Every cell also evaluates each checkpoint its training kept (`EVAL_EVERY_CHECKPOINT`) and
selects one as the paper does: the best proxy win rate against the SFT targets (greedy) on
validation.

Output (`--out`, default benchmarks/results/paper_table.md, written atomically after every
cell): win rates vs the SFT targets and vs π_sft (proxy / golden, %) and KL(π‖π_sft) in nats,
each the mean ± standard error over the seeds that finished, at the last step and at the
selected checkpoint; the reward model's accuracy vs r* on π_sft's own samples per seed (the
reward stage's `reward_quality.json`); wall time; the command. The decoding whose win rates are
shown is `--decoding` (greedy or sample). Beside it (`--frontier`, default
benchmarks/results/frontier.png): mean r* of the policy's samples against KL(π‖π_sft) at every
evaluated checkpoint, averaged over seeds, one line per data setting and loss from π_sft (KL 0)
on -- the methods compared along their path, not at one point -- and, with the sweep, a second
panel: the last step over γ per setting, with round 2's arrows.

Exit status: 0 every cell finished (or was printed), 2 a refused configuration (one line),
else the first failing cell's status (the cells after it are not started).
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import math
import os
import shlex
import statistics
import subprocess
import sys
import time
from typing import Dict, List, Mapping, Optional, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for _path in (REPO, os.path.join(REPO, "launch")):  # rso_jax.fs and launch/sweep.py, from anywhere
  if _path not in sys.path:
    sys.path.insert(0, _path)
from rso_jax import fs  # pylint: disable=g-import-not-at-top,wrong-import-position
from rso_jax import pipeline  # pylint: disable=g-import-not-at-top,wrong-import-position
import sweep  # pylint: disable=g-import-not-at-top,wrong-import-position

SETTINGS = ("direct", "sft_sample_rank", "rso_sample_rank")
LOSSES = ("sigmoid_norm", "hinge", "hinge_norm")
BASELINES = ("raft", "rest")  # SFT on selected samples: no preference loss (loss "sft")
_ADDED_GIN = {"direct": "direct.gin", "raft": "raft.gin", "rest": "rest.gin"}
_SAMPLE = "--gin.sample.sample_configured."
# name: (DATA_SETTING, gin overrides) -- the rso_sample_rank / hinge_norm cell, one knob changed.
ABLATIONS = {
    "beta0": ("rso_sample_rank", (_SAMPLE + "beta=0.0",)),  # = top-k over N
    "beta0.05": ("rso_sample_rank", (_SAMPLE + "beta=0.05",)),
    "beta5": ("rso_sample_rank", (_SAMPLE + "beta=5.0",)),
    "gamma0.005": ("rso_sample_rank", ("--gin.GAMMA=0.005",)),
    "gamma0.5": ("rso_sample_rank", ("--gin.GAMMA=0.5",)),
    "tournament": ("rso_sample_rank", (_SAMPLE + "pair_method='tournament'",)),
    "single_pass": ("rso_sample_rank", (_SAMPLE + "rejection_mode='single_pass'",)),
    "proposal_correction": ("rso_sample_rank", (_SAMPLE + "proposal_correction=True",)),
    "best_of_n": ("best_of_n", ()),  # 8 independent best-of-8 draws, then first-round pairs
}
ABLATED = ("rso_sample_rank", "hinge_norm")  # the cell the ablations change
FRONTIER_LOSS = ABLATED[1]
# The frontier's sweep (`--gammas`): every data setting's hinge_norm cell at these γ besides the
# experiment's own (0.05): a decade grid that holds the paper's γ ablations (0.005, 0.5).
GAMMAS = (0.005, 0.5, 5.0)
KL_BUDGETS = (1.0, 2.0, 4.0, 8.0)  # nats: where the settings are compared at equal KL
# Iterative RSO (`--round2`, gin/iterative.gin): round 2 from these round-1 cells of each seed,
# the experiment's γ and the paper's other γ ablation (where the study has them).
ROUND2 = ("rso_sample_rank-hinge_norm", "rso_sample_rank-hinge_norm-gamma0.5")
DECODINGS = ("greedy", "sample")
# Keys of the evaluation's results[decoding]; fractions, shown in %.
WIN_RATES = ("vs_sft_targets/proxy", "vs_sft_targets/golden", "vs_sft/proxy", "vs_sft/golden")


class StudyError(ValueError):
  """A configuration the study refuses (exit status 2, one line)."""


@dataclasses.dataclass(frozen=True)
class Cell:
  """One table entry for one seed (`ablation`: a name of `ABLATIONS` or a point of the γ sweep,
  `gamma_name(γ)`; else ""). `round2`: iterative RSO's second round from this cell's policy
  (gin/iterative.gin, in its own run directory; evaluated against the original π_sft)."""
  setting: str
  loss: str
  seed: int
  ablation: str = ""
  round2: bool = False

  @property
  def name(self) -> str:
    if self.round2:
      return "round2-" + self.round1.name
    if self.setting in BASELINES:
      return self.setting
    if self.ablation and self.ablation != self.setting:  # best_of_n is a data setting
      return f"{self.setting}-{self.loss}-{self.ablation}"
    return f"{self.setting}-{self.loss}"

  @property
  def round1(self) -> "Cell":
    """The cell itself as round 1 (the cell whose policy round 2 starts from)."""
    return dataclasses.replace(self, round2=False)

  @property
  def gamma(self) -> Optional[float]:
    """The γ this cell overrides (a γ ablation or a point of the sweep), else None."""
    return float(self.ablation[len("gamma"):]) if self.ablation.startswith("gamma") else None

  def run_dir(self, run_root: str) -> str:
    seed_dir = fs.join(fs.abspath(run_root), f"seed{self.seed}")
    return fs.join(seed_dir, self.name) if self.round2 else seed_dir

  def argv(self, run_root: str, experiment: str, extra: Sequence[str] = ()) -> List[str]:
    """The cell's command: `python -m rso_jax.train` with the cell's overrides, then `extra`."""
    gin_files = [experiment]
    if self.setting in _ADDED_GIN:
      gin_files.append(os.path.join(REPO, "gin", _ADDED_GIN[self.setting]))
    if self.round2:
      gin_files.append(os.path.join(REPO, "gin", "iterative.gin"))
    out = [sys.executable, "-m", "rso_jax.train", *(f"--gin_file={f}" for f in gin_files),
           f"--gin.RUN_DIR={json.dumps(self.run_dir(run_root))}",
           f"--gin.RANDOM_SEED={self.seed}", "--gin.EVAL_EVERY_CHECKPOINT=True"]
    if self.setting not in BASELINES:
      out.append(f"--gin.LOSS={json.dumps(self.loss)}")
    out.append(f"--gin.POLICY_NAME={json.dumps(self.name)}")
    if self.setting not in _ADDED_GIN:
      out.append(f"--gin.DATA_SETTING={json.dumps(self.setting)}")
    if self.ablation in ABLATIONS:
      out += ABLATIONS[self.ablation][1]
    elif self.gamma is not None:
      out.append(f"--gin.GAMMA={self.gamma!r}")
    if self.round2:
      out += [f"--gin.ROUND1_DIR={json.dumps(self.round1.run_dir(run_root))}",
              f"--gin.ROUND1_POLICY_NAME={json.dumps(self.round1.name)}"]
    return out + list(extra)

  def eval_path(self, run_root: str) -> str:
    return fs.join(self.run_dir(run_root), f"eval_{self.name}.json")

  def record_path(self, run_root: str) -> str:
    return fs.join(self.run_dir(run_root), f"study_{self.name}.json")

  def checkpoints_path(self, run_root: str) -> str:
    """EvaluateStage's every-checkpoint record (`selected_step`, `steps`)."""
    return fs.join(self.run_dir(run_root), f"eval_{self.name}_checkpoints.json")


def gamma_name(gamma: float) -> str:
  """The ablation name of a point of the γ sweep: 0.5 -> 'gamma0.5' (as in `ABLATIONS`)."""
  return f"gamma{float(gamma):g}"


def cells(seeds: Sequence[int], settings: Sequence[str] = SETTINGS,
          losses: Sequence[str] = LOSSES, baselines: Sequence[str] = BASELINES,
          ablations: Sequence[str] = (), gammas: Sequence[float] = (),
          round2: Optional[Sequence[str]] = ()) -> List[Cell]:
  """Seed-major (a seed's SFT and reward model are built by its first cell), then setting, loss;
  a seed's baselines, then its γ sweep (each setting's FRONTIER_LOSS cell at each of `gammas`),
  then its ablations, after its table cells. A γ ablation of the sweep's γ is the sweep's cell.
  Last, a seed's round-2 cells from the round-1 cells named in `round2` (None: those of `ROUND2`
  the study has)."""
  if list(ablations) == ["all"]:
    ablations = list(ABLATIONS)
  if any(not (g > 0 and math.isfinite(g)) for g in gammas) or len(set(gammas)) != len(gammas):
    raise StudyError(f"--gammas={list(gammas)}: give distinct positive numbers")
  for flag, values, known, empty_ok in (("--settings", settings, SETTINGS, False),
                                        ("--losses", losses, LOSSES, False),
                                        ("--baselines", baselines, BASELINES, True),
                                        ("--ablations", ablations, ABLATIONS, True)):
    bad = [v for v in values if v not in known]
    if bad or not (values or empty_ok) or len(set(values)) != len(values):
      raise StudyError(f"{flag}={list(values)}: choose from {list(known)}")
  if not seeds or len(set(seeds)) != len(seeds) or any(s < 0 for s in seeds):
    raise StudyError(f"--seeds={list(seeds)}: give distinct non-negative integers")
  out = []
  for s in seeds:
    round1 = list(dict.fromkeys(
        [Cell(st, l, s) for st in settings for l in losses]
        + [Cell(b, "sft", s) for b in baselines]
        + [Cell(st, FRONTIER_LOSS, s, gamma_name(g)) for st in settings for g in gammas]
        + [Cell(ABLATIONS[a][0], ABLATED[1], s, a) for a in ablations]))
    by_name = {c.name: c for c in round1}
    names = [n for n in ROUND2 if n in by_name] if round2 is None else list(round2)
    sampled = [n for n, c in by_name.items() if c.setting not in ("direct", *BASELINES)]
    if any(n not in sampled for n in names) or len(set(names)) != len(names):
      raise StudyError(f"--round2={names}: choose distinct sampled cells of this study from "
                       f"{sampled}")
    out += round1 + [dataclasses.replace(by_name[n], round2=True) for n in names]
  return out


def _portable(argv: Sequence[str]) -> List[str]:
  """The command as recorded: without the interpreter, and with the gin files of this checkout
  relative to it, so that a study resumes from another clone or path of the repository."""
  flag, root = "--gin_file=", REPO + os.sep
  return [flag + a[len(flag) + len(root):] if a.startswith(flag + root) else a
          for a in argv[1:]]


def finished(cell: Cell, run_root: str, argv: Sequence[str]) -> Optional[dict]:
  """The cell's record if it finished with this command, None if it has not finished.

  Raises `StudyError` for a finished cell of another command (a leftover that would otherwise
  be reported under this configuration).
  """
  if not fs.exists(cell.eval_path(run_root)):
    return None
  rec_path = cell.record_path(run_root)
  record = json.loads(fs.read_text(rec_path)) if fs.exists(rec_path) else None
  if record is None or record.get("argv") != _portable(argv):
    had = "no record of its command" if record is None else f"command {record.get('argv')}"
    raise StudyError(f"cell {cell.name!r} seed {cell.seed}: {cell.eval_path(run_root)} exists "
                     f"with {had}, not this study's {_portable(argv)}; remove "
                     f"{cell.run_dir(run_root)} or use another --run_root")
  return record


def mean_stderr(values: Sequence[float]) -> tuple:
  """(mean, standard error of the mean = sample std / sqrt(n)); SE is None for n < 2."""
  if not values:
    return None, None
  if len(values) < 2:
    return statistics.fmean(values), None
  return statistics.fmean(values), statistics.stdev(values) / math.sqrt(len(values))


def _fmt(mean: Optional[float], se: Optional[float], scale: float = 1.0, digits: int = 1) -> str:
  if mean is None:
    return "—"
  s = f"{mean * scale:.{digits}f}"
  return s + (f" ± {se * scale:.{digits}f}" if se is not None else "")


def cell_values(evaluation: Mapping, decoding: str,
                by_step: Optional[Mapping] = None) -> Dict[str, float]:
  """The table's numbers of one finished cell: the WIN_RATES keys, `kl/mean`, the mean r* of
  its samples (`golden/policy`) and π_sft's (`golden/sft`, `sft_vs_sft_targets/golden`) at its
  last step; with its every-checkpoint record (`by_step`), the same of the selected checkpoint
  (`selected/` + key, and `selected/step`)."""

  def numbers(ev):
    res = ev.get("results", {}).get(decoding)
    if res is None:
      raise StudyError(f"evaluation {ev.get('name')!r} has no {decoding!r} results "
                       f"(it has {sorted(ev.get('results', {}))})")
    out = {k: float(res[k]) for k in WIN_RATES if res.get(k) is not None}
    if ev.get("kl/mean") is not None:
      out["kl/mean"] = float(ev["kl/mean"])
    sample = ev.get("results", {}).get("sample", {})
    if sample.get("golden/policy") is not None:  # the frontier's y: mean r* of its samples
      out["golden/policy"] = float(sample["golden/policy"])
    if sample.get("golden/sft") is not None:  # π_sft's, on the frontier at KL 0
      out["golden/sft"] = float(sample["golden/sft"])
    if res.get("sft_vs_sft_targets/golden") is not None:
      out["sft_vs_sft_targets/golden"] = float(res["sft_vs_sft_targets/golden"])
    return out

  out = numbers(evaluation)
  step = (by_step or {}).get("selected_step")
  if step is not None:
    out.update({f"selected/{k}": v for k, v in numbers(by_step["steps"][str(step)]).items()})
    out["selected/step"] = float(step)
  return out


def trajectory(by_step: Mapping) -> List[tuple]:
  """[(step, KL, mean r* of the policy's samples, the same of π_sft)] of every evaluated
  checkpoint, by step (an evaluation without the golden reward is left out)."""
  out = []
  for step, ev in sorted(by_step.get("steps", {}).items(), key=lambda kv: int(kv[0])):
    res = ev.get("results", {}).get("sample", {})
    if ev.get("kl/mean") is not None and res.get("golden/policy") is not None:
      out.append((int(step), float(ev["kl/mean"]), float(res["golden/policy"]),
                  float(res.get("golden/sft", float("nan")))))
  return out


def cell_gamma(cell: Cell, run_root: str) -> Optional[float]:
  """The γ the cell's policy trained with: its override, else the `GAMMA` of the operative gin
  config its training wrote (`RUN_DIR/<name>/config.gin`); None where neither says."""
  if cell.gamma is not None:
    return cell.gamma
  path = fs.join(cell.run_dir(run_root), cell.name, "config.gin")
  if fs.exists(path):
    for line in fs.read_text(path).splitlines():
      if line.startswith("GAMMA = "):
        try:
          return float(line[len("GAMMA = "):])
        except ValueError:
          return None
  return None


def gamma_curves(results: Mapping[Cell, Dict[str, float]],
                 gammas: Mapping[Cell, Optional[float]]) -> Dict[str, Dict[int, List[tuple]]]:
  """The γ sweep's points at the last step: {setting: {seed: [(γ, KL, golden win rate vs the SFT
  targets, mean r*)] by γ}} over the FRONTIER_LOSS cells of SETTINGS whose γ is known (the
  unchanged cell and the sweep's; other ablations are left out)."""
  out: Dict[str, Dict[int, List[tuple]]] = {}
  for c, v in results.items():
    g = gammas.get(c)
    if (c.setting in SETTINGS and c.loss == FRONTIER_LOSS and g is not None and not c.round2
        and (not c.ablation or c.gamma is not None) and "kl/mean" in v):
      out.setdefault(c.setting, {}).setdefault(c.seed, []).append(
          (g, v["kl/mean"], v.get("vs_sft_targets/golden", float("nan")),
           v.get("golden/policy", float("nan"))))
  for by_seed in out.values():
    for pts in by_seed.values():
      pts.sort()
  return out


def swept(curves: Mapping[str, Mapping[int, List[tuple]]]) -> bool:
  """Whether `gamma_curves` holds a curve: some setting at two γ or more."""
  return any(len({p[0] for pts in by_seed.values() for p in pts}) > 1
             for by_seed in curves.values())


def at_kl(points: Sequence[tuple], kl: float) -> Optional[float]:
  """y at `kl` on the piecewise-linear curve through [(KL, y)] taken in order of KL; None
  outside the KL the points span (no extrapolation) or with fewer than two points."""
  pts = sorted(points)
  if len(pts) < 2 or not pts[0][0] <= kl <= pts[-1][0]:
    return None
  for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
    if x0 <= kl <= x1:
      return y0 if x1 == x0 else y0 + (y1 - y0) * (kl - x0) / (x1 - x0)
  return None


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
  colors = {"direct": "tab:blue", "sft_sample_rank": "tab:orange", "rso_sample_rank": "tab:green",
            "raft": "tab:red", "rest": "tab:purple"}
  markers = {"sigmoid_norm": "o", "hinge": "s", "hinge_norm": "^", "sft": "D"}
  # π_sft's mean r* (KL 0), over the seeds: every line starts there.
  sft_r = [p[3] for runs in paths.values() for run in runs for p in run if p[3] == p[3]]
  sft = sum(sft_r) / len(sft_r) if sft_r else None
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
    ax.plot(xs, ys, color=colors.get(setting, "gray"), marker=markers.get(loss, "x"),
            label=setting if loss == "sft" else f"{setting} / {loss}")
  ax.set_xlabel("KL(π ‖ π_sft), nats")
  ax.set_ylabel("mean golden reward r* of the policy's samples")
  ax.set_title("along training (mean over seeds; first point: π_sft)", fontsize=10)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)
  if curves:
    right = fig.add_subplot(1, 2, 2, sharey=ax)
    if sft is not None:
      right.plot([0.0], [sft], color="black", marker="*", linestyle="", label="π_sft")
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
      right.errorbar([r[1] for r in rows], [r[3] for r in rows], xerr=[r[2] for r in rows],
                     yerr=[r[4] for r in rows], color=colors[setting], marker="^", capsize=2,
                     label=f"{setting} / {FRONTIER_LOSS}")
      for g, x, _, y, _ in rows:
        right.annotate(f"γ={g:g}", (x, y), textcoords="offset points", xytext=(3, 3),
                       fontsize=6, color=colors[setting])
    for (setting, _), runs in sorted(paths.items()):  # the baselines' last step, for reference
      last = [run[-1] for run in runs if run]
      if setting in BASELINES and last:
        right.plot([sum(p[1] for p in last) / len(last)], [sum(p[2] for p in last) / len(last)],
                   color=colors.get(setting, "gray"), marker="D", linestyle="", label=setting)
    for i, (name, pts) in enumerate(sorted((rounds or {}).items())):
      m = [sum(p[j] for p in pts) / len(pts) for j in range(4)]
      right.annotate("", xy=(m[2], m[3]), xytext=(m[0], m[1]),
                     arrowprops=dict(arrowstyle="->", color="black", lw=1.0))
      right.plot([m[2]], [m[3]], color="black", marker="P", linestyle="",
                 label="iterative RSO: round 2 (arrow from round 1)" if i == 0 else None)
    right.set_xlabel("KL(π ‖ π_sft), nats")
    right.set_title(f"over γ at the last step ({FRONTIER_LOSS}; mean ± SE over seeds)",
                    fontsize=10)
    right.grid(alpha=0.3)
    right.legend(fontsize=7)
  fig.suptitle("reward–KL frontier")
  fig.tight_layout()
  buf = io.BytesIO()
  fig.savefig(buf, format="png")
  fs.atomic_write_bytes(out, buf.getvalue())


def reward_quality(run_dir: str) -> Optional[dict]:
  """The reward stage's record on π_sft's samples (`reward_*/reward_quality.json`), if any."""
  if not fs.isdir(run_dir):
    return None
  for entry in sorted(fs.listdir(run_dir)):
    path = fs.join(run_dir, entry, pipeline.REWARD_QUALITY)
    if entry.startswith("reward") and fs.exists(path):
      m = json.loads(fs.read_text(path))["metrics"]
      return {"model": entry, "accuracy": m.get("sft_samples/accuracy_golden"),
              "spearman": m.get("sft_samples/within_prompt_spearman"),
              "dhf_accuracy": m.get("accuracy_golden")}
  return None


def table_markdown(all_cells: Sequence[Cell], results: Mapping[Cell, Dict[str, float]],
                   records: Mapping[Cell, dict], quality: Mapping[int, Optional[dict]], *,
                   decoding: str, command: str, settings: Sequence[str] = SETTINGS,
                   losses: Sequence[str] = LOSSES, ablations: Optional[Sequence[str]] = None,
                   gammas: Optional[Mapping[Cell, Optional[float]]] = None,
                   round2_quality: Optional[Mapping[Cell, Optional[dict]]] = None) -> str:
  """The study's report: tables in the paper's layout (rows: loss, columns: data setting); the
  ablations' table (`ablations`: the names asked for; default: every ablation with a cell); the
  frontier over γ and the settings at equal KL (with `gammas`, `cell_gamma` per cell); round 2
  beside its round 1 (`round2_quality`: the refreshed reward model's `reward_quality` per
  round-2 cell)."""
  seeds = sorted({c.seed for c in all_cells})
  done = [c for c in all_cells if c in results]
  wall = sum(float(records[c].get("wall_seconds", 0.0)) for c in done if c in records)
  if ablations is None:
    ablations = [a for a in ABLATIONS if any(c.ablation == a for c in all_cells)]
  ablations = [a for a in ABLATIONS if a in ablations]
  title = "RSO paper table (Table 1 layout)" + (" and ablations" if ablations else "")
  lines = [f"# {title} on this repository's pipeline", "",
           f"- command: `{command}`",
           f"- seeds: {seeds}; cells finished: {len(done)}/{len(all_cells)}; wall time of the "
           f"finished cells: {wall / 60:.1f} min (stages shared within a seed are counted once, "
           "in the cell that built them)",
           f"- decoding of the win rates: {decoding}; entries: mean ± standard error over the "
           "seeds that finished (n in the last table)", "- reward model on π_sft's own samples "
           "(accuracy vs r* on pairs of one prompt's samples; within-prompt Spearman; held-out "
           "D_hf accuracy):"]
  for s in seeds:
    q = quality.get(s)
    lines.append(f"  - seed {s}: " + ("not measured" if q is None else
                 f"{q['model']}: accuracy {_fmt(q['accuracy'], None, 1, 3)}, Spearman "
                 f"{_fmt(q['spearman'], None, 1, 3)}, D_hf {_fmt(q['dhf_accuracy'], None, 1, 3)}"))

  def values(setting, loss, key, ablation=""):
    return [results[c][key] for c in done if c.setting == setting and c.loss == loss
            and c.ablation == ablation and not c.round2 and key in results[c]]

  def block(title, keys, scale, digits):
    head = "| loss | " + " | ".join(settings) + " |"
    out = ["", f"## {title}", "", head, "|---" * (len(settings) + 1) + "|"]
    for loss in losses:
      row = [" / ".join(_fmt(*mean_stderr(values(st, loss, k)), scale, digits) for k in keys)
             for st in settings]
      out.append(f"| {loss} | " + " | ".join(row) + " |")
    return out

  lines += block("Win rate vs the SFT targets, % (proxy / golden)",
                 ("vs_sft_targets/proxy", "vs_sft_targets/golden"), 100.0, 1)
  lines += block("Win rate vs π_sft, % (proxy / golden)", ("vs_sft/proxy", "vs_sft/golden"),
                 100.0, 1)
  lines += block("KL(π ‖ π_sft), nats", ("kl/mean",), 1.0, 2)
  lines += block("At the selected checkpoint (best proxy win rate vs the SFT targets on "
                 "validation): win rate vs the SFT targets, % (proxy / golden)",
                 ("selected/vs_sft_targets/proxy", "selected/vs_sft_targets/golden"), 100.0, 1)
  lines += block("At the selected checkpoint: KL(π ‖ π_sft), nats", ("selected/kl/mean",),
                 1.0, 2)
  lines += block("The selected step", ("selected/step",), 1.0, 0)
  baselines = [b for b in BASELINES if any(c.setting == b for c in all_cells)]
  summary_head = ("vs SFT targets, % (proxy / golden) | vs π_sft, % (proxy / golden) | KL, nats "
                  "| selected checkpoint: vs SFT targets, % | seeds |")

  def summary(setting, loss, ablation=""):
    """One row's cells under `summary_head`: one cell, mean ± SE over its seeds."""
    pct = lambda keys: " / ".join(_fmt(*mean_stderr(values(setting, loss, k, ablation)),
                                       100.0, 1) for k in keys)
    n = len([c for c in done if (c.setting, c.loss, c.ablation, c.round2)
             == (setting, loss, ablation, False)])
    return (f"{pct(('vs_sft_targets/proxy', 'vs_sft_targets/golden'))} | "
            f"{pct(('vs_sft/proxy', 'vs_sft/golden'))} | "
            f"{_fmt(*mean_stderr(values(setting, loss, 'kl/mean', ablation)), 1.0, 2)} | "
            f"{pct(('selected/vs_sft_targets/proxy', 'selected/vs_sft_targets/golden'))} | {n} |")

  if baselines:
    lines += ["", "## Baselines (SFT of π_sft on selected samples; same columns as above)", "",
              "| baseline | " + summary_head, "|---|---|---|---|---|---|"]
    lines += [f"| {b} | " + summary(b, "sft") for b in baselines]
  if ablations:
    lines += ["", f"## Ablations ({ABLATED[0]} / {ABLATED[1]}, one knob changed; the first row "
              "is the unchanged cell)", "",
              "| ablation | overrides | " + summary_head, "|---|---|---|---|---|---|---|"]
    for a in [""] + ablations:
      setting = ABLATIONS[a][0] if a else ABLATED[0]
      what = ("" if not a else
              " ".join(o.replace(_SAMPLE, "").replace("--gin.", "") for o in ABLATIONS[a][1])
              or f"DATA_SETTING={setting}")
      lines.append(f"| {a or '(none)'} | {f'`{what}`' if what else '—'} | "
                   + summary(setting, ABLATED[1], a))
  curves = gamma_curves(results, gammas or {})
  if swept(curves):
    sft = {c.seed: (results[c]["sft_vs_sft_targets/golden"], results[c]["golden/sft"])
           for c in done if not c.round2
           and {"sft_vs_sft_targets/golden", "golden/sft"} <= set(results[c])}
    lines += frontier_markdown(curves, sft=sft)
  round1 = _ordered(c.round1.name for c in all_cells if c.round2)
  if round1:
    lines += ["", "## Iterative RSO: round 2 from a round-1 cell (gin/iterative.gin; KL and win "
              "rates against the original π_sft and its SFT targets)", "",
              "| round 1 | round 1: KL, nats / golden win vs SFT targets, % / mean r* | round 2: "
              "the same | round 1's frontier over γ at round 2's KL: golden win, % / mean r* | "
              "round 2: proxy win vs SFT targets, % | refreshed reward model: accuracy vs r* on "
              "the round-1 policy's samples | seeds |", "|---|---|---|---|---|---|---|"]
    for name in round1:
      two = [c for c in done if c.round2 and c.round1.name == name]
      one = [c.round1 for c in two if c.round1 in results]

      def triple(cs):
        get = lambda k: mean_stderr([results[c][k] for c in cs if k in results[c]])
        return (f"{_fmt(*get('kl/mean'), 1.0, 2)} / {_fmt(*get('vs_sft_targets/golden'), 100.0, 1)}"
                f" / {_fmt(*get('golden/policy'), 1.0, 3)}")
      acc = [q["accuracy"] for q in ((round2_quality or {}).get(c) for c in two)
             if q and q.get("accuracy") is not None]
      proxy = mean_stderr([results[c]["vs_sft_targets/proxy"] for c in two
                           if "vs_sft_targets/proxy" in results[c]])
      wins, rs = [], []  # the same seed's round-1 γ curve where round 2 ended
      for c in two:
        pts = curves.get(c.setting, {}).get(c.seed, [])
        win = at_kl([(p[1], p[2]) for p in pts], results[c].get("kl/mean", math.nan))
        if win is not None:
          wins.append(win)
          rs.append(at_kl([(p[1], p[3]) for p in pts], results[c]["kl/mean"]))
      frontier = ("—" if not wins else f"{_fmt(*mean_stderr(wins), 100.0, 1)} / "
                  f"{_fmt(*mean_stderr(rs), 1.0, 3)} ({len(wins)})")
      lines.append(f"| {name} | {triple(one)} | {triple(two)} | {frontier} | "
                   f"{_fmt(*proxy, 100.0, 1)} | {_fmt(*mean_stderr(acc), 1.0, 3)} | {len(two)} |")
  lines += ["", "## Seeds per cell", "", "| loss | " + " | ".join(settings) + " |",
            "|---" * (len(settings) + 1) + "|"]
  for loss in losses:
    lines.append(f"| {loss} | " + " | ".join(
        str(len([c for c in done if c.setting == st and c.loss == loss and not c.ablation
                 and not c.round2]))
        for st in settings) + " |")
  return "\n".join(lines) + "\n"


def frontier_markdown(curves: Mapping[str, Mapping[int, List[tuple]]],
                      budgets: Sequence[float] = KL_BUDGETS,
                      sft: Optional[Mapping[int, tuple]] = None) -> List[str]:
  """The frontier's tables from `gamma_curves`: each setting at each γ, and the settings at
  equal KL (each seed's γ curve interpolated at each budget, then mean ± SE over the seeds
  whose curve spans it). `sft`: π_sft's (golden win rate vs the SFT targets, mean r*) per seed,
  the first row (KL 0)."""
  settings = [s for s in SETTINGS if s in curves]
  lines = ["", f"## The frontier over γ ({FRONTIER_LOSS}, last step; mean ± SE over seeds)", "",
           "| setting | γ | KL, nats | golden win rate vs the SFT targets, % | mean r* of "
           "samples | seeds |", "|---|---|---|---|---|---|"]
  if sft:
    win, r_star = ([v[i] for v in sft.values()] for i in (0, 1))
    lines.append(f"| π_sft | — | 0 | {_fmt(*mean_stderr(win), 100.0, 1)} | "
                 f"{_fmt(*mean_stderr(r_star), 1.0, 3)} | {len(sft)} |")
  for setting in settings:
    by_gamma: Dict[float, List[tuple]] = {}
    for pts in curves[setting].values():
      for g, kl, win, r in pts:
        by_gamma.setdefault(g, []).append((kl, win, r))
    for g, at in sorted(by_gamma.items()):
      lines.append(f"| {setting} | {g:g} | {_fmt(*mean_stderr([p[0] for p in at]), 1.0, 2)} | "
                   f"{_fmt(*mean_stderr([p[1] for p in at]), 100.0, 1)} | "
                   f"{_fmt(*mean_stderr([p[2] for p in at]), 1.0, 3)} | {len(at)} |")
  lines += ["", "## At equal KL: golden win rate vs the SFT targets, % / mean r* (each seed's γ "
            "curve interpolated at the KL; mean ± SE over the seeds whose curve spans it, their "
            "number in brackets; — where none does)", "",
            "| KL, nats | " + " | ".join(settings) + " |", "|---" * (len(settings) + 1) + "|"]
  for kl in budgets:
    row = []
    for setting in settings:
      wins, rs = [], []
      for pts in curves[setting].values():
        win = at_kl([(p[1], p[2]) for p in pts], kl)
        if win is not None:
          wins.append(win)
          rs.append(at_kl([(p[1], p[3]) for p in pts], kl))
      row.append("—" if not wins else f"{_fmt(*mean_stderr(wins), 100.0, 1)} / "
                 f"{_fmt(*mean_stderr(rs), 1.0, 3)} ({len(wins)})")
    lines.append(f"| {kl:g} | " + " | ".join(row) + " |")
  return lines


def _ordered(values) -> tuple:
  return tuple(dict.fromkeys(values))


def run_study(all_cells: Sequence[Cell], run_root: str, experiment: str, extra: Sequence[str],
              out: str, decoding: str, command: str, dry_run: bool = False,
              runner=subprocess.run, frontier: Optional[str] = None,
              ablations: Optional[Sequence[str]] = None) -> int:
  """Runs the cells not finished yet, one after another; rewrites `out` (and the `frontier`
  PNG) after each. `ablations`: the names asked for (see `table_markdown`)."""
  results, records, paths, gammas = {}, {}, {}, {}

  def report():
    quality = {s: reward_quality(fs.join(fs.abspath(run_root), f"seed{s}"))
               for s in sorted({c.seed for c in all_cells})}
    fs.makedirs(os.path.dirname(os.path.abspath(out)))
    fs.atomic_write_text(out, table_markdown(
        all_cells, results, records, quality, decoding=decoding, command=command,
        settings=_ordered(c.setting for c in all_cells
                          if c.setting not in BASELINES and not c.ablation and not c.round2),
        losses=_ordered(c.loss for c in all_cells
                        if c.setting not in BASELINES and not c.ablation and not c.round2),
        ablations=ablations, gammas=gammas,
        round2_quality={c: reward_quality(c.run_dir(run_root)) for c in results if c.round2}))
    lines = {}
    for c, path in paths.items():  # the frontier: the table's cells and the baselines
      if not c.ablation and not c.round2:
        lines.setdefault((c.setting, c.loss), []).append(path)
    curves = gamma_curves(results, gammas)
    rounds = {}  # round 1 -> round 2 on the frontier: (KL, mean r*) of both, per seed
    for c in results:
      one, two = results.get(c.round1, {}), results[c]
      if c.round2 and all(k in d for d in (one, two) for k in ("kl/mean", "golden/policy")):
        rounds.setdefault(c.round1.name, []).append(
            (one["kl/mean"], one["golden/policy"], two["kl/mean"], two["golden/policy"]))
    if frontier and any(lines.values()):
      draw_frontier(lines, frontier, curves if swept(curves) else None, rounds)

  for i, cell in enumerate(all_cells, 1):
    argv = cell.argv(run_root, experiment, extra)
    tag = f"[{i}/{len(all_cells)}] {cell.name} seed {cell.seed}"
    record = finished(cell, run_root, argv)
    if record is None:
      print(f"{tag}: {shlex.join(argv)}", flush=True)
      if dry_run:
        continue
      start = time.time()
      rc = runner(argv).returncode
      if rc:
        print(f"paper_table: {tag} failed with exit status {rc}; rerun the same command to "
              "continue (finished cells are reused)", file=sys.stderr)
        if results:
          report()
        return rc
      record = {"argv": _portable(argv), "wall_seconds": round(time.time() - start, 1)}
      fs.atomic_write_text(cell.record_path(run_root), json.dumps(record, indent=2) + "\n")
    else:
      print(f"{tag}: finished ({record['wall_seconds']:.0f} s), reused", flush=True)
    records[cell] = record
    cp = cell.checkpoints_path(run_root)
    by_step = json.loads(fs.read_text(cp)) if fs.exists(cp) else None
    results[cell] = cell_values(json.loads(fs.read_text(cell.eval_path(run_root))), decoding,
                                by_step)
    paths[cell] = trajectory(by_step) if by_step else []
    gammas[cell] = cell_gamma(cell, run_root)
    if not dry_run:
      report()
  if not dry_run:
    print(f"paper_table: {out}", flush=True)
  return 0


def main(argv: Sequence[str] | None = None) -> int:
  argv, extra = sweep.split_extra(argv)
  p = argparse.ArgumentParser(prog="python launch/paper_table.py",
                              description=__doc__.splitlines()[0])
  p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  p.add_argument("--settings", nargs="+", default=list(SETTINGS))
  p.add_argument("--losses", nargs="+", default=list(LOSSES))
  p.add_argument("--baselines", nargs="*", default=list(BASELINES), help="give the flag alone for none")
  p.add_argument("--ablations", nargs="*", default=[],
                 help=f"'all' or names of {list(ABLATIONS)} (default none)")
  p.add_argument("--gammas", type=float, nargs="*", default=list(GAMMAS),
                 help=f"the frontier's γ sweep of the {FRONTIER_LOSS} cells besides the "
                 "experiment's γ (default %(default)s; give the flag alone for none)")
  p.add_argument("--round2", nargs="*", default=None,
                 help="iterative RSO: round 2 (gin/iterative.gin) from these cells of each seed "
                 f"(default: those of {list(ROUND2)} the study has; the flag alone for none)")
  p.add_argument("--experiment", default=os.path.join(REPO, "gin", "rso_hinge.gin"))
  p.add_argument("--run_root", default="runs/paper_table")
  p.add_argument("--out", default=os.path.join(REPO, "benchmarks", "results", "paper_table.md"))
  p.add_argument("--frontier", default=os.path.join(REPO, "benchmarks", "results",
                                                     "frontier.png"))
  p.add_argument("--decoding", default="greedy", choices=DECODINGS)
  p.add_argument("--dry_run", action="store_true", help="print the runs, run nothing")
  args = p.parse_args(argv)
  command = shlex.join(["python", "launch/paper_table.py", *argv] + (["--", *extra] if extra
                                                                     else []))
  try:
    all_cells = cells(args.seeds, args.settings, args.losses, args.baselines, args.ablations,
                      args.gammas, args.round2)
    return run_study(all_cells, args.run_root, args.experiment, extra, args.out, args.decoding,
                     command, dry_run=args.dry_run, frontier=args.frontier,
                     ablations=list(ABLATIONS) if args.ablations == ["all"] else args.ablations)
  except StudyError as e:
    print(f"paper_table: {e}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
