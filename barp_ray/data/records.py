"""Our own interchange format: one record per prompt, with every model's score and dollar cost.

It exists so that any routing log (a converted benchmark, production traffic replayed through
several models) can be used without writing a loader: one JSON object per line, or the same
fields in Parquet. Costs are stored, not derived, so the file is self-contained; whoever writes
it owns the pricing assumption.

    {"prompt": "...", "task": "gsm8k", "scores": {"a": 1.0, "b": 0.0}, "costs": {"a": 2e-05, "b": 9e-05}}

Parquet stores `scores` and `costs` as struct columns (one field per model, in column order):
structs keep the model order and read back as plain dicts. Map columns are accepted on read,
since other tools tend to write those.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from barp_ray.data.table import DataError, RoutingTable, make_table

JSONL_SUFFIXES = (".jsonl", ".json")
PARQUET_SUFFIXES = (".parquet",)
DEFAULT_TASK = "default"


def load_records(path: str | Path) -> RoutingTable:
    """Read a records file (.jsonl/.json as JSON Lines, .parquet) into a table, checking every record."""
    path = Path(path)
    reader = _reader_for(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    prompts: list[str] = []
    tasks: list[str] = []
    scores: list[list[float]] = []
    costs: list[list[float]] = []
    models: list[str] | None = None
    first_where = ""
    for where, record in reader(path):
        prompt, task, row_scores, row_costs = _check_record(record, where)
        if models is None:
            models, first_where = list(row_scores), where
        elif set(row_scores) != set(models):
            missing = sorted(set(models) - set(row_scores))
            extra = sorted(set(row_scores) - set(models))
            raise DataError(
                f"{where}: model set differs from the first record ({first_where}): missing {missing}, extra {extra}"
            )
        prompts.append(prompt)
        tasks.append(task)
        scores.append([row_scores[m] for m in models])
        costs.append([row_costs[m] for m in models])
    if models is None:
        raise DataError(f"{path}: no records")
    return make_table(
        prompts, tasks, scores, costs, models, prices=_parquet_prices(path) if path.suffix.lower() in PARQUET_SUFFIXES else None,
        sizes=_parquet_sizes(path) if path.suffix.lower() in PARQUET_SUFFIXES else None,
        source=str(path), cost_note=f"dollar costs as stored in {path.name}"
    )


PRICES_KEY = b"barp_prices"  # Parquet schema metadata: {model: [input, output] $/Mtok}
SIZES_KEY = b"barp_sizes"  # Parquet schema metadata: {model: billions of parameters}


def _parquet_prices(path: Path) -> dict:
    """Model prices written with the table (a price-aware policy needs them); {} when absent."""
    import pyarrow.parquet as pq

    from barp_ray.data.table import ModelPrice

    meta = pq.read_schema(path).metadata or {}
    if PRICES_KEY not in meta:
        return {}
    return {m: ModelPrice(*map(float, v)) for m, v in json.loads(meta[PRICES_KEY]).items()}


def _parquet_sizes(path: Path) -> dict:
    """Model sizes written with the table (model-conditioned policies read them); {} when absent."""
    import pyarrow.parquet as pq

    meta = pq.read_schema(path).metadata or {}
    return {m: float(v) for m, v in json.loads(meta[SIZES_KEY]).items()} if SIZES_KEY in meta else {}


def write_records(table: RoutingTable, path: str | Path) -> None:
    """Write `table` so that `load_records` gives back the same prompts, tasks, models, scores and costs."""
    path = Path(path)
    _reader_for(path)  # refuse an unknown extension before writing anything
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() in PARQUET_SUFFIXES:
        _write_parquet(table, path)
    else:
        _write_jsonl(table, path)


def _reader_for(path: Path):
    suffix = path.suffix.lower()
    if suffix in JSONL_SUFFIXES:
        return _read_jsonl
    if suffix in PARQUET_SUFFIXES:
        return _read_parquet
    raise DataError(f"{path}: unknown records extension {suffix!r}; use .jsonl, .json (JSON Lines) or .parquet")


def _read_jsonl(path: Path) -> Iterator[tuple[str, Any]]:
    try:
        with path.open(encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                where = f"{path} line {number}"
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    hint = " (one JSON object per line, not a JSON array)" if line.lstrip().startswith("[") else ""
                    raise DataError(f"{where}: invalid JSON: {e.msg}{hint}") from None
                yield where, record
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def _read_parquet(path: Path) -> Iterator[tuple[str, Any]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        data = pq.read_table(path)
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{path}: not a readable Parquet file ({e})") from None
    for column in ("prompt", "scores", "costs"):
        if column not in data.column_names:
            raise DataError(f"{path}: column {column!r} missing (columns are {data.column_names})")
    present = [name for name in ("prompt", "task", "scores", "costs") if name in data.column_names]
    columns = {name: data.column(name).to_pylist() for name in present}
    for i in range(data.num_rows):
        record = {name: values[i] for name, values in columns.items() if values[i] is not None}
        for field in ("scores", "costs"):
            if isinstance(record.get(field), list):  # a map column reads back as [(key, value), ...]
                record[field] = dict(record[field])
        yield f"{path} row {i + 1}", record


def _check_record(record: Any, where: str) -> tuple[str, str, dict[str, float], dict[str, float]]:
    if not isinstance(record, dict):
        hint = " (one JSON object per line, not a JSON array)" if isinstance(record, list) else ""
        raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}{hint}")
    prompt = record.get("prompt")
    if not isinstance(prompt, str):
        raise DataError(f"{where}: 'prompt' {'missing' if prompt is None else 'is not a string'}")
    task = record.get("task", DEFAULT_TASK)
    if task is None:
        task = DEFAULT_TASK
    if not isinstance(task, str):
        raise DataError(f"{where}: 'task' is {task!r}, not a string")
    scores = _check_mapping(record, "scores", where)
    costs = _check_mapping(record, "costs", where)
    if set(scores) != set(costs):
        raise DataError(
            f"{where}: 'scores' and 'costs' name different models:"
            f" only in scores {sorted(set(scores) - set(costs))}, only in costs {sorted(set(costs) - set(scores))}"
        )
    for model, value in scores.items():
        if not 0.0 <= value <= 1.0:
            raise DataError(f"{where}: score for model {model!r} is {value}, outside [0, 1]")
    for model, value in costs.items():
        if value < 0.0:
            raise DataError(f"{where}: cost for model {model!r} is {value}, negative")
    return prompt, task, scores, costs


def _check_mapping(record: dict, field: str, where: str) -> dict[str, float]:
    value = record.get(field)
    if value is None:
        raise DataError(f"{where}: {field!r} missing")
    if not isinstance(value, dict) or not value:
        raise DataError(f"{where}: {field!r} must be a non-empty object of model -> number")
    out: dict[str, float] = {}
    noun = field[:-1]  # "score" / "cost"
    for model, number in value.items():
        if number is None or isinstance(number, bool) or not isinstance(number, (int, float)):
            raise DataError(f"{where}: {noun} for model {model!r} is {number!r}, not a number")
        if not math.isfinite(number):
            raise DataError(f"{where}: {noun} for model {model!r} is {number}, not finite")
        out[str(model)] = float(number)
    return out


def _write_jsonl(table: RoutingTable, path: Path) -> None:
    with path.open("w", encoding="utf-8") as f:
        for i in range(table.n):
            record = {
                "prompt": str(table.prompts[i]),
                "task": str(table.tasks[i]),
                # str() of a float32 is its shortest exact spelling: short in the file, exact on reload
                "scores": {m: float(str(s)) for m, s in zip(table.models, table.scores[i])},
                "costs": {m: float(c) for m, c in zip(table.models, table.costs[i])},
            }
            f.write(json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n")


def _write_parquet(table: RoutingTable, path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    def struct(matrix: np.ndarray, kind) -> pa.StructArray:
        fields = [pa.array(matrix[:, j], type=kind) for j in range(table.k)]
        return pa.StructArray.from_arrays(fields, names=list(table.models))

    data = pa.table(
        {
            "prompt": pa.array([str(p) for p in table.prompts], type=pa.string()),
            "task": pa.array([str(t) for t in table.tasks], type=pa.string()),
            "scores": struct(np.asarray(table.scores, dtype=np.float32), pa.float32()),
            "costs": struct(np.asarray(table.costs, dtype=np.float64), pa.float64()),
        }
    )
    meta = {}
    if table.prices:
        prices = {m: [p.input_per_mtok, p.output_per_mtok] for m, p in table.prices.items()}
        meta[PRICES_KEY] = json.dumps(prices).encode()
    if table.sizes:
        meta[SIZES_KEY] = json.dumps(table.sizes).encode()
    if meta:
        data = data.replace_schema_metadata(meta)
    pq.write_table(data, path)
