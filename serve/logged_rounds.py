"""Logged rounds as continuous training and off-policy evaluation read them.

One joined reward from the feedback store becomes one row (`logged_row`); rows become a policy's
observation columns over the models it routes (`offered_rows`, `observations`). The trainer and
`barp ope` share these, so a checkpoint judged offline sees the rounds exactly as the trainer would
train on them.
"""
from __future__ import annotations

import zlib
from typing import Any

import numpy as np

from serve.feedback_store import decode_vector


def held_back(request_id: str, fraction: float) -> bool:
    """Whether a round is in the held-back share `fraction` of all rounds: a fixed function of its
    request id, so the trainer's gate, `barp replay` and `barp ope` split the same rounds alike."""
    return zlib.crc32(request_id.encode()) % 10_000 < fraction * 10_000


def offer_of(decision: dict) -> dict:
    """What a logged decision carries into training: `allowed`, the request's `candidates` (None:
    it did not narrow the choice) and `prices` {name: blended $/Mtok} it was made under ({} if none).

    Candidates and prices are part of a round's context: the request allowed only those models,
    and its cost was paid at those prices, so the policy is scored under both. The model set
    offered then is not: the policy being trained is today's, over today's models, and the DR
    estimate of it on an old round (the critic's value of every model offered now, plus the
    importance-weighted correction pi_now(a) / mu_then(a)) stays unbiased where mu covered a.
    Masking old rounds to their old set instead would drop that view on every round logged before
    a model was offered (in the one run tried, `bench/new_model_online.py --quality 0.7`, the
    newcomer first held >= 80 % of its topic after 1,000 rounds with the mask, 750 without)."""
    models, prices = decision.get("models"), decision.get("prices")
    candidates = decision.get("candidates")
    return {"allowed": None if candidates is None else frozenset(candidates),
            "prices": dict(zip(models, prices)) if models and prices else {}}


def logged_row(record: dict[str, Any]) -> dict[str, Any]:
    """A joined reward (`RewardReader` record) as a row: context, served model and its exact
    propensity mu, the reward, and the offer it was made under."""
    return {
        "id": int(record["id"]),
        "embedding": decode_vector(record["embedding"]),
        "preference": np.asarray(record["preference"], dtype=np.float32),
        "model": record["model"],
        "mode": record.get("mode", "explore"),
        "logp": float(np.log(max(float(record["behaviour_prob"]), 1e-6))),
        "mu": float(record["behaviour_prob"]),
        "reward": float(record["reward"]),
        "score": None if record.get("defaulted") or record.get("score") is None else float(record["score"]),
        **offer_of(record),
    }


def offered_rows(rows: list[dict], models: tuple[str, ...], log_prices: np.ndarray | None) -> list[dict]:
    """Rows whose model is among `models`, with its index there as the action, and each round's
    context beyond (x, w), over these models (`offer_of` says why these two): `allowed_mask` (the
    request's candidates; all of `models` if it named none) and, for a head that reads prices
    (`log_prices`: its log price per model), `log_price` (the prices the round was made under; a
    model it did not price at `log_prices`)."""
    index = {m: i for i, m in enumerate(models)}
    out = []
    for r in rows:
        if r["model"] not in index:
            continue
        allowed = r["allowed"]
        row = {**r, "action": index[r["model"]],
               "allowed_mask": np.asarray([allowed is None or m in allowed for m in models])}
        if log_prices is not None:
            then = r["prices"]
            row["log_price"] = np.asarray([np.log(then[m]) if m in then else p for m, p in zip(models, log_prices)],
                                          dtype=np.float32)
        out.append(row)
    return out


def head_log_prices(module) -> np.ndarray | None:
    """A module's log price per model as its head reads them; None for a head that reads no prices."""
    log_price = getattr(module, "log_price", None)
    return None if log_price is None else log_price.detach().cpu().numpy()


def observations(rows: list[dict]) -> dict[str, np.ndarray]:
    """The observation columns of offered rows, with the candidates and prices each was made under."""
    from barp_ray.rl_module import ALLOWED, LOG_PRICE

    obs = {"embedding": np.stack([r["embedding"] for r in rows]),
           "preference": np.stack([r["preference"] for r in rows]),
           ALLOWED: np.stack([r["allowed_mask"] for r in rows]).astype(np.float32)}
    if rows and "log_price" in rows[0]:
        obs[LOG_PRICE] = np.stack([r["log_price"] for r in rows])
    return obs
