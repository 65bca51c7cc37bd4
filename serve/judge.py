"""Feedback without a client: an LLM judge grades a share of barp-auto's chat answers.

Why: the live loop learns only from feedback, and most deployments have no score of their own to
send. With `judge.model` set, each ingress replica asks that model (any entry under `upstreams`)
to grade a `judge.share` of the answers it relayed, 0-10, and posts grade / 10 as the answer's
score, with the cost the service priced the answer at (its usage at the served prices) as the
cost, so the reward is the training formula's. The judge's own bill is not charged to the routed
model. An answer that could not be priced is not graded: a reward needs a cost.

What the judge sees: the request (the last user message; a longer one than `judge.max_answer_chars`
as its start and its end, where a question after a long document usually is), the conversation
before it (its newest `judge.max_answer_chars` characters, so a follow-up is graded in context) and
the answer, cut to `judge.max_answer_chars`. The router then learns the judge's
taste, biases included (judges favour long answers and their own family): use a judge you trust
on your tasks, or scores from your users. The first feedback for a request wins. To mix in your
users' own scores where they give one, set `judge.defer_s`: the judge waits that long, and an
answer whose feedback has arrived meanwhile is not graded (nor paid for).

Grading runs in the background of the ingress replica (at most `judge.max_concurrent` at once;
an answer that finds every slot busy when its turn comes is not graded). A replica that stops mid-grading loses that grade; the
decision then retires at the reward wait time as any unanswered one does.
"""
from __future__ import annotations

import asyncio
import random
import re
from typing import Any, Awaitable, Callable

from serve.settings import JudgeSettings
from serve.upstream import UpstreamError

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def parse_grade(text: Any) -> float | None:
    """The first number in the judge's reply as a score in [0, 1]; None if there is none in 0-10."""
    if not isinstance(text, str):
        return None
    m = _NUMBER.search(text)
    if m is None:
        return None
    grade = float(m.group())
    return grade / 10 if 0 <= grade <= 10 else None


class Judge:
    """`post(request_id, score)` records the score as feedback (the cost is the priced one) and
    returns the outcome for the metric: scored, client_first, or refused. `pending(request_id)`:
    whether the request still waits for feedback (read after `defer_s`)."""

    def __init__(self, settings: JudgeSettings, upstreams, post: Callable[[str, float], Awaitable[str]],
                 count: Callable[[str], None], pending: Callable[[str], Awaitable[bool]] | None = None,
                 rng: random.Random | None = None):
        self.settings, self.upstreams, self.post, self.count, self.pending = settings, upstreams, post, count, pending
        self.rng = rng or random.Random()
        self._slots = asyncio.Semaphore(settings.max_concurrent) if settings.model else None
        self._tasks: set[asyncio.Task] = set()  # referenced until done, or the loop may drop them

    def wanted(self) -> bool:
        return self.settings.model is not None and self.rng.random() < self.settings.share

    def submit(self, request_id: str, prompt: str, answer: str, earlier: str = "") -> bool:
        """Grade in the background (after `defer_s`); False when no judge is configured. `earlier`:
        the conversation before the prompt, if any."""
        if self._slots is None:
            return False
        task = asyncio.get_running_loop().create_task(self._grade(request_id, prompt, answer, earlier))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def _grade(self, request_id: str, prompt: str, answer: str, earlier: str = "") -> None:
        s = self.settings
        if s.defer_s > 0:
            await asyncio.sleep(s.defer_s)
            if self.pending is not None and not await self.pending(request_id):
                self.count("client_first")
                return
        if self._slots.locked():
            self.count("busy")
            return
        async with self._slots:
            payload = {"model": s.model, "temperature": 0, "max_tokens": 8, "messages": [
                {"role": "system", "content": s.instructions},
                {"role": "user", "content": (f"Conversation before the request:\n{earlier[-s.max_answer_chars:]}\n\n" if earlier else "")
                 + f"Request:\n{_ends(prompt, s.max_answer_chars)}\n\nAnswer:\n{answer[:s.max_answer_chars]}"}]}
            try:
                resp = await self.upstreams.open(s.model, payload, stream=False)
                try:
                    data = await resp.json(content_type=None)
                finally:
                    resp.release()
                reply = data["choices"][0]["message"]["content"] if resp.status == 200 else None
            except (UpstreamError, ValueError, KeyError, IndexError, TypeError, TimeoutError):
                self.count("judge_failed")
                return
            score = parse_grade(reply)
            if score is None:
                self.count("unparsed" if resp.status == 200 else "judge_failed")
                return
            self.count(await self.post(request_id, score))


def _ends(text: str, limit: int) -> str:
    """A text cut to about `limit` characters by keeping its start and its end."""
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]}\n[... {len(text) - 2 * half} characters left out ...]\n{text[-half:]}"
