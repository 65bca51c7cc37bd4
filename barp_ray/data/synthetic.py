"""The embedded default: a seeded synthetic routing world, so the main job runs with no data.

Tasks have distinct prompt styles (the encoder can tell them apart), models have task-specific
skills, and prices span more than two orders of magnitude, so a good router must read the prompt
*and* the preference: the frontier model wins on quality, specialists win on their own task at a
fraction of the price, and the tiny model is nearly free.
"""
from __future__ import annotations

import numpy as np

from barp_ray.data.table import ModelPrice, RoutingTable, make_table

# name -> (input $/Mtok, output $/Mtok)
MODELS: dict[str, tuple[float, float]] = {
    "tiny-1b": (0.04, 0.08),
    "chat-8b": (0.20, 0.40),
    "code-15b": (0.60, 1.20),
    "math-15b": (0.60, 1.20),
    "general-70b": (2.00, 6.00),
    "frontier-400b": (10.0, 30.0),
}

# task -> logit skill per model (same order as MODELS), output tokens
SKILL: dict[str, tuple[tuple[float, ...], int]] = {
    "arithmetic": ((-1.5, -0.5, 0.0, 2.6, 1.2, 2.8), 120),
    "coding": ((-2.0, -0.8, 2.6, 0.0, 1.2, 2.8), 350),
    "trivia": ((0.8, 1.4, -0.5, -0.5, 1.8, 2.2), 40),
    "translation": ((-0.3, 1.6, -1.0, -1.0, 1.7, 2.0), 80),
    "creative": ((-1.0, 0.9, -1.5, -1.5, 1.5, 2.4), 400),
    "reasoning": ((-2.5, -1.5, -0.5, 0.5, 0.8, 2.5), 250),
}

_NAMES = ["Alice", "Bashir", "Chen", "Dolores", "Emeka", "Freya", "Gustavo", "Hana", "Ivan", "Jun"]
_THINGS = ["apples", "marbles", "tickets", "books", "coins", "boxes", "stamps", "shells"]
_FUNCS = [
    "reverses a linked list",
    "parses an ISO-8601 date string",
    "computes the longest common subsequence of two strings",
    "merges overlapping intervals",
    "checks whether a binary tree is balanced",
    "implements an LRU cache with O(1) operations",
    "finds all prime numbers below n with a sieve",
    "serializes a nested dictionary to query-string form",
    "detects a cycle in a directed graph",
    "rate-limits calls with a token bucket",
]
_LANGS = ["Python", "Rust", "Go", "TypeScript", "Java"]
_TRIVIA = [
    ("capital", ["Australia", "Canada", "Kenya", "Peru", "Norway", "Vietnam", "Morocco", "Chile"]),
    ("longest river", ["Africa", "Europe", "South America", "Asia", "North America"]),
    ("author", ["Don Quixote", "War and Peace", "One Hundred Years of Solitude", "Beloved", "Dracula"]),
    ("year of", ["the fall of the Berlin Wall", "the first Moon landing", "the Treaty of Westphalia"]),
]
_SENTENCES = [
    "The weather is lovely today and we will walk to the market.",
    "Please send me the quarterly report before Friday afternoon.",
    "My grandmother grew tomatoes in a small garden behind the house.",
    "The train to the airport leaves every twenty minutes.",
    "Could you recommend a quiet restaurant near the river?",
    "The museum is closed on Mondays for maintenance.",
]
_TARGETS = ["French", "German", "Japanese", "Spanish", "Swahili", "Portuguese"]
_FORMS = ["sonnet", "haiku sequence", "short story", "limerick", "villanelle", "fable"]
_TOPICS = ["a lighthouse keeper", "autumn in a city", "a lost robot", "the first snowfall", "an old violin"]
_PUZZLES = [
    "If all bloops are razzies and some razzies are lazzies, must some bloops be lazzies? Explain step by step.",
    "A clause in a lease says the tenant pays repairs 'except structural defects'. Who pays for a cracked foundation, and why?",
    "Three boxes are labelled wrongly as apples, oranges and mixed. You may draw one fruit from one box. How do you relabel all boxes?",
    "A patient on warfarin starts a course of antibiotics. What interaction should a clinician watch for and why?",
    "Two trains leave stations 300 km apart toward each other at 70 and 80 km/h. A bird flies between them at 120 km/h until they meet. How far does it fly?",
    "Is the statement 'this sentence is false' true or false? Discuss the paradox and one proposed resolution.",
]


def _prompt(task: str, rng: np.random.Generator) -> tuple[str, float]:
    """One prompt in the task's style and its latent difficulty in [0, 1]."""
    if task == "arithmetic":
        digits = int(rng.integers(1, 6))
        a, b = (int(rng.integers(10 ** (digits - 1), 10**digits)) for _ in range(2))
        name, thing = rng.choice(_NAMES), rng.choice(_THINGS)
        steps = int(rng.integers(1, 4))
        text = f"{name} has {a} {thing} and buys {b} more, then gives away a third of them"
        text += " and doubles the rest" * (steps - 1) + f". How many {thing} does {name} have now?"
        return text, (digits - 1) / 4 * 0.6 + (steps - 1) / 2 * 0.4
    if task == "coding":
        func, lang = rng.choice(_FUNCS), rng.choice(_LANGS)
        hard = float(rng.random())
        extra = " Include unit tests and handle edge cases." if hard > 0.5 else ""
        return f"Write a {lang} function that {func}.{extra}", hard
    if task == "trivia":
        kind, options = _TRIVIA[int(rng.integers(len(_TRIVIA)))]
        item = rng.choice(options)
        text = {
            "capital": f"What is the capital city of {item}?",
            "longest river": f"Which is the longest river in {item}?",
            "author": f"Who wrote the novel {item}?",
            "year of": f"In what year did {item} happen?",
        }[kind]
        return text, float(rng.random()) * 0.6
    if task == "translation":
        n = int(rng.integers(1, 4))
        text = " ".join(rng.choice(_SENTENCES, size=n, replace=False))
        return f"Translate into {rng.choice(_TARGETS)}: \"{text}\"", (n - 1) / 2
    if task == "creative":
        return f"Write a {rng.choice(_FORMS)} about {rng.choice(_TOPICS)}.", float(rng.random())
    if task == "reasoning":
        return str(rng.choice(_PUZZLES)), 0.4 + 0.6 * float(rng.random())
    raise ValueError(task)


def synthetic_table(n_prompts: int = 3000, seed: int = 0) -> RoutingTable:
    """A reproducible world: same seed, same prompts, scores and costs."""
    rng = np.random.default_rng(seed)
    task_names = list(SKILL)
    models = list(MODELS)
    prompts, tasks, scores, costs = [], [], [], []
    for i in range(n_prompts):
        task = task_names[i % len(task_names)]
        text, difficulty = _prompt(task, rng)
        skill, out_tokens = SKILL[task]
        logits = np.asarray(skill) - 2.5 * difficulty + 0.3 * rng.normal(size=len(models))
        p = 1.0 / (1.0 + np.exp(-logits))
        # Exact-match style tasks are pass/fail; open-ended ones get graded scores.
        q = (rng.random(len(models)) < p).astype(np.float32) if task in ("arithmetic", "coding", "trivia") else p
        in_tokens = 1.3 * len(text.split()) + 20  # words -> tokens, plus a chat template
        out = out_tokens * (1.0 + 0.5 * difficulty)
        c = [(in_tokens * MODELS[m][0] + out * MODELS[m][1]) / 1e6 for m in models]
        prompts.append(text)
        tasks.append(task)
        scores.append(q)
        costs.append(c)
    return make_table(
        prompts,
        tasks,
        np.clip(np.asarray(scores), 0, 1),
        costs,
        models,
        prices={m: ModelPrice(*MODELS[m]) for m in models},
        source=f"synthetic(seed={seed}, n={n_prompts})",
        cost_note="synthetic: (1.3*words+20) input tokens, per-task output length scaled by difficulty",
    )
