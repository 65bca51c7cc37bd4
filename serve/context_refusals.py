"""The shortest request each provider has refused as too long, in each ingress replica.

Why: a model whose context window the operator did not give (`context_windows`) is found out the
hard way, by a provider's 400 and a failover. Without a memory every later request as long pays that
round trip again. A refusal at T tokens bounds the window from above, in the router's own token
count, so nothing needs reading from the provider's wording or converting between tokenizers:
a request of at least T tokens is not offered to that model again. Shorter ones still are, and a
shorter refusal lowers the bound.

Per replica and in memory, as the breakers are: each replica learns from its own traffic, and a
restart forgets (a provider that raised its window is then tried again). Like every other
narrowing, the decision keeps the candidates it was offered, so training stays unbiased; and it is
advice: when every candidate has refused shorter requests, all are tried.
"""
from __future__ import annotations


class ContextRefusals:
    def __init__(self) -> None:
        self._shortest: dict[str, int] = {}
        self._count: dict[str, int] = {}

    def __bool__(self) -> bool:
        return bool(self._shortest)

    def refused(self, model: str, tokens: int) -> None:
        self._shortest[model] = min(tokens, self._shortest.get(model, tokens))
        self._count[model] = self._count.get(model, 0) + 1

    def fitting(self, models: list[str], tokens: int) -> list[str]:
        """The models that never refused a request this long; all of them if that leaves none."""
        ok = [m for m in models if tokens < self._shortest.get(m, tokens + 1)]
        return ok or list(models)

    def snapshot(self) -> dict[str, dict]:
        return {m: {"refused_at_tokens": t, "refusals": self._count[m]} for m, t in sorted(self._shortest.items())}
