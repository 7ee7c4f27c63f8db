"""Does the held-out judge track r* better than the proxy? Its validation on the embedded task.

    python launch/paper_table.py --seeds 0 --run_root R ... -- --gin.JUDGE_PROMPT_FRACTION=0.2
    python launch/judge_validation.py --run_root R --out docs/results/judge_validation.md

Reads every evaluation of a study run with a judge (`RUN_ROOT/seed*/eval_<cell>.json` and, for
the checkpoints each cell kept, `eval_<cell>_checkpoints.json`). On the embedded task every
evaluation has three graders of the same comparisons: the proxy the policy was trained against,
the judge trained on held-out prompts, and the golden r*. Per cell (its last step) and per
evaluated checkpoint, the win rates of the policy's samples against π_sft's (`--decoding`)
under each; then the Spearman rank correlation, across cells, of the judge's win rate (and its
length-controlled rate) with the golden one, against that of the proxy's, with a bootstrap
interval over cells of their difference; and each grader's agreement with r* on the
comparisons where r* differs. Written as a markdown document (`--out`) and printed.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from scipy import stats

GRADERS = ("proxy", "judge", "judge_lc")


def _point(cell: str, seed: str, step: Any, report: Dict[str, Any], decoding: str
           ) -> Optional[Dict[str, Any]]:
  res = report.get("results", {}).get(decoding)
  if not res or res.get("vs_sft/golden") is None or res.get("vs_sft/judge") is None:
    return None
  return dict(cell=cell, seed=seed, step=step, golden=res["vs_sft/golden"],
              proxy=res.get("vs_sft/proxy"), judge=res["vs_sft/judge"],
              judge_lc=res.get("vs_sft/judge_lc"), kl=report.get("kl/mean"),
              r_star=res.get("golden/policy"),
              proxy_agreement=res.get("vs_sft/proxy_agreement_with_golden"),
              judge_agreement=res.get("vs_sft/judge_agreement_with_golden"),
              judge_accuracy=report.get("judge/heldout_accuracy"),
              judge_pairs=report.get("judge/heldout_pairs"))


def collect(run_root: str, decoding: str = "sample") -> Tuple[List[dict], List[dict]]:
  """(one point per cell at its last step, one per evaluated checkpoint of every cell)."""
  last, every = [], []
  for path in sorted(glob.glob(os.path.join(run_root, "seed*", "eval_*.json"))):
    name = os.path.basename(path)[len("eval_"):-len(".json")]
    if name.endswith("_checkpoints") or name == "summary":
      continue
    seed = os.path.basename(os.path.dirname(path))
    with open(path, encoding="utf-8") as f:
      p = _point(name, seed, "last", json.load(f), decoding)
    if p is None:
      continue
    last.append(p)
    ckpts = os.path.join(os.path.dirname(path), f"eval_{name}_checkpoints.json")
    steps = {}
    if os.path.exists(ckpts):
      with open(ckpts, encoding="utf-8") as f:
        steps = json.load(f).get("steps", {})
    for step, report in sorted(steps.items(), key=lambda kv: int(kv[0])):
      q = _point(name, seed, int(step), report, decoding)
      if q is not None:
        every.append(q)
    if not steps:
      every.append(p)
  return last, every


def spearman(xs: Sequence[float], ys: Sequence[float]) -> float:
  x, y = np.asarray(xs, np.float64), np.asarray(ys, np.float64)
  if len(x) < 3 or np.std(x) == 0 or np.std(y) == 0:
    return float("nan")
  return float(stats.spearmanr(x, y)[0])


def correlations(points: List[dict], *, seed: int = 0, resamples: int = 2000
                 ) -> Dict[str, Any]:
  """ρ(grader, golden) for each grader, and ρ(judge) − ρ(proxy), ρ(judge_lc) − ρ(proxy) with
  95% percentile bootstrap intervals over the points (resampled with replacement)."""
  pts = [p for p in points if all(p.get(g) is not None for g in GRADERS)]
  out: Dict[str, Any] = {"n": len(pts)}
  golden = [p["golden"] for p in pts]
  for g in GRADERS:
    out[g] = spearman([p[g] for p in pts], golden)
  rng = np.random.default_rng(seed)
  diffs = {"judge": [], "judge_lc": []}
  for _ in range(resamples if len(pts) >= 3 else 0):
    idx = rng.integers(0, len(pts), len(pts))
    sub = [pts[i] for i in idx]
    gold = [p["golden"] for p in sub]
    base = spearman([p["proxy"] for p in sub], gold)
    for g in diffs:
      d = spearman([p[g] for p in sub], gold) - base
      if np.isfinite(d):
        diffs[g].append(d)
  for g, ds in diffs.items():
    out[f"{g}_minus_proxy"] = out[g] - out["proxy"]
    out[f"{g}_minus_proxy_ci"] = ([float(np.quantile(ds, 0.025)), float(np.quantile(ds, 0.975))]
                                  if ds else [float("nan"), float("nan")])
  return out


def verdict(c: Dict[str, Any], grader: str = "judge") -> str:
  """One plain sentence on whether `grader` tracks r* better than the proxy."""
  d, (lo, hi) = c[f"{grader}_minus_proxy"], c[f"{grader}_minus_proxy_ci"]
  what = "the judge" if grader == "judge" else "the judge's length-controlled rate"
  if not np.isfinite(lo):
    return f"too few points to compare {what} with the proxy"
  if lo > 0:
    return (f"{what} tracks r* better than the proxy: its rank correlation with the golden win "
            f"rate is higher by {d:+.2f} (95% interval {lo:+.2f} to {hi:+.2f})")
  if hi < 0:
    return (f"{what} tracks r* worse than the proxy: its rank correlation is lower by {d:+.2f} "
            f"(95% interval {lo:+.2f} to {hi:+.2f})")
  return (f"these points cannot tell {what} from the proxy: the difference of rank "
          f"correlations is {d:+.2f} with a 95% interval from {lo:+.2f} to {hi:+.2f}, which "
          "includes 0")


def _pct(x: Any) -> str:
  return "—" if x is None else f"{100 * x:.1f}"


def markdown(last: List[dict], every: List[dict], decoding: str, command: str) -> str:
  c_last, c_every = correlations(last), correlations(every)
  lines = [
      "# The held-out judge against r* on the embedded task", "",
      f"Win rates (%) of each policy's {decoding}d responses against π_sft's on the 256 "
      "validation prompts, under the proxy the policy was trained against, the judge trained on "
      "the held-out prompts' pairs, the judge's length-controlled rate, and the golden r*; "
      "agreement: the fraction of comparisons with unequal r* where the grader prefers r*'s "
      "side.", "",
      "| cell | seed | KL | proxy | judge | judge LC | golden | proxy agreement | judge agreement |",
      "|---|---|---|---|---|---|---|---|---|"]
  for p in last:
    kl = "—" if p["kl"] is None else f"{p['kl']:.2f}"
    agree = lambda x: "—" if x is None else f"{x:.3f}"
    lines.append(f"| {p['cell']} | {p['seed']} | {kl} | {_pct(p['proxy'])} | "
                 f"{_pct(p['judge'])} | {_pct(p['judge_lc'])} | {_pct(p['golden'])} | "
                 f"{agree(p['proxy_agreement'])} | {agree(p['judge_agreement'])} |")
  accs = sorted({(p["judge_accuracy"], p["judge_pairs"]) for p in last
                 if p["judge_accuracy"] is not None})
  if accs:
    lines += ["", "The judge's accuracy on its held-out comparisons: " + ", ".join(
        f"{a:.3f} on {n} pairs" for a, n in accs) + "."]
  lines += ["", "Spearman rank correlation with the golden win rate:", "",
            "| points | n | proxy | judge | judge LC | judge − proxy [95% CI] | "
            "judge LC − proxy [95% CI] |", "|---|---|---|---|---|---|---|"]
  for label, c in (("cells (last step)", c_last), ("every evaluated checkpoint", c_every)):
    ci = lambda g: (f"{c[g + '_minus_proxy']:+.2f} [{c[g + '_minus_proxy_ci'][0]:+.2f}, "
                    f"{c[g + '_minus_proxy_ci'][1]:+.2f}]")
    lines.append(f"| {label} | {c['n']} | {c['proxy']:.2f} | {c['judge']:.2f} | "
                 f"{c['judge_lc']:.2f} | {ci('judge')} | {ci('judge_lc')} |")
  lines += ["", "Over the cells: " + verdict(c_last) + "; " + verdict(c_last, "judge_lc") + ".",
            "Over every evaluated checkpoint (not independent: two per cell): "
            + verdict(c_every) + "; " + verdict(c_every, "judge_lc") + ".",
            "", f"Command: `{command}`", ""]
  return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--run_root", required=True)
  p.add_argument("--out", default=None)
  p.add_argument("--decoding", default="sample", choices=("greedy", "sample"))
  args = p.parse_args(argv)
  last, every = collect(args.run_root, args.decoding)
  if not last:
    print(f"judge_validation: no evaluation with a judge and r* under {args.run_root}",
          file=sys.stderr)
    return 2
  command = "python launch/judge_validation.py " + " ".join(argv if argv is not None
                                                            else sys.argv[1:])
  text = markdown(last, every, args.decoding, command)
  if args.out:
    tmp = args.out + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
      f.write(text)
    os.replace(tmp, args.out)
  print(text)
  return 0


if __name__ == "__main__":
  sys.exit(main())
