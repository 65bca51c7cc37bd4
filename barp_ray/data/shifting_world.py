"""A live world the router never saw in training: the online-adaptation benchmark's users.

Prompts come from topics that share nothing with the synthetic training world's templates. For
each topic one hidden model is the expert (expected score `expert_score`); every other model
scores uniformly in `[low, high]`. Observed scores are Bernoulli draws, as pass/fail feedback
from real users is. `shift()` hands every topic's expertise to another model, the way a model
update or a new provider changes which model is best. Costs are the served models' real
prices times the prompt's token count, so cost-aware preferences stay meaningful.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

TOPICS: dict[str, tuple[str, list[str]]] = {
    "sql": ("Write a SQL query that {x}.", [
        "lists customers with more than three unpaid invoices", "finds the second highest salary per department",
        "counts daily active users over the last week", "returns products never ordered",
        "joins orders to shipments and flags late deliveries", "computes a running total of sales by month",
        "deduplicates rows keeping the newest record", "ranks stores by revenue within each region"]),
    "poetry": ("Compose a poem {x}.", [
        "about rain on a tin roof", "in the voice of an old oak tree", "about a child's first day at school",
        "mourning a lost friendship", "celebrating a harvest festival", "about the silence after snowfall",
        "describing a busy night market", "about a sailor returning home"]),
    "law": ("As a legal question: {x}", [
        "can a landlord keep a deposit for normal wear and tear?", "is a verbal contract for a car sale enforceable?",
        "who owns the copyright of work made by a contractor?", "can an employer read an employee's work email?",
        "what happens to a will signed without witnesses?", "is a non-compete clause valid after being fired?",
        "can a neighbour's tree roots damaging my wall be cut back?", "must a shop honour a mispriced item?"]),
    "chemistry": ("Chemistry: {x}", [
        "balance the combustion of propane", "why does ice float on water?", "explain how a buffer keeps pH stable",
        "what is the hybridisation of carbon in ethyne?", "predict the products of sodium with water",
        "why are noble gases unreactive?", "how does a catalyst lower activation energy?",
        "compute the molarity of 5 g NaCl in 250 ml"]),
    "travel": ("Travel planning: {x}", [
        "a three-day itinerary for Lisbon on a budget", "what to pack for a winter trek in Patagonia",
        "how to get from Narita airport to Shibuya at night", "the best season to visit Rajasthan",
        "a family road trip through the Scottish Highlands", "visa basics for a week in Brazil",
        "quiet beaches near Split in August", "a rainy-day plan for Amsterdam with kids"]),
    "finance": ("Personal finance: {x}", [
        "should I pay off my student loan or invest?", "explain how an index fund works",
        "how big should an emergency fund be?", "what is dollar-cost averaging?",
        "compare a fixed and a variable mortgage rate", "how are capital gains taxed on shares?",
        "how to budget with an irregular income", "what does an expense ratio mean?"]),
}
_PREFIXES = ["", "Quick question. ", "Please help: ", "I need this for work. ", "Be precise. ", "Hi! "]


@dataclass
class ShiftingWorld:
    models: list[str]
    prices: dict[str, tuple[float, float]]  # $/Mtok (input, output)
    topics: list[str] = field(default_factory=lambda: ["sql", "poetry", "law", "chemistry"])
    expert_score: float = 0.9
    low: float = 0.1
    high: float = 0.45
    output_tokens: int = 200
    seed: int = 0

    def __post_init__(self) -> None:
        unknown = [t for t in self.topics if t not in TOPICS]
        if unknown:
            raise ValueError(f"topics: unknown {unknown}; known: {sorted(TOPICS)}")
        self.rng = np.random.default_rng(self.seed)
        self.shifts = 0
        k, t = len(self.models), len(self.topics)
        self.base = self.rng.uniform(self.low, self.high, size=(t, k))
        self.experts = self.rng.choice(k, size=t, replace=t > k)
        self._texts = {name: [p + TOPICS[name][0].format(x=x) for x in TOPICS[name][1] for p in _PREFIXES]
                       for name in self.topics}

    def shift(self) -> None:
        """Every topic's expert moves to a different model; the other models' skills are redrawn."""
        self.shifts += 1
        rng = np.random.default_rng([self.seed, self.shifts])  # the same shift for every copy of this world
        k = len(self.models)
        self.experts = np.asarray([(e + 1 + rng.integers(k - 1)) % k for e in self.experts])
        self.base = rng.uniform(self.low, self.high, size=self.base.shape)

    def expected_scores(self, topic: int) -> np.ndarray:
        s = self.base[topic].copy()
        s[self.experts[topic]] = self.expert_score
        return s

    def all_prompts(self) -> list[str]:
        """Every prompt this world can ask (encode them once, then look embeddings up)."""
        return sorted({t for texts in self._texts.values() for t in texts})

    def prompts(self, n: int, rng: np.random.Generator | None = None) -> tuple[list[str], np.ndarray]:
        """n (prompt, topic index) pairs, topics in equal proportion on average."""
        rng = rng or self.rng
        topics = rng.integers(len(self.topics), size=n)
        texts = [self._texts[self.topics[i]][rng.integers(len(self._texts[self.topics[i]]))] for i in topics]
        return texts, topics

    def outcome(self, topic: int, model: int, prompt: str) -> tuple[float, float]:
        """What the user reports for one answer: a Bernoulli score and the dollars it cost."""
        score = float(self.rng.random() < self.expected_scores(topic)[model])
        return score, self.cost(model, prompt)

    def cost(self, model: int, prompt: str) -> float:
        """Dollars for one answer: the model's prices times the prompt's and the answer's tokens."""
        inp, out = self.prices[self.models[model]]
        tokens_in = 1.3 * len(prompt.split()) + 20
        return (tokens_in * inp + self.output_tokens * out) / 1e6

    def uniform_score(self, topics: np.ndarray) -> float:
        return float(np.mean([self.expected_scores(t).mean() for t in topics]))

    def oracle_score(self, topics: np.ndarray) -> float:
        return float(np.mean([self.expected_scores(t).max() for t in topics]))

    def score_of(self, topics: np.ndarray, choices: np.ndarray) -> float:
        return float(np.mean([self.expected_scores(t)[a] for t, a in zip(topics, choices)]))


class LiveUsers:
    """Users of a running router: route each prompt over HTTP, report the world's outcome as feedback.

    `post(path, body) -> (status, json)` is any HTTP client bound to the service. Outcomes are drawn
    under a lock so concurrent clients share one reproducible world.
    """

    def __init__(self, post, world: ShiftingWorld, preference=(1.0, 0.0)):
        import threading

        self.post, self.world = post, world
        self.preference = {"quality": float(preference[0]), "cost": float(preference[1])}
        self._lock = threading.Lock()
        self.index = {m: i for i, m in enumerate(world.models)}

    def one_round(self, prompt: str, topic: int) -> dict:
        st, r = self.post("/v1/route", {"prompt": prompt, "preference": self.preference})
        if st != 200:
            return {"ok": False, "stage": "route", "status": st, "error": r}
        a = self.index[r["model"]]
        with self._lock:
            score, cost = self.world.outcome(topic, a, prompt)
            expected = float(self.world.expected_scores(topic)[a])
        st, f = self.post("/v1/feedback", {"request_id": r["request_id"], "score": score, "cost": cost})
        if st != 200:
            return {"ok": False, "stage": "feedback", "status": st, "error": f}
        return {"ok": True, "action": a, "score": score, "expected": expected, "cost": cost,
                "reward": f["reward"], "propensity": r["propensity"], "version": r["policy_version"]}

    def play(self, prompts: list[str], topics: np.ndarray, clients: int = 8) -> list[dict]:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(clients) as pool:
            return list(pool.map(self.one_round, prompts, topics))

    def greedy_choices(self, prompts: list[str], clients: int = 8) -> tuple[np.ndarray, set[int]]:
        """The service's pure-exploitation choice per prompt (no feedback is sent for these)."""
        from concurrent.futures import ThreadPoolExecutor

        def one(p):
            st, r = self.post("/v1/route", {"prompt": p, "preference": self.preference, "mode": "greedy"})
            if st != 200:
                raise RuntimeError(f"greedy route failed: {st} {r}")
            return self.index[r["model"]], r["policy_version"]

        with ThreadPoolExecutor(clients) as pool:
            out = list(pool.map(one, prompts))
        return np.asarray([a for a, _ in out]), {v for _, v in out}
