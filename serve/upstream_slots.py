"""Requests in flight to each provider, in each ingress replica, and the cap an operator set on them.

Why a cap: a provider's quota or a self-hosted model's batch size bounds how many requests it can
take at once; past that it queues (slow answers) or refuses (429s). With `upstreams.<m>.max_concurrent`
set, a model at its cap is left out of barp-auto's candidates, as an open breaker is: a restriction
the decision record keeps, so training stays unbiased, and the request goes to a model that can take
it now. A request that names the model, or whose every candidate is full, is refused with a 429 and
`Retry-After`, since the operator's cap is a hard line (unlike the breaker's advice).

Per replica and in memory, as the breakers are: the service-wide limit is the cap × the ingress
replicas. A `Slot` is released exactly once, whichever comes first: the answer read, the stream's
end, or the stream being dropped unread (a client gone before the first chunk never runs the
stream's own `finally`, so the release also hangs on the stream object's collection).
"""
from __future__ import annotations

import weakref
from typing import Callable


class Slot:
    def __init__(self, release: Callable[[], None]):
        self._release: Callable[[], None] | None = release

    def release(self) -> None:
        release, self._release = self._release, None
        if release is not None:
            release()

    def release_with(self, owner: object) -> None:
        """Also release when `owner` (the stream relaying the answer) is collected."""
        weakref.finalize(owner, self.release)


class UpstreamSlots:
    def __init__(self, caps: dict[str, int | None], on_change: Callable[[str, int], None] | None = None):
        self.caps = {m: c for m, c in caps.items() if c is not None}
        self.on_change = on_change  # (model, in flight now): the ingress's gauge
        self._in_flight: dict[str, int] = {}

    def full(self, model: str) -> bool:
        cap = self.caps.get(model)
        return cap is not None and self._in_flight.get(model, 0) >= cap

    def free(self, models: list[str]) -> list[str]:
        return [m for m in models if not self.full(m)]

    def take(self, model: str) -> Slot | None:
        """A slot for one request to `model`, or None while it is at its cap."""
        if self.full(model):
            return None
        self._count(model, +1)
        return Slot(lambda: self._count(model, -1))

    def _count(self, model: str, step: int) -> None:
        self._in_flight[model] = self._in_flight.get(model, 0) + step
        if self.on_change:
            self.on_change(model, self._in_flight[model])

    def refusal(self, models: list[str]) -> str:
        return "; ".join(f"{m} has {self._in_flight.get(m, 0)} of {self.caps[m]}" for m in models if m in self.caps)

    def snapshot(self) -> dict[str, dict]:
        """Each model with requests in flight here or a cap: how many, and the cap."""
        return {m: {"in_flight": self._in_flight.get(m, 0), "max_concurrent": self.caps.get(m)}
                for m in sorted(set(self._in_flight) | set(self.caps))}
