"""The text layouts the reward models read, in Python (no TensorFlow here).

  CONTEXT_TAG, RESPONSE_LABEL   the pairwise ranking input's tags
  BT_SEPARATOR                  the Bradley-Terry model's packed input `x [RESPONSE] y`
  ranking_input_text            `[CONTEXT] x [RESPONSE A] y_a [RESPONSE B] y_b`

The seqio preprocessors and feature converters build the same strings in TF (tests compare
them), so training and inference read one format.
"""
from __future__ import annotations

CONTEXT_TAG = "[CONTEXT]"
RESPONSE_LABEL = "RESPONSE"  # "[RESPONSE A]"/"[RESPONSE B]"; the paper uses SUMMARY for TL;DR.
BT_SEPARATOR = " [RESPONSE] "


def ranking_input_text(prompt: str, response_a: str, response_b: str,
                       response_label: str = RESPONSE_LABEL) -> str:
  """`[CONTEXT] x [RESPONSE A] y_a [RESPONSE B] y_b`, the pairwise ranking task's input."""
  return " ".join([CONTEXT_TAG, prompt, f"[{response_label} A]", response_a,
                   f"[{response_label} B]", response_b])
