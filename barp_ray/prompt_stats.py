"""Six cheap statistics of a prompt's text, read next to its embedding h(x) (`encoder.text_stats`).

MiniLM's embedding is a unit-length mean over at most 256 tokens, so it keeps what a prompt is
about and loses how it is put: a one-line multiple-choice question and a 1,500-character passage
on the same subject embed alike, and so do code and prose about code. Those are what decide which
models answer well (on LLMRouter's mmlu the short form and the long one favour different models).
The statistics give the policy that back for a few microseconds a prompt. On twelve validation
draws they bought one policy +0.0017 ± 0.0007 sweep reward, as much as the three-member ensemble; they
add nothing to the ensemble and lose on tasks the policy never saw (a prompt's form is its task's
signature), so they are off by default (`docs/results/preference_range_val`, session 48).

They are computed on the prompt as the client sent it, before any truncation for the encoder, and
scaled to be of order 1 like the rest of the network's inputs. The list is part of a checkpoint's
contract (its meta names it): change it only with a new name.
"""
from __future__ import annotations

import math
import re
from typing import Sequence

import numpy as np

NAMES = ("log_chars", "log_lines", "digit_share", "code_share", "log_choice_lines", "log_question_marks")
_DIGITS = "0123456789"
_CODE = "{}();=_[]<>"
_CHOICE_LINE = re.compile(r"(?m)^\s*\(?[A-E][\).:]")  # "A)", "(B)", "C." or "D:" opening a line


def _one(prompt: str) -> list[float]:
    n = len(prompt) + 1
    return [
        (math.log(n) - 6.0) / 1.5,  # ~400 characters -> 0; the train file spans about -2 to +2
        math.log(prompt.count("\n") + 1) / 2,
        10 * sum(prompt.count(c) for c in _DIGITS) / n,
        10 * sum(prompt.count(c) for c in _CODE) / n,
        math.log1p(len(_CHOICE_LINE.findall(prompt))),
        math.log1p(prompt.count("?")),
    ]


def text_stats(prompts: Sequence[str]) -> np.ndarray:
    """[N, len(NAMES)] float32, one row per prompt."""
    return np.asarray([_one(p) for p in prompts], dtype=np.float32).reshape(len(prompts), len(NAMES))
