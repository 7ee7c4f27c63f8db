"""The paper-table study's numbers and its Markdown report (imported by `paper_table.py`, which
puts the repository and launch/ on sys.path).

  mean_stderr, at_kl      statistics over seeds, interpolation on a (KL, y) curve
  cell_values, trajectory, cell_gamma, reward_quality
                          what one finished cell's records say
  gamma_curves, swept     the γ sweep's points per setting and seed
  table_markdown          the report: the paper's tables, baselines, ablations, the frontier
                          (`frontier_markdown`), round 2, seeds per cell

A cell here is `paper_table.Cell` (setting, loss, seed, ablation, round2, round1, gamma, name,
run_dir); entries are the mean ± standard error over the seeds that finished.
"""

from __future__ import annotations

import json
import math
import statistics
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence

from rso_jax import fs
from rso_jax import pipeline
from study_design import (ABLATED, ABLATIONS, BASELINES, FRONTIER_LOSS, KL_BUDGETS, LOSSES,  # pylint: disable=g-multiple-import
                          SAMPLE_OVERRIDE, SETTINGS, WIN_RATES, StudyError)

Cell = Any  # paper_table.Cell

# ----------------------------------------------------------------------------- statistics


def mean_stderr(values: Sequence[float]) -> tuple:
  """(mean, standard error of the mean = sample std / sqrt(n)); SE is None for n < 2."""
  if not values:
    return None, None
  if len(values) < 2:
    return statistics.fmean(values), None
  return statistics.fmean(values), statistics.stdev(values) / math.sqrt(len(values))


def fmt(mean: Optional[float], se: Optional[float], scale: float = 1.0, digits: int = 1) -> str:
  """"mean ± se" scaled, "mean" without an SE, "—" without a mean."""
  if mean is None:
    return "—"
  s = f"{mean * scale:.{digits}f}"
  return s + (f" ± {se * scale:.{digits}f}" if se is not None else "")


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


# ----------------------------------------------------------------------------- one cell's records


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


# ----------------------------------------------------------------------------- the γ sweep


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


def _at_equal_kl(curves_at: Iterable[tuple]) -> str:
  """"golden win % / mean r* (n)" over [(a seed's γ curve, the KL to read it at)]: mean ± SE
  over the curves that span their KL, "—" where none does."""
  wins, rs = [], []
  for pts, kl in curves_at:
    win = at_kl([(p[1], p[2]) for p in pts], kl)
    if win is not None:
      wins.append(win)
      rs.append(at_kl([(p[1], p[3]) for p in pts], kl))
  return ("—" if not wins else f"{fmt(*mean_stderr(wins), 100.0, 1)} / "
          f"{fmt(*mean_stderr(rs), 1.0, 3)} ({len(wins)})")


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
    lines.append(f"| π_sft | — | 0 | {fmt(*mean_stderr(win), 100.0, 1)} | "
                 f"{fmt(*mean_stderr(r_star), 1.0, 3)} | {len(sft)} |")
  for setting in settings:
    by_gamma: Dict[float, List[tuple]] = {}
    for pts in curves[setting].values():
      for g, kl, win, r in pts:
        by_gamma.setdefault(g, []).append((kl, win, r))
    for g, at in sorted(by_gamma.items()):
      lines.append(f"| {setting} | {g:g} | {fmt(*mean_stderr([p[0] for p in at]), 1.0, 2)} | "
                   f"{fmt(*mean_stderr([p[1] for p in at]), 100.0, 1)} | "
                   f"{fmt(*mean_stderr([p[2] for p in at]), 1.0, 3)} | {len(at)} |")
  lines += ["", "## At equal KL: golden win rate vs the SFT targets, % / mean r* (each seed's γ "
            "curve interpolated at the KL; mean ± SE over the seeds whose curve spans it, their "
            "number in brackets; — where none does)", "",
            "| KL, nats | " + " | ".join(settings) + " |", "|---" * (len(settings) + 1) + "|"]
  for kl in budgets:
    row = [_at_equal_kl((pts, kl) for pts in curves[setting].values()) for setting in settings]
    lines.append(f"| {kl:g} | " + " | ".join(row) + " |")
  return lines


# ----------------------------------------------------------------------------- the report


class _Finished:
  """The study's finished cells and their numbers, looked up by table entry."""

  def __init__(self, all_cells: Sequence[Cell], results: Mapping[Cell, Dict[str, float]]):
    self.results = results
    self.cells = [c for c in all_cells if c in results]

  def values(self, setting: str, loss: str, key: str, ablation: str = "") -> List[float]:
    """`key` of the round-1 cells of (setting, loss, ablation) that have it, one per seed."""
    return [self.results[c][key] for c in self.cells if c.setting == setting and c.loss == loss
            and c.ablation == ablation and not c.round2 and key in self.results[c]]

  def entry(self, setting: str, loss: str, keys: Sequence[str], scale: float, digits: int,
            ablation: str = "") -> str:
    """"mean ± SE" of each of `keys`, joined by " / "."""
    return " / ".join(fmt(*mean_stderr(self.values(setting, loss, k, ablation)), scale, digits)
                      for k in keys)

  def seeds(self, setting: str, loss: str, ablation: str = "") -> int:
    return len([c for c in self.cells if (c.setting, c.loss, c.ablation, c.round2)
                == (setting, loss, ablation, False)])


def _header(all_cells: Sequence[Cell], done: _Finished, records: Mapping[Cell, dict],
            quality: Mapping[int, Optional[dict]], decoding: str, command: str,
            ablations: Sequence[str]) -> List[str]:
  seeds = sorted({c.seed for c in all_cells})
  wall = sum(float(records[c].get("wall_seconds", 0.0)) for c in done.cells if c in records)
  title = "RSO paper table (Table 1 layout)" + (" and ablations" if ablations else "")
  lines = [f"# {title} on this repository's pipeline", "",
           f"- command: `{command}`",
           f"- seeds: {seeds}; cells finished: {len(done.cells)}/{len(all_cells)}; wall time of "
           f"the finished cells: {wall / 60:.1f} min (stages shared within a seed are counted "
           "once, in the cell that built them)",
           f"- decoding of the win rates: {decoding}; entries: mean ± standard error over the "
           "seeds that finished (n in the last table)", "- reward model on π_sft's own samples "
           "(accuracy vs r* on pairs of one prompt's samples; within-prompt Spearman; held-out "
           "D_hf accuracy):"]
  for s in seeds:
    q = quality.get(s)
    lines.append(f"  - seed {s}: " + ("not measured" if q is None else
                 f"{q['model']}: accuracy {fmt(q['accuracy'], None, 1, 3)}, Spearman "
                 f"{fmt(q['spearman'], None, 1, 3)}, D_hf {fmt(q['dhf_accuracy'], None, 1, 3)}"))
  return lines


def _paper_tables(done: _Finished, settings: Sequence[str], losses: Sequence[str]) -> List[str]:
  """The paper's layout (rows: loss, columns: data setting), one table per quantity."""

  def block(title, keys, scale, digits):
    head = "| loss | " + " | ".join(settings) + " |"
    out = ["", f"## {title}", "", head, "|---" * (len(settings) + 1) + "|"]
    for loss in losses:
      row = [done.entry(st, loss, keys, scale, digits) for st in settings]
      out.append(f"| {loss} | " + " | ".join(row) + " |")
    return out

  return (block("Win rate vs the SFT targets, % (proxy / golden)",
                ("vs_sft_targets/proxy", "vs_sft_targets/golden"), 100.0, 1)
          + block("Win rate vs π_sft, % (proxy / golden)", ("vs_sft/proxy", "vs_sft/golden"),
                  100.0, 1)
          + block("KL(π ‖ π_sft), nats", ("kl/mean",), 1.0, 2)
          + block("At the selected checkpoint (best proxy win rate vs the SFT targets on "
                  "validation): win rate vs the SFT targets, % (proxy / golden)",
                  ("selected/vs_sft_targets/proxy", "selected/vs_sft_targets/golden"), 100.0, 1)
          + block("At the selected checkpoint: KL(π ‖ π_sft), nats", ("selected/kl/mean",),
                  1.0, 2)
          + block("The selected step", ("selected/step",), 1.0, 0))


_SUMMARY_HEAD = ("vs SFT targets, % (proxy / golden) | vs π_sft, % (proxy / golden) | KL, nats "
                 "| selected checkpoint: vs SFT targets, % | seeds |")


def _summary(done: _Finished, setting: str, loss: str, ablation: str = "") -> str:
  """One row's cells under `_SUMMARY_HEAD`: one cell, mean ± SE over its seeds."""
  pct = lambda keys: done.entry(setting, loss, keys, 100.0, 1, ablation)
  return (f"{pct(('vs_sft_targets/proxy', 'vs_sft_targets/golden'))} | "
          f"{pct(('vs_sft/proxy', 'vs_sft/golden'))} | "
          f"{done.entry(setting, loss, ('kl/mean',), 1.0, 2, ablation)} | "
          f"{pct(('selected/vs_sft_targets/proxy', 'selected/vs_sft_targets/golden'))} | "
          f"{done.seeds(setting, loss, ablation)} |")


def _baselines_table(done: _Finished, baselines: Sequence[str]) -> List[str]:
  return (["", "## Baselines (SFT of π_sft on selected samples; same columns as above)", "",
           "| baseline | " + _SUMMARY_HEAD, "|---|---|---|---|---|---|"]
          + [f"| {b} | " + _summary(done, b, "sft") for b in baselines])


def _ablations_table(done: _Finished, ablations: Sequence[str]) -> List[str]:
  lines = ["", f"## Ablations ({ABLATED[0]} / {ABLATED[1]}, one knob changed; the first row "
           "is the unchanged cell)", "",
           "| ablation | overrides | " + _SUMMARY_HEAD, "|---|---|---|---|---|---|---|"]
  for a in [""] + list(ablations):
    setting = ABLATIONS[a][0] if a else ABLATED[0]
    what = ("" if not a else
            " ".join(o.replace(SAMPLE_OVERRIDE, "").replace("--gin.", "")
                     for o in ABLATIONS[a][1])
            or f"DATA_SETTING={setting}")
    lines.append(f"| {a or '(none)'} | {f'`{what}`' if what else '—'} | "
                 + _summary(done, setting, ABLATED[1], a))
  return lines


def _sft_points(done: _Finished) -> Dict[int, tuple]:
  """π_sft's (golden win rate vs the SFT targets, mean r*) per seed, from its round-1 cells."""
  return {c.seed: (done.results[c]["sft_vs_sft_targets/golden"], done.results[c]["golden/sft"])
          for c in done.cells if not c.round2
          and {"sft_vs_sft_targets/golden", "golden/sft"} <= set(done.results[c])}


def _kl_win_reward(results: Mapping[Cell, Dict[str, float]], cs: Sequence[Cell]) -> str:
  """"KL / golden win rate vs the SFT targets % / mean r*" of cells `cs`, mean ± SE."""
  get = lambda k: mean_stderr([results[c][k] for c in cs if k in results[c]])
  return (f"{fmt(*get('kl/mean'), 1.0, 2)} / {fmt(*get('vs_sft_targets/golden'), 100.0, 1)}"
          f" / {fmt(*get('golden/policy'), 1.0, 3)}")


def _round2_row(done: _Finished, name: str, curves: Mapping[str, Mapping[int, List[tuple]]],
                round2_quality: Mapping[Cell, Optional[dict]]) -> str:
  """Round 2 from round-1 cell `name`, beside its round 1 and on round 1's γ curve."""
  results = done.results
  two = [c for c in done.cells if c.round2 and c.round1.name == name]
  one = [c.round1 for c in two if c.round1 in results]
  acc = [q["accuracy"] for q in (round2_quality.get(c) for c in two)
         if q and q.get("accuracy") is not None]
  proxy = mean_stderr([results[c]["vs_sft_targets/proxy"] for c in two
                       if "vs_sft_targets/proxy" in results[c]])
  # The same seed's round-1 γ curve where round 2 ended.
  frontier = _at_equal_kl((curves.get(c.setting, {}).get(c.seed, []),
                           results[c].get("kl/mean", math.nan)) for c in two)
  return (f"| {name} | {_kl_win_reward(results, one)} | {_kl_win_reward(results, two)} | "
          f"{frontier} | {fmt(*proxy, 100.0, 1)} | {fmt(*mean_stderr(acc), 1.0, 3)} | "
          f"{len(two)} |")


def _round2_table(done: _Finished, round1: Sequence[str],
                  curves: Mapping[str, Mapping[int, List[tuple]]],
                  round2_quality: Mapping[Cell, Optional[dict]]) -> List[str]:
  return (["", "## Iterative RSO: round 2 from a round-1 cell (gin/variants/iterative.gin; KL and win "
           "rates against the original π_sft and its SFT targets)", "",
           "| round 1 | round 1: KL, nats / golden win vs SFT targets, % / mean r* | round 2: "
           "the same | round 1's frontier over γ at round 2's KL: golden win, % / mean r* | "
           "round 2: proxy win vs SFT targets, % | refreshed reward model: accuracy vs r* on "
           "the round-1 policy's samples | seeds |", "|---|---|---|---|---|---|---|"]
          + [_round2_row(done, name, curves, round2_quality) for name in round1])


def _seeds_table(done: _Finished, settings: Sequence[str], losses: Sequence[str]) -> List[str]:
  lines = ["", "## Seeds per cell", "", "| loss | " + " | ".join(settings) + " |",
           "|---" * (len(settings) + 1) + "|"]
  for loss in losses:
    lines.append(f"| {loss} | " + " | ".join(str(done.seeds(st, loss)) for st in settings)
                 + " |")
  return lines


def table_markdown(all_cells: Sequence[Cell], results: Mapping[Cell, Dict[str, float]],
                   records: Mapping[Cell, dict], quality: Mapping[int, Optional[dict]], *,
                   decoding: str, command: str, settings: Sequence[str] = SETTINGS,
                   losses: Sequence[str] = LOSSES,
                   ablations: Optional[Sequence[str]] = None,
                   gammas: Optional[Mapping[Cell, Optional[float]]] = None,
                   round2_quality: Optional[Mapping[Cell, Optional[dict]]] = None) -> str:
  """The study's report: tables in the paper's layout (rows: loss, columns: data setting); the
  ablations' table (`ablations`: the names asked for; default: every ablation with a cell); the
  frontier over γ and the settings at equal KL (with `gammas`, `cell_gamma` per cell); round 2
  beside its round 1 (`round2_quality`: the refreshed reward model's `reward_quality` per
  round-2 cell)."""
  done = _Finished(all_cells, results)
  if ablations is None:
    ablations = [a for a in ABLATIONS if any(c.ablation == a for c in all_cells)]
  ablations = [a for a in ABLATIONS if a in ablations]
  lines = _header(all_cells, done, records, quality, decoding, command, ablations)
  lines += _paper_tables(done, settings, losses)
  baselines = [b for b in BASELINES if any(c.setting == b for c in all_cells)]
  if baselines:
    lines += _baselines_table(done, baselines)
  if ablations:
    lines += _ablations_table(done, ablations)
  curves = gamma_curves(results, gammas or {})
  if swept(curves):
    lines += frontier_markdown(curves, sft=_sft_points(done))
  round1 = tuple(dict.fromkeys(c.round1.name for c in all_cells if c.round2))
  if round1:
    lines += _round2_table(done, round1, curves, round2_quality or {})
  lines += _seeds_table(done, settings, losses)
  return "\n".join(lines) + "\n"
