"""The service's exploring policy, and the off-policy estimates that guard weight rollout.

Served requests are chosen from
    mu(a | x, w) = (1 - epsilon) * softmax(log pi(. | x, w) / temperature)[a] + epsilon / |allowed|
over the models a request allows. The epsilon floor is what keeps a confident policy learning:
every allowed model is tried with probability >= epsilon / |allowed|, so a model that has become
the best one is found within a predictable number of rounds, and every logged propensity is
bounded away from 0 (importance weights <= |allowed| / epsilon). The logged propensity of a
served request is exactly mu(a | x, w).
"""
from __future__ import annotations

import numpy as np


def exploring_distribution(probs: np.ndarray, epsilon: float, temperature: float = 1.0,
                           mask: np.ndarray | None = None) -> np.ndarray:
    """[B, K] served distribution from the policy's [B, K] probabilities (mask: [B, K] or [K] bools)."""
    p = np.asarray(probs, dtype=np.float64)
    allowed = np.ones_like(p, dtype=bool) if mask is None else np.broadcast_to(np.asarray(mask, dtype=bool), p.shape)
    if temperature != 1.0:
        logp = np.log(np.clip(p, 1e-300, None)) / temperature
        p = np.exp(logp - logp.max(-1, keepdims=True))
    p = np.where(allowed, p, 0.0)
    total = p.sum(-1, keepdims=True)
    uniform = allowed / allowed.sum(-1, keepdims=True)
    p = np.where(total > 0, p / np.where(total > 0, total, 1.0), uniform)
    return (1.0 - epsilon) * p + epsilon * uniform


def snips_value(target_probs: np.ndarray, actions: np.ndarray, logged_probs: np.ndarray, rewards: np.ndarray,
                record_weights: np.ndarray | None = None) -> float:
    """Self-normalised IPS estimate of a policy's mean reward from logged (a, mu(a), r).

    `record_weights` (e.g. recency) multiply each record's importance weight."""
    w = target_probs[np.arange(len(actions)), actions] / np.clip(logged_probs, 1e-12, None)
    if record_weights is not None:
        w = w * record_weights
    return float(np.sum(w * rewards) / max(np.sum(w), 1e-12))


def dr_value(target_probs: np.ndarray, q_values: np.ndarray, actions: np.ndarray, logged_probs: np.ndarray,
             rewards: np.ndarray, record_weights: np.ndarray | None = None, self_normalise: bool = True) -> float:
    """Doubly robust estimate: the critic's value of the target policy, corrected on each logged
    record by the importance-weighted error of the critic on the model actually served.

    Why not only SNIPS: with an epsilon floor spread over K models, a model that has just become
    the best is logged a few times per hundred rounds, and a held-back share of that is a handful
    of records; SNIPS then barely sees what a candidate gained and holds adaptation back. The
    critic (trained on the other records) fills that in; the correction keeps the estimate
    unbiased where the critic is wrong."""
    n = np.arange(len(actions))
    rho = target_probs[n, actions] / np.clip(logged_probs, 1e-12, None)
    weights = np.ones(len(actions)) if record_weights is None else np.asarray(record_weights, dtype=np.float64)
    direct = np.sum(weights * (target_probs * q_values).sum(-1)) / max(np.sum(weights), 1e-12)
    residual = rewards - q_values[n, actions]
    if not self_normalise:
        return float(direct + np.sum(weights * rho * residual) / max(np.sum(weights), 1e-12))
    return float(direct + np.sum(weights * rho * residual) / max(np.sum(weights * rho), 1e-12))


def recency_weights(n: int, half_life: float) -> np.ndarray:
    """Weights for n records, oldest first: the newest weighs 1, one `half_life` older weighs 1/2."""
    if half_life <= 0:
        return np.ones(n)
    return 0.5 ** (np.arange(n)[::-1] / half_life)


def dr_terms(target_probs: np.ndarray, q_values: np.ndarray, actions: np.ndarray, logged_probs: np.ndarray,
             rewards: np.ndarray, record_weights: np.ndarray, self_normalise: bool = True,
             weight_clip: float | None = None) -> np.ndarray:
    """Per-record values whose weighted mean is the doubly robust estimate (to first order for the
    self-normalised one: its correction is linearised, rho_i / mean(rho) times the residual's
    deviation from the weighted mean residual). The gate pairs them record by record to put a
    standard error on candidate minus serving; the checkpoint anchor's gate sums them
    (`weight_clip` caps rho there)."""
    n = np.arange(len(actions))
    w = np.asarray(record_weights, dtype=np.float64)
    rho = target_probs[n, actions] / np.clip(logged_probs, 1e-12, None)
    if weight_clip is not None:
        rho = np.minimum(rho, weight_clip)
    residual = rewards - q_values[n, actions]
    direct = (target_probs * q_values).sum(-1)
    if not self_normalise:
        return direct + rho * residual
    mean_rho = max(np.sum(w * rho) / np.sum(w), 1e-12)
    mean_residual = np.sum(w * rho * residual) / max(np.sum(w * rho), 1e-12)
    return direct + mean_residual + rho / mean_rho * (residual - mean_residual)


def weighted_mean_se(values: np.ndarray, weights: np.ndarray) -> float:
    """Standard error of a weighted mean, with Kish's effective sample size (sum w)^2 / sum w^2."""
    w = np.asarray(weights, dtype=np.float64)
    mean = np.sum(w * values) / np.sum(w)
    var = np.sum(w * (values - mean) ** 2) / np.sum(w)
    n_eff = np.sum(w) ** 2 / np.sum(w**2)
    return float(np.sqrt(var / max(n_eff - 1, 1)))
