"""What a model-conditioned policy knows about each model it may route to.

A fixed-K head learns one logit per model and cannot score a model it has not trained on. The
model-conditioned head instead scores (prompt, preference, model card), so the card is all a new
model needs: today's prices, its size where known, and (for models seen in training) a learned
vector. The feature list is part of a checkpoint's contract: a checkpoint trained on other
features is refused, not silently misread.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Iterable

import numpy as np

FEATURES = ("log_input_price", "log_output_price", "log_size_b", "size_known")
PRICE_FLOOR = 0.01  # $/Mtok added inside the logs, so a free input side stays finite


class CardError(ValueError):
    """A model list is unusable; the message names the field."""


@dataclass(frozen=True)
class ModelCard:
    name: str
    input_per_mtok: float
    output_per_mtok: float
    size_b: float | None = None  # billions of parameters; None when the provider does not say

    @property
    def blended_price(self) -> float:
        return self.input_per_mtok + self.output_per_mtok

    def features(self) -> list[float]:
        size = self.size_b if self.size_b else None
        return [
            math.log(self.input_per_mtok + PRICE_FLOOR),
            math.log(self.output_per_mtok + PRICE_FLOOR),
            math.log(size / 10.0) if size else 0.0,
            1.0 if size else 0.0,
        ]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def feature_matrix(cards: Iterable[ModelCard]) -> np.ndarray:
    return np.asarray([c.features() for c in cards], dtype=np.float32)


def check_cards(cards: list[ModelCard], where: str = "models") -> list[ModelCard]:
    if not cards:
        raise CardError(f"{where}: the model set is empty; offer at least one model")
    seen: set[str] = set()
    for c in cards:
        if not c.name:
            raise CardError(f"{where}: a model has an empty name")
        if c.name in seen:
            raise CardError(f"{where}.{c.name}: listed twice")
        seen.add(c.name)
        for f in ("input_per_mtok", "output_per_mtok"):
            v = getattr(c, f)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v < 0:
                raise CardError(f"{where}.{c.name}.{f}: must be a number >= 0 ($ per million tokens), got {v!r}")
        if c.blended_price <= 0:
            raise CardError(f"{where}.{c.name}: input_per_mtok + output_per_mtok must be > 0")
        if c.size_b is not None and (not isinstance(c.size_b, (int, float)) or isinstance(c.size_b, bool)
                                     or not math.isfinite(c.size_b) or c.size_b <= 0):
            raise CardError(f"{where}.{c.name}.size_b: must be a number > 0 (billions of parameters) or absent, got {c.size_b!r}")
    return cards


def parse_cards(raw: Any, where: str = "models") -> list[ModelCard]:
    """A serving or training config's model list: {name: {input_per_mtok, output_per_mtok[, size_b]}}."""
    if not isinstance(raw, dict):
        raise CardError(f"{where}: must be a mapping of model name to {{input_per_mtok, output_per_mtok, size_b}}, "
                        f"got {type(raw).__name__}")
    cards = []
    for name, spec in raw.items():
        if not isinstance(spec, dict):
            raise CardError(f"{where}.{name}: must be {{input_per_mtok, output_per_mtok[, size_b]}}, got {spec!r}")
        unknown = sorted(set(spec) - {"input_per_mtok", "output_per_mtok", "size_b"})
        if unknown:
            raise CardError(f"{where}.{name}: unknown field(s) {unknown}")
        for f in ("input_per_mtok", "output_per_mtok"):
            if f not in spec:
                raise CardError(f"{where}.{name}.{f}: missing (every offered model needs its price)")
        cards.append(ModelCard(str(name), spec["input_per_mtok"], spec["output_per_mtok"], spec.get("size_b")))
    return check_cards(cards, where)


def cards_for(models: Iterable[str], prices: dict, sizes: dict | None = None, where: str = "data") -> list[ModelCard]:
    """Cards from a table's (or a checkpoint's) prices and sizes; prices are ModelPrice or plain dicts."""
    cards = []
    for m in models:
        p = prices.get(m)
        if p is None:
            raise CardError(f"{where}: no price for model {m!r}")
        p = p if isinstance(p, dict) else vars(p)
        cards.append(ModelCard(m, float(p["input_per_mtok"]), float(p["output_per_mtok"]), (sizes or {}).get(m)))
    return check_cards(cards, where)
