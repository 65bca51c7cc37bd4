"""How each simulated round's preference w = (w_q, w_c) is drawn.

Training across many w is what lets one policy serve every trade-off at inference time.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

KINDS = ("uniform", "dirichlet", "fixed")


@dataclass(frozen=True)
class PreferenceSampler:
    kind: str = "uniform"
    alpha: tuple[float, float] = (1.0, 1.0)  # dirichlet concentration
    values: tuple[tuple[float, float], ...] = field(default_factory=tuple)  # fixed list, drawn uniformly

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"preference.kind must be one of {KINDS}, got {self.kind!r}")
        if self.kind == "dirichlet" and (len(self.alpha) != 2 or min(self.alpha) <= 0):
            raise ValueError(f"preference.alpha must be two positive numbers, got {list(self.alpha)}")
        if self.kind == "fixed":
            if not self.values:
                raise ValueError("preference.values must list at least one [w_quality, w_cost] pair")
            for v in self.values:
                check_simplex(v, "preference.values")

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """[n, 2] float32 rows on the simplex."""
        if self.kind == "uniform":
            wq = rng.random(n)
        elif self.kind == "dirichlet":
            wq = rng.beta(self.alpha[0], self.alpha[1], size=n)
        else:
            table = np.asarray(self.values, dtype=np.float64)
            wq = table[rng.integers(len(table), size=n), 0]
        return np.stack([wq, 1.0 - wq], axis=1).astype(np.float32)

    @classmethod
    def from_dict(cls, spec: dict | None) -> "PreferenceSampler":
        spec = dict(spec or {})
        unknown = set(spec) - {"kind", "alpha", "values"}
        if unknown:
            raise ValueError(f"preference: unknown key(s) {sorted(unknown)}")
        return cls(
            kind=spec.get("kind", "uniform"),
            alpha=tuple(float(a) for a in spec.get("alpha", (1.0, 1.0))),
            values=tuple(tuple(float(x) for x in v) for v in spec.get("values", ())),
        )


def check_simplex(w, field_name: str = "preference", atol: float = 1e-4) -> tuple[float, float]:
    """Validate one preference pair; the message names the field, for configs and HTTP alike."""
    try:
        wq, wc = (float(x) for x in w)
    except (TypeError, ValueError):
        raise ValueError(f"{field_name}: expected two numbers [w_quality, w_cost], got {w!r}") from None
    if not (np.isfinite(wq) and np.isfinite(wc)):
        raise ValueError(f"{field_name}: weights must be finite, got {[wq, wc]}")
    if wq < 0 or wc < 0 or abs(wq + wc - 1.0) > atol:
        raise ValueError(f"{field_name}: weights must be >= 0 and sum to 1, got {[wq, wc]}")
    return wq, wc
