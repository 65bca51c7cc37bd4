"""Loader for the public LLMRouter routing data (ulab-uiuc), priced into per-query dollars.

The score files hold quality only; the price file holds $/Mtok only. A per-query bill has to be
derived, so this module makes the derivation explicit and records it on the table (`cost_note`)
so that every downstream result can say how its costs were computed.

Quirks of the published files that this loader handles on purpose:
* The order of the keys inside `scores` changes from record to record, so model sets are compared
  as sets and the column order is taken from `default_llm.json` instead.
* A few query texts are listed twice in the query files, six of them under two different tasks
  (an OpenBookQA/ARC question also filed under mmlu). The split's own query file is consulted
  first, and within a file the *last* listing wins: it is the dataset-specific one.
* 119 questions (gpqa, human_eval, mbpp) are in both `dcrouter_train.json` and
  `dcrouter_test.json`, with scores that differ for some of them. `split="all"` keeps both copies,
  as asked for; deduplicate or hold out by task if that leak matters to an experiment.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from barp_ray.data.table import DataError, ModelPrice, RoutingTable, make_table

SCORE_FILES = {"train": "dcrouter_train.json", "test": "dcrouter_test.json"}
QUERY_FILES = {"train": "default_query_train.jsonl", "test": "default_query_test.jsonl"}
PRICE_FILE = "default_llm.json"
SPLITS = ("train", "test", "all")


def load_llmrouter(
    directory: str | Path,
    output_tokens: int | dict[str, int] = 256,
    encoder: str = "packaged",
    split: str = "all",
) -> RoutingTable:
    """Read one split (or train then test) of the LLMRouter data and price every (prompt, model).

    cost = input_tokens * input_price / 1e6 + output_tokens * output_price / 1e6, where input tokens
    come from the encoder's real tokenizer and output tokens are the stated assumption
    `output_tokens`: a fixed count, or a per-task count (a "default" key covers the other tasks).
    """
    root = Path(directory)
    if not root.is_dir():
        raise DataError(f"{root}: LLMRouter data directory not found")
    if split not in SPLITS:
        raise DataError(f"{root}: split must be one of {list(SPLITS)}, got {split!r}")

    prices = _read_prices(_require(root / PRICE_FILE))
    query_tasks = {name: _read_query_tasks(_require(root / fname)) for name, fname in QUERY_FILES.items()}

    parts = ["train", "test"] if split == "all" else [split]
    questions: list[str] = []
    tasks: list[str] = []
    score_rows: list[dict[str, float]] = []
    model_set: frozenset[str] | None = None
    first_file: Path | None = None
    for part in parts:
        path = _require(root / SCORE_FILES[part])
        lookup_order = [query_tasks[part]] + [query_tasks[p] for p in QUERY_FILES if p != part]
        for number, question, scores in _read_score_records(path):
            if model_set is None:
                model_set, first_file = frozenset(scores), path
            elif frozenset(scores) != model_set:
                missing = sorted(model_set - set(scores))
                extra = sorted(set(scores) - model_set)
                raise DataError(
                    f"{path} record {number}: model set differs from the first record of {first_file}"
                    f" (missing {missing}, extra {extra})"
                )
            task = next((found[question] for found in lookup_order if question in found), None)
            if task is None:
                raise DataError(
                    f"{path} record {number}: question has no task in {root / QUERY_FILES['train']}"
                    f" or {root / QUERY_FILES['test']}: {_preview(question)}"
                )
            questions.append(question)
            tasks.append(task)
            score_rows.append(scores)
    if model_set is None:
        raise DataError(f"{root / SCORE_FILES[parts[0]]}: no records")

    unknown = sorted(model_set - set(prices))
    if unknown:
        raise DataError(f"{root / PRICE_FILE}: no price entry for model(s) {unknown} scored in {first_file}")
    models = [m for m in prices if m in model_set]

    out_per_prompt, out_desc = _output_lengths(output_tokens, tasks, root)
    from barp_ray.encoder import count_tokens, encoder_id  # lazy: the tokenizer and torch

    costs = token_costs(count_tokens(questions, encoder), out_per_prompt,
                        [prices[m].input_per_mtok for m in models], [prices[m].output_per_mtok for m in models])
    scores = np.asarray([[row[m] for m in models] for row in score_rows], dtype=np.float64)

    note = (
        f"LLMRouter prices from {PRICE_FILE} ($/Mtok); cost = input_tokens*input_price/1e6"
        f" + output_tokens*output_price/1e6; input_tokens = {encoder_id(encoder)} WordPiece token"
        f" count of the prompt (no special tokens, no chat template; a proxy for each model's own"
        f" tokenizer); output_tokens = {out_desc} (assumed, not measured)"
    )
    return make_table(
        questions,
        tasks,
        scores,
        costs,
        models,
        prices={m: prices[m] for m in models},
        sizes={m: v for m, v in _read_sizes(root / PRICE_FILE).items() if m in models},
        source=f"{root} (llmrouter, split={split})",
        cost_note=note,
    )


def token_costs(in_tokens, out_tokens, input_per_mtok, output_per_mtok) -> np.ndarray:
    """[N, K] dollars per query: input tokens x input price + output tokens x output price, prices in $
    per million tokens. How LLMRouter's logs are priced here, and how serving estimates a route's cost
    (`serve/budget.py`), so the two agree."""
    in_price = np.asarray(input_per_mtok, dtype=np.float64) / 1e6
    out_price = np.asarray(output_per_mtok, dtype=np.float64) / 1e6
    in_tokens = np.asarray(in_tokens, dtype=np.float64)
    out_tokens = np.broadcast_to(np.asarray(out_tokens, dtype=np.float64), in_tokens.shape)
    return in_tokens[:, None] * in_price[None, :] + out_tokens[:, None] * out_price[None, :]


def route_costs(prices: dict, models, tokens, output_tokens: int) -> np.ndarray:
    """[N, K] dollars per route from a {model: {input_per_mtok, output_per_mtok}} mapping: the rule
    above with the assumed answer length for every prompt (what calibrate, the live budget, a
    route's cost limit and `barp route-dataset` estimate with)."""
    return token_costs(tokens, output_tokens, [prices[m]["input_per_mtok"] for m in models],
                       [prices[m]["output_per_mtok"] for m in models])


def _require(path: Path) -> Path:
    if not path.is_file():
        raise DataError(f"{path}: file not found (expected in an LLMRouter data directory)")
    return path


def _load_json(path: Path) -> Any:
    try:
        with path.open(encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def _read_prices(path: Path) -> dict[str, ModelPrice]:
    """Model name -> price, in file order: that order becomes the table's column order."""
    raw = _load_json(path)
    if not isinstance(raw, dict):
        raise DataError(f"{path}: expected a JSON object of model -> info, got {type(raw).__name__}")
    prices: dict[str, ModelPrice] = {}
    for model, info in raw.items():
        if not isinstance(info, dict):
            raise DataError(f"{path}: entry for model {model!r} is not an object")
        values = []
        for key in ("input_price", "output_price"):
            value = info.get(key)
            if not _is_number(value) or not np.isfinite(value) or value < 0:
                what = "missing" if value is None else f"{value!r}, not a non-negative number"
                raise DataError(f"{path}: model {model!r} has {key} {what}")
            values.append(float(value))
        prices[str(model)] = ModelPrice(*values)
    return prices


def parameter_count(size) -> float | None:
    """'7B' or '2.9 b' -> billions of parameters; None for anything else (the field is free text)."""
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*[bB]\s*", str(size))
    return float(match.group(1)) if match else None


def _read_sizes(path: Path) -> dict[str, float]:
    """Model -> billions of parameters from the price file's 'size', where it parses."""
    sizes = {m: parameter_count(info.get("size")) for m, info in _load_json(path).items() if isinstance(info, dict)}
    return {m: v for m, v in sizes.items() if v is not None}


def _read_query_tasks(path: Path) -> dict[str, str]:
    """Query text -> task name; a later listing of the same text replaces an earlier one."""
    tasks: dict[str, str] = {}
    try:
        with path.open(encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{path} line {number}: invalid JSON: {e.msg}") from None
                if not isinstance(record, dict):
                    raise DataError(f"{path} line {number}: expected a JSON object, got {type(record).__name__}")
                for key in ("query", "task_name"):
                    if not isinstance(record.get(key), str):
                        state = "missing" if key not in record else "not a string"
                        raise DataError(f"{path} line {number}: {key!r} {state}")
                tasks[record["query"]] = record["task_name"]
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    return tasks


def _read_score_records(path: Path) -> list[tuple[int, str, dict[str, float]]]:
    """(1-based record number, question, model -> score), validated record by record."""
    raw = _load_json(path)
    if not isinstance(raw, list):
        raise DataError(f"{path}: expected a JSON list of records, got {type(raw).__name__}")
    out = []
    for number, record in enumerate(raw, start=1):
        where = f"{path} record {number}"
        if not isinstance(record, dict):
            raise DataError(f"{where}: expected an object, got {type(record).__name__}")
        question, scores = record.get("question"), record.get("scores")
        if not isinstance(question, str):
            raise DataError(f"{where}: 'question' {'missing' if question is None else 'not a string'}")
        if not isinstance(scores, dict) or not scores:
            raise DataError(f"{where}: 'scores' {'missing' if scores is None else 'not a non-empty object'}")
        for model, score in scores.items():
            if not _is_number(score) or not np.isfinite(score):
                raise DataError(f"{where}: score for model {model!r} is {score!r}, not a number")
            if not 0.0 <= score <= 1.0:
                raise DataError(f"{where}: score for model {model!r} is {score}, outside [0, 1]")
        out.append((number, question, {str(m): float(s) for m, s in scores.items()}))
    return out


def _output_lengths(output_tokens: int | dict[str, int], tasks: list[str], root: Path) -> tuple[np.ndarray, str]:
    """Per-prompt output length and a wording of the assumption for the cost note."""
    if isinstance(output_tokens, dict):
        lengths = {str(k): _token_count(v, f"output_tokens[{k!r}]", root) for k, v in output_tokens.items()}
        uncovered = sorted(set(tasks) - set(lengths)) if "default" not in lengths else []
        if uncovered:
            raise DataError(f"{root}: output_tokens has no 'default' and no entry for task(s) {uncovered}")
        fallback = lengths.get("default", 0)
        per_prompt = np.asarray([lengths.get(t, fallback) for t in tasks], dtype=np.float64)
        desc = "per task " + ", ".join(f"{k}={v}" for k, v in sorted(lengths.items()))
        return per_prompt, desc
    fixed = _token_count(output_tokens, "output_tokens", root)
    return np.full(len(tasks), float(fixed)), f"fixed {fixed} per query"


def _token_count(value: Any, name: str, root: Path) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise DataError(f"{root}: {name} must be a non-negative integer, got {value!r}")
    return int(value)


def _is_number(value: Any) -> bool:
    # bool is an int subclass; a True score is a data bug, not a 1.0
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _preview(text: str, width: int = 60) -> str:
    flat = " ".join(text.split())
    return repr(flat if len(flat) <= width else flat[: width - 3] + "...")
