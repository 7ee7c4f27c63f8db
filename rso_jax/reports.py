"""Evaluation outputs: the report files, the summary of every policy, the plot and the table.

`write_outputs(report, output_dir, rows)` writes `eval_<name>.json`, `eval_<name>_examples.jsonl`
(one line per evaluation prompt: the prompt, the reference, each decoding's responses of π and
π_sft with their lengths, r* and every judge's preferences), updates `eval_summary.json` (every
report by name) and redraws `eval_plot.png` (mean golden reward against KL(π ‖ π_sft), one
point per policy), each atomically (temp file + rename). `format_table` prints the win-rate /
KL table the main job ends with: every rate with its 95% bootstrap interval and its coverage
(scored / requested), a coverage under 90% marked. `training_scalars(run_dir)` reads back the scalars a
training run wrote to TensorBoard (rso_jax's trainer or upstream T5X's: `run_dir/train`).
"""

from __future__ import annotations

import io
import json
import math
import re
from typing import Any, Dict, List, Optional, Union

import numpy as np

from rso_jax import fs
from rso_jax.win_rates import LOW_COVERAGE

SUMMARY_FILE = "eval_summary.json"

PLOT_FILE = "eval_plot.png"


def safe_name(name: str) -> str:
  safe = re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).strip("._")
  if not safe:
    raise ValueError(f"name={name!r} has no usable characters for a file name")
  return safe


def _jsonable(x: Any) -> Any:
  if isinstance(x, dict):
    return {str(k): _jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_jsonable(v) for v in x]
  if isinstance(x, (np.floating, float)):
    return float(x) if math.isfinite(x) else None
  if isinstance(x, np.integer):
    return int(x)
  if isinstance(x, np.bool_):
    return bool(x)
  return x


def _atomic_write(path: str, data: Union[str, bytes]) -> None:
  fs.atomic_write_bytes(path, data if isinstance(data, bytes) else data.encode("utf-8"))


def write_outputs(report: Dict[str, Any], output_dir: str,
                  rows: Optional[List[Dict[str, Any]]] = None) -> Dict[str, str]:
  """Writes `eval_<name>.json` (and `eval_<name>_examples.jsonl` from `rows`), updates
  `eval_summary.json` and redraws `eval_plot.png`."""
  fs.makedirs(output_dir)
  name = safe_name(report["name"])
  clean = _jsonable(report)
  paths = {"report": fs.join(output_dir, f"eval_{name}.json"),
           "summary": fs.join(output_dir, SUMMARY_FILE),
           "plot": fs.join(output_dir, PLOT_FILE)}
  if rows is not None:
    paths["examples"] = fs.join(output_dir, f"eval_{name}_examples.jsonl")
    _atomic_write(paths["examples"], "".join(
        json.dumps(_jsonable(r), ensure_ascii=False) + "\n" for r in rows))
    clean["examples_file"] = paths["examples"]
  _atomic_write(paths["report"], json.dumps(clean, indent=2))
  summary = load_summary(output_dir)
  summary[name] = {k: v for k, v in clean.items() if k != "examples"}
  _atomic_write(paths["summary"], json.dumps(summary, indent=2))
  _atomic_write(paths["plot"], plot_summary(summary))
  return paths


def load_summary(output_dir: str) -> Dict[str, Any]:
  """`{name: report}` from `output_dir/eval_summary.json` ({} if absent)."""
  path = fs.join(output_dir, SUMMARY_FILE)
  if not fs.exists(path):
    return {}
  summary = json.loads(fs.read_text(path))
  if not isinstance(summary, dict):
    raise ValueError(f"{path} does not hold a {{name: report}} object")
  return summary


def _plot_mode(report: Dict[str, Any]) -> Optional[str]:
  modes = list(report.get("results", {}))
  return "sample" if "sample" in modes else (modes[0] if modes else None)


def plot_summary(summary: Dict[str, Any]) -> bytes:
  """PNG bytes: mean golden reward (y) vs KL(π ‖ π_sft) (x), one labeled point per policy.

  Uses the sampled decodes when present (else greedy); π_sft is drawn at KL = 0. Without a
  golden reward the y axis is the proxy win rate against π_sft.
  """
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  fig = Figure(figsize=(6.0, 4.5), dpi=100)
  FigureCanvasAgg(fig)
  ax = fig.add_subplot(1, 1, 1)
  use_golden = any(r.get("has_golden") for r in summary.values())
  ylabel = "mean golden reward r*" if use_golden else "proxy win rate vs π_sft"
  sft_points = {}
  modes = set()
  for name, r in summary.items():
    mode = _plot_mode(r)
    res = r.get("results", {}).get(mode, {}) if mode else {}
    x = r.get("kl/mean")
    y = res.get("golden/policy") if use_golden else res.get("vs_sft/proxy")
    if x is None or y is None:
      continue
    modes.add(mode)
    yerr = (res.get("golden/policy_stderr") if use_golden else res.get("vs_sft/proxy_stderr"))
    ax.errorbar([x], [y], xerr=[r.get("kl/stderr") or 0.0], yerr=[yerr or 0.0], fmt="o",
                capsize=3)
    ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    if use_golden and res.get("golden/sft") is not None:
      # One π_sft point per reference and prompt set.
      sft_points[(r.get("sft_path"), r.get("prompts_task"), r.get("split"),
                  r.get("num_prompts"), mode)] = res["golden/sft"]
  for y in sft_points.values():
    ax.plot([0.0], [y], marker="x", color="gray")
    ax.annotate("π_sft", (0.0, y), textcoords="offset points", xytext=(4, -10), fontsize=8,
                color="gray")
  ax.set_xlabel("KL(π ‖ π_sft) estimate (nats)")
  ax.set_ylabel(ylabel)
  ax.set_title(f"policies ({'/'.join(sorted(modes)) or 'no data'} decoding)")
  ax.grid(True, alpha=0.3)
  fig.tight_layout()
  buf = io.BytesIO()
  fig.savefig(buf, format="png")
  return buf.getvalue()


# ------------------------------------------------------------------------------------------------
# Table.


def _fmt(x: Any, pct: bool = False) -> str:
  if x is None or (isinstance(x, float) and not math.isfinite(x)):
    return "-"
  return f"{100 * x:.1f}" if pct else f"{x:.3f}"


_OPPONENTS = (("vs_sft", "π_sft"), ("vs_sft_targets", "reference"))


def _rate(res: Dict[str, Any], key: str) -> str:
  """"75.2 [69.9, 80.5]": a rate and its 95% interval in %, "-" when absent."""
  x = res.get(key)
  if x is None or (isinstance(x, float) and not math.isfinite(x)):
    return "-"
  ci = res.get(f"{key}_ci")
  if not ci or any(c is None or not math.isfinite(c) for c in ci):
    return _fmt(x, True)
  return f"{_fmt(x, True)} [{_fmt(ci[0], True)}, {_fmt(ci[1], True)}]"


def _coverage(res: Dict[str, Any], key: str) -> str:
  c = res.get(f"{key}_coverage")
  if c is None or (isinstance(c, float) and not math.isfinite(c)):
    return "-"
  return f"{100 * c:.0f}" + ("*" if c < LOW_COVERAGE else "")


def _has(reports: List[Dict[str, Any]], who: str) -> bool:
  """Whether any report has a win rate under `who` ("proxy", "judge", "golden")."""
  return any(k.endswith("/" + who) for r in reports for res in r.get("results", {}).values()
             for k in res)


def _columns(reports: List[Dict[str, Any]]) -> List[tuple]:
  """(header, cell function) of the win-rate table, for the judges the reports have."""
  cols = []
  if _has(reports, "proxy"):
    cols += [("proxy win% [95% CI]", lambda res, p: _rate(res, f"{p}/proxy")),
             ("cov%", lambda res, p: _coverage(res, f"{p}/proxy"))]
  if _has(reports, "judge"):
    cols += [("judge win% [95% CI]", lambda res, p: _rate(res, f"{p}/judge")),
             ("cov%", lambda res, p: _coverage(res, f"{p}/judge")),
             ("judge LC% [95% CI]", lambda res, p: _rate(res, f"{p}/judge_lc"))]
  if _has(reports, "golden"):
    cols += [("golden win% [95% CI]", lambda res, p: _rate(res, f"{p}/golden"))]
  return cols


def _grid(header: List[str], rows: List[List[str]], left: int = 3) -> List[str]:
  widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h)
            for i, h in enumerate(header)]
  line = lambda cells: "  ".join(c.ljust(w) if i < left else c.rjust(w)
                                 for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
  return [line(header), line(["-" * w for w in widths])] + [line(row) for row in rows]


def format_table(results: Union[Dict[str, Any], List[Dict[str, Any]]]) -> str:
  """Two compact text tables, one row per policy, decoding (and opponent).

  Win rates (%) of the policy against π_sft and against the reference responses under the
  proxy reward model, the held-out judge (with its length-controlled rate) and the golden
  reward, each with its 95% bootstrap interval over prompts and, for the reward models, its
  coverage (scored / requested; `*` under 90%); then mean r* of the policy and of π_sft, mean
  lengths (tokens) and the KL estimate ± its standard error. Accepts one report, a list of
  reports, or a summary `{name: report}`.
  """
  if isinstance(results, dict):
    reports = [results] if "results" in results else list(results.values())
  else:
    reports = list(results)
  cols = _columns(reports)
  rows, rows2 = [], []
  for r in reports:
    kl = r.get("kl/mean")
    kl_s = "-" if kl is None else f"{kl:.3f} ± {_fmt(r.get('kl/stderr'))}"
    for mode, res in r.get("results", {}).items():
      for prefix, label in _OPPONENTS:
        if prefix == "vs_sft_targets" and not any(k.startswith(prefix + "/") and
                                                  not k.endswith("identical_fraction")
                                                  for k in res):
          continue
        rows.append([str(r.get("name", "?")), mode, label] + [fn(res, prefix) for _, fn in cols])
      length = " / ".join("-" if res.get(k) is None else f"{res[k]:.1f}"
                          for k in ("length/policy", "length/sft"))
      rows2.append([str(r.get("name", "?")), mode,
                    f"{_fmt(res.get('golden/policy'))} / {_fmt(res.get('golden/sft'))}", length,
                    kl_s])
  out = _grid(["policy", "decode", "vs"] + [h for h, _ in cols], rows)
  out += [""] + _grid(["policy", "decode", "r* policy/π_sft", "length policy/π_sft",
                       "KL(π‖π_sft) ± se"], rows2, left=2)
  notes = ["win rates in %, 95% bootstrap intervals over prompts"]
  if _has(reports, "proxy") or _has(reports, "judge"):
    notes.append(f"cov% = comparisons the reward model scored / requested; * = under "
                 f"{100 * LOW_COVERAGE:.0f}%: that rate counts only the scored ones")
  if _has(reports, "judge"):
    notes.append("LC = the judge's preference at equal length")
  targets = {r.get("golden/sft_targets") for r in reports} - {None}
  if len(targets) == 1:
    notes.append(f"mean r* of the references: {_fmt(targets.pop())}")
  for r in reports:
    if r.get("judge/heldout_accuracy") is not None:
      notes.append(f"{r.get('name')}'s judge: accuracy {_fmt(r['judge/heldout_accuracy'])} on "
                   f"{r.get('judge/heldout_pairs')} held-out comparisons")
  out.append("(" + "; ".join(notes) + ")")
  return "\n".join(out)


def training_scalars(run_dir: str, collection: str = "train") -> Dict[str, List[tuple]]:
  """`{tag: [(step, value), ...]}` (step order) of the scalars in `run_dir/collection`'s
  TensorBoard event files; text summaries (e.g. T5X's gin config) are skipped."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  out: Dict[str, List[tuple]] = {}
  for path in sorted(fs.glob(fs.join(run_dir, collection, "events.out.tfevents.*"))):
    for event in tf.compat.v1.train.summary_iterator(path):
      for v in event.summary.value:
        if v.HasField("tensor"):
          value = tf.make_ndarray(v.tensor)
          if value.dtype.kind not in "fiu":
            continue
          value = float(value)
        else:
          value = float(v.simple_value)
        out.setdefault(v.tag, []).append((int(event.step), value))
  return {k: sorted(v) for k, v in out.items()}
