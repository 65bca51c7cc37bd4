"""Which models a request's own limits leave barp-auto: `max_latency_s` and `max_cost`, and the
models' context windows (`context_windows`, live), which a request's length must fit.

Why per request: the policy weighs quality against cost on average, by the trade-off the request
sends; a limit is a hard line the application draws for this one request (an interactive turn
that must start within 2 s, a free-tier user whose question may cost at most $0.002). Both limits
narrow the request's candidates, which the decision record keeps, so its propensity is over the
models offered and the trainer masks the same ones: training stays unbiased.

A limit compares an estimate per model. When no candidate meets it, the one nearest to it (the
fastest, the cheapest) answers alone and the answer says so (`latency_unmet`, `cost_unmet`): a
slow or dear answer rather than none. A model without an estimate is kept under a latency limit
(a provider is only timed by being tried) and left out under a cost limit (an unpriced model could
cost anything).

A context window is the model's limit, not the request's: a model whose window the request's tokens
(its whole input as billed, plus the answer's cap if it sets one) overflow is left out, a model with
no known window kept; when every window is too small, the largest takes it (`context_unmet`), and its
provider decides. Tokens are counted by the router's tokenizer, a proxy for each provider's own.

A capability (`capabilities`, live: images, audio, tools, a JSON schema) is the model's too, and
unlike a window it has no nearest miss: a model known to lack one the request needs is left out, a
model with no known capabilities kept, and when every candidate lacks one the request is refused
(a provider without image input cannot answer a question about an image at any price).
"""
from __future__ import annotations

from barp_ray.data.llmrouter import route_costs


def within_limit(estimates: dict[str, float | None], limit: float, keep_unknown: bool = True) -> tuple[list[str], bool]:
    """(the models the limit allows, whether any met it): those whose estimate is within it, and the
    unknown (None) if `keep_unknown`; when none is, the one with the lowest estimate alone (all, if
    none has an estimate)."""
    allowed = [m for m, e in estimates.items() if (e is None and keep_unknown) or (e is not None and e <= limit)]
    if allowed:
        return allowed, True
    known = {m: e for m, e in estimates.items() if e is not None}
    return ([min(known, key=known.get)] if known else list(estimates)), False


def narrowed(models: list[str], mask: list[bool] | None, estimates_of, limit: float,
             keep_unknown: bool = True) -> tuple[list[bool], bool]:
    """(the candidate mask with the limit applied, whether any candidate met it): `estimates_of(allowed)`
    gives each still-allowed model's estimate; `within_limit` decides."""
    allowed = [m for j, m in enumerate(models) if mask is None or mask[j]]
    kept, met = within_limit(estimates_of(allowed), limit, keep_unknown)
    return [m in kept for m in models], met


def route_cost_estimates(prices: dict, models: list[str], input_tokens: int, output_tokens: int) -> dict[str, float | None]:
    """Dollars per model for one request, priced as training priced LLMRouter and as the budget
    estimates (`route_costs`, the offer's $ per million tokens); None for a model the offer gives no price."""
    priced = [m for m in models if prices.get(m)]
    dollars = route_costs(prices, priced, [input_tokens], output_tokens)[0] if priced else []
    known = dict(zip(priced, (float(d) for d in dollars)))
    return {m: known.get(m) for m in models}


def context_overflow(windows: dict[str, int], models: list[str], tokens: int) -> dict[str, float | None]:
    """Tokens by which a request of `tokens` overflows each model's context window (<= 0: it fits);
    None for a model with no known window."""
    return {m: float(tokens - windows[m]) if m in windows else None for m in models}


def lacking(capabilities: dict[str, tuple[str, ...]], models: list[str], needs: list[str]) -> dict[str, float | None]:
    """How many of the request's `needs` each model is known to lack (0: it has them all); None for
    a model with no known capabilities."""
    return {m: float(len(set(needs) - set(capabilities[m]))) if m in capabilities else None for m in models}
