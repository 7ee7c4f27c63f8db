"""Progress lines for the stages that run longer than a few seconds.

  Progress(what, total, unit)   `update(done)` prints `<what> 4,096/16,000 prompts | 310
                                prompts/s | ETA 0m38s` at most every `every` seconds (and at
                                the end), on process 0
  format_seconds                `0m38s`, `1h02m`
"""
from __future__ import annotations

import math
import time
from typing import Callable, Optional

import jax


def format_seconds(s: float) -> str:
  """`1m05s` under an hour, `1h02m` from an hour on, `?` when unknown."""
  if not math.isfinite(s):
    return "?"
  s = int(s)
  return f"{s // 3600}h{(s % 3600) // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class Progress:
  """Rate and ETA of `total` units of work, printed as they are done (see the module doc)."""

  def __init__(self, what: str, total: int, unit: str = "prompts", every: float = 10.0,
               print_fn: Optional[Callable[[str], None]] = None):
    self.what, self.total, self.unit, self.every = what, int(total), unit, float(every)
    self.print_fn = print_fn or (lambda line: print(line, flush=True))
    self.start = self._last = time.time()

  def update(self, done: int, total: Optional[int] = None) -> None:
    total = self.total if total is None else int(total)
    now = time.time()
    if done < total and now - self._last < self.every:
      return
    self._last = now
    elapsed = max(now - self.start, 1e-9)
    rate = done / elapsed
    eta = (total - done) / rate if rate > 0 else float("inf")
    if jax.process_index() == 0:
      self.print_fn(f"{self.what} {done:,}/{total:,} {self.unit} | {rate:,.0f} {self.unit}/s | "
                    + (f"ETA {format_seconds(eta)}" if done < total
                       else f"done in {format_seconds(elapsed)}"))
