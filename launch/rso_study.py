r"""Does RSO work? The study on the testbed, with an oracle reward and a proxy-quality ladder.

    python launch/rso_study.py                        # the whole study (runs/study)
    python launch/rso_study.py --seeds 0 --levels oracle --dry_run

One process, resumable (every finished piece is a JSON file under `--run_root`):

  1. π_sft: the testbed's SFT (gin/experiments/testbed.gin, `--stage=sft`), shared by every
     cell and seed.
  2. The reward ladder (`rso_jax.oracle_reward`): the exact oracle r*/τ and noisy proxies
     calibrated to an accuracy on pairs of π_sft's validation samples, measured on the test
     split's.
  3. The testbed's references per prompt set: π_sft's 64 candidates at the recipe (T 0.7,
     top-k 40): their mean r*, best-of-64's, and π*_β's over them (β 0.5 on the oracle).
  4. Cells: per reward level and seed, `sft_sample_rank` and `rso_sample_rank` (hinge-norm,
     γ 0.05), and `direct` (D_hf) per seed. Each trains on exactly `--pairs` unique pairs
     (identical texts dropped): the sampled settings draw prompts in order until they have
     them; direct takes the first `--pairs` of D_hf. Same steps, so the same passes.
  5. Every kept checkpoint (every `--pairs`·passes/(batch·checkpoints) steps) and π_sft itself
     is evaluated on the selection split (validation) and the report split (test): 4 samples
     per prompt at the recipe (mean r*, golden win rate vs π_sft's samples), 4 at T 1 for
     KL(π ‖ π_sft), one greedy decode. The checkpoint is selected on validation by the level's
     proxy; everything reported is on test.

`--report` (default benchmarks/results/rso_study.md) and the frontier plot
(benchmarks/results/rso_study_frontier.png) are rewritten after every cell.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import subprocess
import sys
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [_ROOT, os.path.dirname(os.path.abspath(__file__))]

# pylint: disable=g-import-not-at-top,wrong-import-position
import jax
import numpy as np

from rso_jax import checkpoints
from rso_jax import datasets
from rso_jax import fs
from rso_jax import inference
from rso_jax import models
from rso_jax import oracle_reward
from rso_jax import runs
from rso_jax import sample
from rso_jax import tasks
from rso_jax import train as train_lib
from rso_jax import win_rates
from rso_jax.tasks import generated
from rso_jax.tasks import golden
from rso_jax.tasks import subsets
from rso_jax.tasks import synthetic
import rso_study_stats as stats
import study_report
# pylint: enable=g-import-not-at-top,wrong-import-position

LEVELS = {"oracle": 1.0, "proxy95": 0.95, "proxy85": 0.85, "proxy78": 0.78}
SETTINGS = ("sft_sample_rank", "rso_sample_rank")
BASELINES = ("direct",)  # trained on D_hf: one cell per seed, whatever the reward level
# SFT of π_sft on the reward's picks (RAFT: the best of the 64; ReST: every candidate above
# its threshold), on as many responses as the preference cells have pairs, for as many steps:
# at these levels only (the study's time budget).
SFT_BASELINES = ("raft", "rest")
SFT_BASELINE_LEVELS = ("oracle", "proxy78")
# The sampling stage's picks per data setting: k kept of the 64 (8: 4 first-round pairs).
NUM_SAMPLES = {"sft_sample_rank": 8, "rso_sample_rank": 8, "raft": 1, "rest": 64}
YIELD = {"sft_sample_rank": 4, "rso_sample_rank": 4, "raft": 1, "rest": 2}  # first guess
KL_BUDGETS = (1.0, 2.0, 4.0)  # nats: where the paired differences are read
HEADLINE_KL = 2.0  # the headline comparison (fixed before the study ran)
EXPERIMENT = "gin/experiments/testbed.gin"
# The testbed's shape: must equal gin/experiments/testbed.gin's bindings (checked against the
# SFT checkpoint's task data at start).
TESTBED = dict(min_keywords=6, max_keywords=10, max_response_words=12, sft_keep_prob=0.5,
               ordered=False, num_train_prompts=32000)
POLICY = dict(loss="hinge_norm", gamma=0.05, optimizer="adamw", learning_rate=1e-4,
              batch_size=32, warmup_steps=20, grad_clip=1.0)


@dataclasses.dataclass(frozen=True)
class Design:
  """The settings fixed before the study runs (written into the report)."""
  seeds: tuple
  levels: tuple
  pairs: int = 1024
  passes: int = 5
  checkpoints: int = 10
  eval_prompts: int = 256
  select_prompts: int = 128
  eval_samples: int = 4
  reference_prompts: int = 256
  candidates: int = 64
  beta: float = 0.5
  temperature: float = 0.7
  top_k: int = 40

  @property
  def steps(self) -> int:
    return self.pairs * self.passes // POLICY["batch_size"]

  @property
  def period(self) -> int:
    return max(self.steps // self.checkpoints, 1)


def _write_json(path: str, obj: Any) -> None:
  fs.atomic_write_text(path, json.dumps(obj, indent=1, sort_keys=True) + "\n")


def _read_json(path: str) -> Optional[Any]:
  return json.load(open(path)) if os.path.exists(path) else None


# ----------------------------------------------------------------------------- the pieces
class Study:
  """The study's state: the run root, the design, the opened π_sft and tasks."""

  def __init__(self, root: str, design: Design, testbed: Optional[Mapping[str, Any]] = None):
    self.root, self.design = os.path.abspath(root), design
    os.makedirs(self.root, exist_ok=True)
    tasks.register_synthetic_tasks(spm_path=tasks.synthetic_words_model(),
                                   **(TESTBED if testbed is None else testbed))
    self.golden = golden.golden_reward_of("synthetic_prompts")
    self.sft_path = os.path.join(self.root, "sft")
    self._sft = None
    self._sft_eval: Dict[tuple, Any] = {}

  # --- π_sft ---------------------------------------------------------------------------
  def ensure_sft(self) -> str:
    if not runs.is_complete(self.sft_path):
      cmd = [sys.executable, "-m", "rso_jax.train", f"--gin_file={EXPERIMENT}", "--stage=sft",
             f"--gin.RUN_DIR='{self.root}'"]
      print("[study] " + " ".join(cmd), flush=True)
      subprocess.run(cmd, check=True, cwd=_ROOT)
    return self.sft_path

  def sft(self):
    if self._sft is None:
      self._sft = inference.load(self.sft_path, expect=checkpoints.GENERATIVE_KINDS, role="SFT",
                                 batch_size=64)
    return self._sft

  # --- rewards -------------------------------------------------------------------------
  def reward_path(self, level: str) -> str:
    return os.path.join(self.root, "rewards", level)

  def ensure_rewards(self) -> Dict[str, Any]:
    path = os.path.join(self.root, "rewards.json")
    record = _read_json(path) or {}
    for level in self.design.levels:
      if level in record:
        continue
      settings = oracle_reward.build(self.reward_path(level), task="synthetic_prompts",
                                     target_accuracy=LEVELS[level],
                                     sft_checkpoint=self.sft_path)
      measured = oracle_reward.measure(self.reward_path(level), self.sft_path, split="test")
      record[level] = dict(target=LEVELS[level], noise_std=settings["noise_std"],
                           calibration=settings["calibration"], test=measured)
      print(f"[study] reward {level}: noise σ {settings['noise_std']:.3f}; accuracy on π_sft's "
            f"test samples {measured['accuracy']:.3f} ({measured['pairs']:.0f} pairs)",
            flush=True)
      _write_json(path, record)
    return record

  # --- references ----------------------------------------------------------------------
  def ensure_references(self) -> Dict[str, Any]:
    """π_sft's candidates per prompt set: mean r*, best-of-N, π*_β (+ a β grid: the
    frontier's reference line), distinct texts."""
    path = os.path.join(self.root, "references.json")
    record = _read_json(path)
    if record is not None:
      return record
    d, record = self.design, {}
    tau = synthetic.BT_TEMPERATURE
    for split in ("train", "validation", "test"):
      prompts = datasets.read_prompts("synthetic_prompts", split, d.reference_prompts)
      gen = self.sft().generate(prompts, key=jax.random.key(1234), num_decodes=d.candidates,
                                temperature=d.temperature, top_k=d.top_k)
      golden = self.golden(prompts, gen.texts).astype(np.float64)
      oracle = golden / tau
      distinct = np.mean([len(set(row)) / len(row) for row in gen.texts])
      ref = dict(prompts=len(prompts), sft_mean=float(golden.mean()),
                 distinct_fraction=float(distinct),
                 best_of_n=stats.best_of_n(oracle, golden),
                 pi_star=stats.pi_star(oracle, golden, d.beta),
                 curve=[dict(beta=b, **stats.pi_star(oracle, golden, b))
                        for b in (0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0)])
      record[split] = ref
      print(f"[study] {split}: π_sft mean r* {ref['sft_mean']:.3f}; best-of-{d.candidates} "
            f"{ref['best_of_n']['golden']:.3f}; π*_β {ref['pi_star']['golden']:.3f} at KL "
            f"{ref['pi_star']['kl']:.2f}; distinct candidates {distinct:.3f}", flush=True)
    _write_json(path, record)
    return record

  # --- evaluation ----------------------------------------------------------------------
  def _split_prompts(self, split: str) -> List[str]:
    n = self.design.select_prompts if split == "validation" else self.design.eval_prompts
    return datasets.read_prompts("synthetic_prompts", split, n)

  def _keys(self, seed: int):
    base = jax.random.fold_in(jax.random.key(99), seed)
    return jax.random.fold_in(base, 0), jax.random.fold_in(base, 1)

  def _sft_side(self, split: str, seed: int):
    """π_sft's recipe samples (the win rates' opponent) of a split, per seed."""
    key = (split, seed)
    if key not in self._sft_eval:
      prompts = self._split_prompts(split)
      k_sample, _ = self._keys(seed)
      k_sample = jax.random.fold_in(k_sample, 7)
      gen = self.sft().generate(prompts, key=k_sample, num_decodes=self.design.eval_samples,
                                temperature=self.design.temperature, top_k=self.design.top_k)
      self._sft_eval[key] = (gen.texts, self.golden(prompts, gen.texts))
    return self._sft_eval[key]

  def evaluate(self, policy, seed: int) -> Dict[str, Any]:
    """One checkpoint on both splits (see the module doc)."""
    d = self.design
    out = {}
    k_sample, k_kl = self._keys(seed)
    for split in ("validation", "test"):
      prompts = self._split_prompts(split)
      sft_texts, sft_golden = self._sft_side(split, seed)
      gen = policy.generate(prompts, key=k_sample, num_decodes=d.eval_samples,
                            temperature=d.temperature, top_k=d.top_k)
      golden = self.golden(prompts, gen.texts)
      win = win_rates.win_outcomes(golden, sft_golden)
      kl_gen = policy.generate(prompts, key=k_kl, num_decodes=d.eval_samples, temperature=1.0,
                               top_k=None)
      kl, _ = win_rates.kl_estimate(kl_gen.model_logps, self.sft().score(prompts, kl_gen.texts))
      greedy = policy.greedy(prompts)
      g_greedy = self.golden(prompts, [row[0] for row in greedy.texts])
      lengths = np.array([[len(y.split()) for y in row] for row in gen.texts], np.float64)
      out[split] = dict(golden=float(golden.mean()), golden_win=float(win.mean()), kl=kl,
                        greedy_golden=float(g_greedy.mean()), length=float(lengths.mean()),
                        samples=gen.texts if split == "validation" else None)
    return out

  def sft_curve_point(self, seed: int) -> Dict[str, Any]:
    path = os.path.join(self.root, f"sft_eval_seed{seed}.json")
    rec = _read_json(path)
    if rec is None:
      rec = self.evaluate(self.sft(), seed)
      _write_json(path, rec)
    return rec

  # --- a cell --------------------------------------------------------------------------
  def cell_dir(self, level: Optional[str], setting: str, seed: int) -> str:
    return os.path.join(self.root, f"seed{seed}", setting if level is None else
                        f"{level}-{setting}")

  def _pairs_dir(self, level: str, setting: str, seed: int) -> Dict[str, Any]:
    """Samples prompts in order until `pairs` unique pairs exist; the first `pairs` of them
    (in prompt order) are the cell's data."""
    d = self.design
    cell = self.cell_dir(level, setting, seed)
    prompts = int(math.ceil(d.pairs / YIELD[setting] * 1.15))  # a first guess; grows below
    tries = []
    while True:
      out = os.path.join(cell, f"samples-{prompts}")
      summary = sample.run(policy_checkpoint=self.sft_path,
                           reward_checkpoint=self.reward_path(level), output_dir=out,
                           prompts_task="synthetic_prompts", data_setting=setting,
                           num_candidates=d.candidates,
                           num_samples=min(NUM_SAMPLES[setting], d.candidates),
                           temperature=d.temperature, top_k=d.top_k, beta=d.beta,
                           max_prompts=prompts, seed=seed, progress=False)
      made = summary.get("responses") or summary["pairs"]  # RAFT / ReST: responses
      tries.append(dict(prompts=prompts, records=made))
      if made >= d.pairs:
        break
      prompts = int(math.ceil(prompts * 1.1 * d.pairs / max(made, 1)))
    data = os.path.join(cell, "pairs")
    taken = generated.take_pairs(out, data, d.pairs)
    return dict(samples=out, data=data, tries=tries, summary=summary, taken=taken)

  def run_cell(self, level: Optional[str], setting: str, seed: int) -> Dict[str, Any]:
    path = self.cell_dir(level, setting, seed) + ".json"
    done = _read_json(path)
    if done is not None:
      return done
    d = self.design
    t0 = time.time()
    cell = self.cell_dir(level, setting, seed)
    config = checkpoints.read_config(self.sft_path)
    if setting == "direct":
      task = subsets.first_examples("synthetic_dhf", d.pairs)
      cols = subsets.columns(task)
      rc = np.asarray(cols["chosen_golden_reward"], np.float64)
      rr = np.asarray(cols["rejected_golden_reward"], np.float64)
      untied = ~np.isclose(rc, rr)
      accounting = dict(pairs=len(rc), prompts=len(set(cols["inputs"])), identical_dropped=0,
                        label_agreement=float((rc > rr)[untied].mean()),
                        ties=float(1 - untied.mean()), golden_gap=float((rc - rr).mean()))
      model = models.PolicyModel(config, loss=POLICY["loss"], gamma=POLICY["gamma"],
                                 use_cached_reference=False,
                                 reference_checkpoint=self.sft_path)
    else:
      made = self._pairs_dir(level, setting, seed)
      task = f"study_{hashlib.sha256(cell.encode()).hexdigest()[:10]}"
      generated.register_pair_task(task, made["data"])
      accounting = dict(made["taken"], prompts_sampled=made["summary"]["prompts"],
                        identical_dropped=made["summary"].get("skipped_identical", 0),
                        acceptance_rate=made["summary"].get("rejection/acceptance_rate"),
                        golden_selected=made["summary"].get("golden/selected_mean"),
                        golden_all=made["summary"].get("golden/all_mean"), tries=made["tries"])
      model = (models.Seq2SeqModel(config) if setting in SFT_BASELINES else
               models.PolicyModel(config, loss=POLICY["loss"], gamma=POLICY["gamma"],
                                  use_cached_reference=True))
    model_dir = os.path.join(cell, "policy")
    train_lib.train(model=model, model_dir=model_dir, train_steps=d.steps,
                    batch_size=POLICY["batch_size"], mixture_or_task_name=task,
                    task_feature_lengths=dict(checkpoints.read_manifest(
                        self.sft_path).feature_lengths), optimizer=POLICY["optimizer"],
                    learning_rate=POLICY["learning_rate"], warmup_steps=POLICY["warmup_steps"],
                    grad_clip=POLICY["grad_clip"], random_seed=seed,
                    initial_checkpoint_path=self.sft_path, checkpoint_period=d.period,
                    keep_checkpoints=d.checkpoints + 2, log_period=d.steps,
                    print_fn=lambda s: None)
    curve = {}
    for step in checkpoints.saved_steps(model_dir):
      policy = inference.load(checkpoints.step_path(model_dir, step),
                              expect=checkpoints.GENERATIVE_KINDS, role="policy", batch_size=64)
      curve[str(step)] = self.evaluate(policy, seed)
    record = dict(level=level, setting=setting, seed=seed, steps=d.steps, period=d.period,
                  accounting=accounting, curve=curve, seconds=time.time() - t0)
    _write_json(path, record)
    print(f"[study] {level or '-'} {setting} seed {seed}: {accounting.get('pairs')} pairs, "
          f"{len(curve)} checkpoints, {record['seconds']:.0f} s", flush=True)
    return record


# ----------------------------------------------------------------------------- the report
def selected_step(study: Study, record: Mapping, level: str, seed: int) -> int:
  """The checkpoint (π_sft = step 0 included) whose samples win most often against π_sft's
  under `level`'s reward on the selection split (validation); the earliest on a tie."""
  proxy = inference.load(study.reward_path(level), expect=checkpoints.REWARD_KINDS,
                         role="reward model")
  prompts = study._split_prompts("validation")  # pylint: disable=protected-access
  sft_texts, _ = study._sft_side("validation", seed)  # pylint: disable=protected-access
  flat = lambda rows: [y for row in rows for y in row]
  x = [p for p in prompts for _ in range(study.design.eval_samples)]
  best = (0.5, 0)  # π_sft against itself
  for step, ev in sorted(record["curve"].items(), key=lambda kv: int(kv[0])):
    ys, yb = flat(ev["validation"]["samples"]), flat(sft_texts)
    win = win_rates.preference_outcomes(proxy.prefer(x, ys, yb), np.array(ys) == np.array(yb)
                                        ).mean()
    if win > best[0]:
      best = (float(win), int(step))
  return best[1]


def _curve(study: Study, record: Mapping, seed: int) -> List[tuple]:
  """(step, test evaluation) from π_sft (step 0) on."""
  sft = study.sft_curve_point(seed)["test"]
  return [(0, sft)] + [(int(k), v["test"]) for k, v in sorted(record["curve"].items(),
                                                             key=lambda kv: int(kv[0]))]


def _mean_se(values: Sequence[Optional[float]], digits: int = 3) -> str:
  """"mean ± standard error" of the values that are not None ("—" for none)."""
  return study_report.fmt(*study_report.mean_stderr([x for x in values if x is not None]),
                          digits=digits)


def identical_fraction(accounting: Mapping[str, Any]) -> Optional[float]:
  """Of the first-round pairs the sampling stage built, the fraction dropped as two copies of
  one text (None for cells that built no pairs)."""
  tries = accounting.get("tries")
  if not tries or accounting.get("identical_dropped") is None:
    return None
  kept = tries[-1].get("records", tries[-1].get("pairs", 0))
  dropped = accounting["identical_dropped"]
  return dropped / (dropped + kept) if dropped + kept else None


def _fmt_diff(d: Mapping) -> str:
  if d["mean"] is None:
    return "—"
  if d["lo"] is None:
    return f"{d['mean']:+.3f} (n 1)"
  return f"{d['mean']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}] (n {d['n']})"


def verdict(d: Mapping) -> str:
  """The paper's ordering (rso > sft-sample-rank) in plain words, from the paired interval."""
  if d["lo"] is None:
    return "not enough seeds"
  if d["lo"] > 0:
    return "holds (RSO higher)"
  if d["hi"] < 0:
    return "flips (sft-sample-rank higher)"
  return "not resolved (the interval covers 0)"


def summarize(study: Study, records: Mapping[tuple, Mapping]) -> Dict[str, Any]:
  """Per level: accounting, last/selected numbers per setting, r* at the KL budgets, and the
  paired rso − sft-sample-rank differences."""
  d = study.design
  out: Dict[str, Any] = {}
  for level in d.levels:
    lv: Dict[str, Any] = {"settings": {}}
    for setting in SETTINGS + SFT_BASELINES + BASELINES:
      key_level = None if setting in BASELINES else level
      rows = {s: records[(key_level, setting, s)] for s in d.seeds
              if (key_level, setting, s) in records}
      per_seed = {}
      for seed, rec in rows.items():
        curve = _curve(study, rec, seed)
        sel = selected_step(study, rec, level, seed)
        at = dict(curve)[sel]
        last = curve[-1][1]
        per_seed[seed] = dict(
            last=last, selected=at, selected_step=sel,
            at_kl={kl: stats.at_kl([(e["kl"], e["golden"]) for _, e in curve], kl)
                   for kl in KL_BUDGETS},
            win_at_kl={kl: stats.at_kl([(e["kl"], e["golden_win"]) for _, e in curve], kl)
                       for kl in KL_BUDGETS},
            curve=[(e["kl"], e["golden"]) for _, e in curve], accounting=rec["accounting"])
      lv["settings"][setting] = per_seed
    a, b = lv["settings"]["rso_sample_rank"], lv["settings"]["sft_sample_rank"]
    seeds = [s for s in d.seeds if s in a and s in b]
    lv["paired"] = {f"kl{kl:g}": stats.paired_t([a[s]["at_kl"][kl] for s in seeds],
                                                 [b[s]["at_kl"][kl] for s in seeds])
                    for kl in KL_BUDGETS}
    lv["paired_win"] = {f"kl{kl:g}": stats.paired_t([a[s]["win_at_kl"][kl] for s in seeds],
                                                     [b[s]["win_at_kl"][kl] for s in seeds])
                        for kl in KL_BUDGETS}
    lv["paired"]["selected"] = stats.paired_t([a[s]["selected"]["golden"] for s in seeds],
                                              [b[s]["selected"]["golden"] for s in seeds])
    lv["paired"]["last"] = stats.paired_t([a[s]["last"]["golden"] for s in seeds],
                                          [b[s]["last"]["golden"] for s in seeds])
    out[level] = lv
  return out


def _shown(path: str) -> str:
  """`path` relative to the repository when it lies inside it."""
  rel = os.path.relpath(path, _ROOT)
  return path if rel.startswith("..") else rel


def report_markdown(study: Study, summary: Mapping, rewards: Mapping, references: Mapping,
                    seconds: float, cells_done: int, cells_total: int) -> str:
  d = study.design
  lines = ["# Does RSO work? The study on the testbed", "",
           f"- command: `python launch/rso_study.py --run_root {_shown(study.root)} --seeds "
           f"{' '.join(map(str, d.seeds))} --levels {' '.join(d.levels)}`",
           f"- cells finished: {cells_done}/{cells_total}; wall time of the cells: "
           f"{seconds / 60:.1f} min",
           f"- fixed before running: {json.dumps(dataclasses.asdict(d))}; policy {POLICY}; "
           f"the testbed {TESTBED}; π_sft shared by every cell (one SFT run)",
           "- entries: mean ± standard error over seeds; r* is the mean r* of 4 samples per "
           f"prompt at T {d.temperature}, top-k {d.top_k} on the {d.eval_prompts} report "
           "prompts (test split); the checkpoint is selected on the validation split by the "
           "level's reward", "",
           "## The testbed: π_sft's candidates (64 per prompt, T 0.7, top-k 40)", "",
           "| prompts | π_sft mean r* | best-of-64 r* | π*_β r* (β 0.5, oracle) | "
           "KL(π*_β ‖ "
           "candidates), nats | distinct candidates |", "|---|---|---|---|---|---|"]
  for split, ref in references.items():
    lines.append(f"| {split} ({ref['prompts']}) | {ref['sft_mean']:.3f} | "
                 f"{ref['best_of_n']['golden']:.3f} | {ref['pi_star']['golden']:.3f} | "
                 f"{ref['pi_star']['kl']:.2f} | {ref['distinct_fraction']:.3f} |")
  lines += ["", "## The reward ladder", "",
            "| level | target accuracy | noise σ (units of r*/τ) | accuracy on π_sft's test "
            "samples (pairs) |", "|---|---|---|---|"]
  for level in d.levels:
    r = rewards.get(level)
    if r:
      lines.append(f"| {level} | {r['target']:.2f} | {r['noise_std']:.3f} | "
                   f"{r['test']['accuracy']:.3f} ({r['test']['pairs']:,.0f}) |")
  for level in d.levels:
    lv = summary.get(level)
    if not lv:
      continue
    lines += ["", f"## {level}", "", "Pair accounting (mean over seeds):", "",
              "| setting | pairs (RAFT, ReST: responses) | prompts sampled | identical texts "
              "dropped (of the pairs built) | label agreement with r* | ties on r* | r* gap "
              "chosen − rejected | r* of chosen |", "|---|---|---|---|---|---|---|---|"]
    for setting, per_seed in lv["settings"].items():
      acc = [v["accounting"] for v in per_seed.values()]
      if not acc:
        continue
      m = lambda k, acc=acc: _mean_se([a.get(k) for a in acc])
      n = lambda k, acc=acc: _mean_se([a.get(k) for a in acc], digits=0)
      ident = [None if setting in SFT_BASELINES else identical_fraction(a) for a in acc]
      ident = ("—" if all(x is None for x in ident) else
               f"{n('identical_dropped')} ({_mean_se(ident)})")
      lines.append(f"| {setting} | {n('pairs')} | {n('prompts_sampled')} | {ident} | "
                   f"{m('label_agreement')} | {m('ties')} | {m('golden_gap')} | "
                   f"{m('golden_chosen')} |")
    lines += ["", "| setting | seeds | r* last | KL last | r* selected | win vs π_sft "
              "selected | KL selected | greedy r* selected | "
              + " | ".join(f"r* at KL {kl:g}" for kl in KL_BUDGETS) + " |",
              "|---|---|---|---|---|---|---|---|" + "---|" * len(KL_BUDGETS)]
    for setting, per_seed in lv["settings"].items():
      v = list(per_seed.values())
      if not v:
        continue
      lines.append(
          f"| {setting} | {len(v)} | {_mean_se([x['last']['golden'] for x in v])} | "
          f"{_mean_se([x['last']['kl'] for x in v])} | "
          f"{_mean_se([x['selected']['golden'] for x in v])} | "
          f"{_mean_se([x['selected']['golden_win'] for x in v])} | "
          f"{_mean_se([x['selected']['kl'] for x in v])} | "
          f"{_mean_se([x['selected']['greedy_golden'] for x in v])} | "
          + " | ".join(_mean_se([x["at_kl"][kl] for x in v]) for kl in KL_BUDGETS) + " |")
    lines += ["", "rso − sft-sample-rank, paired by seed (mean [95% t interval]):", "",
              "| where | r* | golden win rate vs π_sft | the paper's ordering |",
              "|---|---|---|---|"]
    for kl in KL_BUDGETS:
      k = f"kl{kl:g}"
      head = " (the headline)" if kl == HEADLINE_KL else ""
      lines.append(f"| at KL {kl:g}{head} | {_fmt_diff(lv['paired'][k])} | "
                   f"{_fmt_diff(lv['paired_win'][k])} | {verdict(lv['paired'][k])} |")
    for k in ("selected", "last"):
      lines.append(f"| {k} checkpoint | {_fmt_diff(lv['paired'][k])} | — | "
                   f"{verdict(lv['paired'][k])} |")
  return "\n".join(lines) + "\n"


COLORS = {"sft_sample_rank": "tab:blue", "rso_sample_rank": "tab:orange", "raft": "tab:green",
          "rest": "tab:red", "direct": "tab:purple"}


def plot_frontier(path: str, study: Study, summary: Mapping, references: Mapping) -> None:
  """r* against KL per level: each setting's mean path over seeds, π*_β over π_sft's
  candidates (a β grid) and best-of-64 on the report prompts."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  levels = [lv for lv in study.design.levels if lv in summary]
  fig, axes = plt.subplots(1, len(levels), figsize=(4.2 * len(levels), 3.6), squeeze=False,
                           sharey=True)
  ref = references["test"]
  for ax, level in zip(axes[0], levels):
    for setting, per_seed in summary[level]["settings"].items():
      curves = [np.asarray(v["curve"]) for v in per_seed.values()]
      if not curves:
        continue
      n = min(len(c) for c in curves)
      mean = np.mean([c[:n] for c in curves], axis=0)
      ax.plot(mean[:, 0], mean[:, 1], marker="o", ms=3, label=setting, color=COLORS[setting])
    curve = sorted((c["kl"], c["golden"]) for c in ref["curve"])
    ax.plot([c[0] for c in curve], [c[1] for c in curve], "k--", lw=1, label="π*_β (candidates)")
    ax.axhline(ref["best_of_n"]["golden"], color="gray", ls=":", lw=1, label="best-of-64")
    ax.set_title(level)
    ax.set_xlabel("KL(π ‖ π_sft), nats")
  axes[0][0].set_ylabel("mean r* of samples (test)")
  handles = {}
  for ax in axes[0]:
    for h, label in zip(*ax.get_legend_handles_labels()):
      handles.setdefault(label, h)
  axes[0][-1].legend(list(handles.values()), list(handles), fontsize=7)
  fig.tight_layout()
  tmp = path + ".tmp.png"
  fig.savefig(tmp, dpi=110)
  plt.close(fig)
  os.replace(tmp, path)


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--run_root", default="runs/study")
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
  parser.add_argument("--levels", nargs="+", default=list(LEVELS), choices=list(LEVELS))
  parser.add_argument("--pairs", type=int, default=Design.pairs)
  parser.add_argument("--report", default=os.path.join(_ROOT, "benchmarks", "results",
                                                       "rso_study.md"))
  parser.add_argument("--plot", default=os.path.join(_ROOT, "benchmarks", "results",
                                                     "rso_study_frontier.png"))
  parser.add_argument("--dry_run", action="store_true")
  args = parser.parse_args(argv)
  design = Design(seeds=tuple(args.seeds), levels=tuple(args.levels), pairs=args.pairs)
  cells = [c for s in design.seeds for c in (
      [(lv, st, s) for lv in design.levels for st in SETTINGS]
      + [(lv, b, s) for lv in design.levels if lv in SFT_BASELINE_LEVELS for b in SFT_BASELINES]
      + [(None, b, s) for b in BASELINES])]
  if args.dry_run:
    print(json.dumps(dataclasses.asdict(design)))
    for c in cells:
      print(c)
    return 0
  study = Study(args.run_root, design)
  study.ensure_sft()
  study.ensure_rewards()
  study.ensure_references()
  for s in design.seeds:
    study.sft_curve_point(s)
  records = {}
  per_seed = len(cells) // len(design.seeds)
  for i, (level, setting, seed) in enumerate(cells):
    records[(level, setting, seed)] = study.run_cell(level, setting, seed)
    if (i + 1) % per_seed == 0:  # after each seed's cells
      write_report(study, records, args.report, args.plot, len(cells))
  return 0


def write_report(study: Study, records: Mapping, report: str, plot: str, total: int) -> None:
  rewards = study.ensure_rewards()
  references = study.ensure_references()
  summary = summarize(study, records)
  seconds = sum(r.get("seconds", 0.0) for r in records.values())
  fs.atomic_write_text(report, report_markdown(study, summary, rewards, references, seconds,
                                               len(records), total))
  _write_json(os.path.join(study.root, "summary.json"), summary)
  plot_frontier(plot, study, summary, references)


if __name__ == "__main__":
  raise SystemExit(main())
