"""A grid of gin overrides -> one run each: locally one after another, or printed (`--dry_run`).

    python launch/sweep.py --gin_file=gin/rso_hinge.gin \\
        --grid="sample/sample.sample_configured.beta=[0.05, 0.5, 5.0]" \\
        --grid="LOSS=['hinge_norm', 'sigmoid_norm']" --dry_run [-- --gin.RUN_DIR=\\"runs/x\\"]

Each `--grid=BINDING=[v1, v2, ...]` takes a Python/gin literal list; the runs are the cartesian
product, each with its `--gin.BINDING=v` overrides and its own name in `--name_macro`
(default POLICY_NAME: an experiment's policy goes to RUN_DIR/POLICY_NAME, so the runs of one
sweep share RUN_DIR's SFT and reward model, and the sampling stage's outputs are keyed by its
bindings). Flags after `--` go to every run unchanged. `--launcher="bash launch/tpu_pod.sh TPU
ZONE"` (or launch/multinode_gpu.sh) prefixes each run with a launch script instead of
`python -m rso_jax.train`: the first gin file becomes its positional argument.

Exit status: 0 every run finished (or printed), 2 a bad grid (one line naming it), else the
first failing run's status (the runs after it are not started).
"""

from __future__ import annotations

import argparse
import ast
import itertools
import json
import re
import shlex
import subprocess
import sys
from typing import List, Sequence, Tuple

_BINDING = re.compile(r"^[A-Za-z_][\w./]*$")


class GridError(ValueError):
  """A `--grid` that is not BINDING=[literal, ...]."""


def parse_grid(spec: str) -> Tuple[str, list]:
  """`"NAME=[v1, v2]"` -> ("NAME", [v1, v2]); values are Python literals (gin accepts them)."""
  name, sep, values = spec.partition("=")
  name = name.strip()
  if not sep or not _BINDING.match(name):
    raise GridError(f"--grid={spec!r}: expected BINDING=[v1, v2, ...] with a gin binding or "
                    "macro name")
  try:
    parsed = ast.literal_eval(values.strip())
  except (ValueError, SyntaxError):
    raise GridError(f"--grid={spec!r}: {values.strip()!r} is not a literal list (strings "
                    "need quotes: ['hinge_norm', 'sigmoid_norm'])") from None
  if not isinstance(parsed, list) or not parsed:
    raise GridError(f"--grid={spec!r}: the values must be a non-empty list")
  if len(set(map(repr, parsed))) != len(parsed):
    raise GridError(f"--grid={spec!r}: a value is repeated")
  return name, parsed


def _label(name: str, value) -> str:
  short = name.rsplit(".", 1)[-1].rsplit("/", 1)[-1]
  return re.sub(r"[^A-Za-z0-9.]+", "_", f"{short}={value}").strip("_")


def gin_literal(value) -> str:
  """A value as gin reads it (strings double-quoted: readable inside shell quotes)."""
  return json.dumps(value) if isinstance(value, str) else repr(value)


def expand(grids: Sequence[Tuple[str, list]], name_prefix: str) -> List[Tuple[str, List[str]]]:
  """The runs of the grid: [(run name, ["--gin.NAME=value", ...]), ...] in product order."""
  names = [n for n, _ in grids]
  if len(set(names)) != len(names):
    raise GridError(f"a binding is swept twice: {names}")
  runs = []
  for combo in itertools.product(*(values for _, values in grids)):
    label = "-".join([name_prefix] + [_label(n, v) for n, v in zip(names, combo)])
    runs.append((label, [f"--gin.{n}={gin_literal(v)}" for n, v in zip(names, combo)]))
  if len({label for label, _ in runs}) != len(runs):
    raise GridError("two runs of the grid get the same name: give values that differ "
                    "after removing punctuation")
  return runs


def commands(gin_files: Sequence[str], grids: Sequence[Tuple[str, list]], extra: Sequence[str],
             *, name_macro: str = "POLICY_NAME", name_prefix: str = "sweep",
             launcher: str = "") -> List[List[str]]:
  """One argv per run of the grid (see the module docstring)."""
  if not gin_files:
    raise GridError("give at least one --gin_file")
  out = []
  for label, overrides in expand(grids, name_prefix):
    named = [f"--gin.{name_macro}={gin_literal(label)}"] if name_macro else []
    if launcher:
      head = [*shlex.split(launcher), gin_files[0],
              *(f"--gin_file={f}" for f in gin_files[1:])]
    else:
      head = [sys.executable, "-m", "rso_jax.train", *(f"--gin_file={f}" for f in gin_files)]
    out.append([*head, *extra, *overrides, *named])
  return out


def split_extra(argv: Sequence[str] | None) -> Tuple[List[str], List[str]]:
  """(this script's flags, the flags after `--` that go to every run); None = sys.argv."""
  argv = list(sys.argv[1:] if argv is None else argv)
  if "--" not in argv:
    return argv, []
  cut = argv.index("--")
  return argv[:cut], argv[cut + 1:]


def main(argv: Sequence[str] | None = None) -> int:
  argv, extra = split_extra(argv)
  p = argparse.ArgumentParser(prog="python launch/sweep.py", description=__doc__.splitlines()[0])
  p.add_argument("--gin_file", action="append", default=[], help="repeatable, in order")
  p.add_argument("--grid", action="append", default=[], help="BINDING=[v1, v2, ...]")
  p.add_argument("--name_macro", default="POLICY_NAME", help="'' = do not name the runs")
  p.add_argument("--name_prefix", default="sweep")
  p.add_argument("--launcher", default="", help="e.g. 'bash launch/tpu_pod.sh TPU ZONE'")
  p.add_argument("--dry_run", action="store_true", help="print the commands, run nothing")
  args = p.parse_args(argv)
  try:
    cmds = commands(args.gin_file, [parse_grid(g) for g in args.grid], extra,
                    name_macro=args.name_macro, name_prefix=args.name_prefix,
                    launcher=args.launcher)
  except GridError as e:
    print(f"sweep: {e}", file=sys.stderr)
    return 2
  for i, cmd in enumerate(cmds, 1):
    print(f"[{i}/{len(cmds)}] {shlex.join(cmd)}", flush=True)
    if args.dry_run:
      continue
    rc = subprocess.run(cmd).returncode
    if rc:
      print(f"sweep: run {i}/{len(cmds)} failed with exit status {rc}; the {len(cmds) - i} "
            "after it were not started", file=sys.stderr)
      return rc
  return 0


if __name__ == "__main__":
  sys.exit(main())
