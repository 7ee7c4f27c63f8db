"""The paper's Table 1 on one experiment, over seeds: one command, resumable, mean ± SE.

    python launch/paper_table.py                       # seeds 0 1 2, the embedded task
    python launch/paper_table.py --seeds 0 --dry_run   # print the runs, run nothing
    python launch/paper_table.py -- --gin.TRAIN_STEPS=100   # flags after -- go to every run

Cells: {direct, sft_sample_rank, rso_sample_rank} x {sigmoid_norm, hinge (Eq. 9), hinge_norm}
(the paper's Table 1) and the baselines RAFT and ReST (`--baselines`; SFT of π_sft on its best
candidate / on the candidates ReST's filter keeps: gin/variants/raft.gin, gin/variants/rest.gin), each
`python -m rso_jax.train` with gin overrides of one experiment (`--experiment`, default
gin/rso_hinge.gin; `direct` adds gin/variants/direct.gin: the loss on D_hf itself). `--ablations` (names
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
(gin/variants/iterative.gin) from that cell's policy, in `RUN_ROOT/seed<s>/round2-<cell>`, reported
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
import json
import math
import os
import shlex
import subprocess
import sys
import time
from typing import List, Optional, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for _path in (REPO, os.path.join(REPO, "launch")):  # rso_jax.fs and launch/ modules, from anywhere
  if _path not in sys.path:
    sys.path.insert(0, _path)
from rso_jax import fs  # pylint: disable=g-import-not-at-top,wrong-import-position
import sweep  # pylint: disable=g-import-not-at-top,wrong-import-position
# The study's design, its report and its figure, also under this module's names.
from frontier_plot import draw_frontier  # pylint: disable=g-import-not-at-top,wrong-import-position
from study_design import (ABLATED, ABLATIONS, BASELINES, DECODINGS, FRONTIER_LOSS, GAMMAS,  # pylint: disable=g-import-not-at-top,wrong-import-position,g-multiple-import,unused-import
                          KL_BUDGETS, LOSSES, ROUND2, SETTINGS, WIN_RATES, StudyError)
from study_report import (at_kl, cell_gamma, cell_values, frontier_markdown, gamma_curves,  # pylint: disable=g-import-not-at-top,wrong-import-position,g-multiple-import,unused-import
                          mean_stderr, reward_quality, swept, table_markdown, trajectory)

_ADDED_GIN = {"direct": "variants/direct.gin", "raft": "variants/raft.gin", "rest": "variants/rest.gin"}


@dataclasses.dataclass(frozen=True)
class Cell:
  """One table entry for one seed (`ablation`: a name of `ABLATIONS` or a point of the γ sweep,
  `gamma_name(γ)`; else ""). `round2`: iterative RSO's second round from this cell's policy
  (gin/variants/iterative.gin, in its own run directory; evaluated against the original π_sft)."""
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
      gin_files.append(os.path.join(REPO, "gin", "variants/iterative.gin"))
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
                 help="iterative RSO: round 2 (gin/variants/iterative.gin) from these cells of each seed "
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
