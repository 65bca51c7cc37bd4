"""Loader for RouterBench (withmartian/routerbench): a wide DataFrame with one score and one bill per model.

RouterBench measured what each call cost, so unlike LLMRouter no pricing model is needed: the
`<model>|total_cost` column *is* the cost, and the table's `prices` stay empty. The same columns
are accepted from Parquet or CSV because people convert the pickle to avoid unpickling.
"""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from barp_ray.data.table import DataError, RoutingTable, make_table

COST_SUFFIX = "|total_cost"


def load_routerbench(path: str | Path, output_tokens_note: str | None = None) -> RoutingTable:
    """Read a RouterBench frame: models are the columns X for which `X|total_cost` also exists.

    `output_tokens_note` is appended to the cost note, for callers who know more about how the
    costs were produced than the file says. Only unpickle files you trust: a pickle can run code.
    """
    path = Path(path)
    frame = _read_frame(path)
    columns = [str(c) for c in frame.columns]
    frame.columns = columns
    for required in ("prompt", "eval_name"):
        if required not in columns:
            raise DataError(f"{path}: column {required!r} missing (columns start {columns[:8]})")
    models = [c for c in columns if not c.endswith(COST_SUFFIX) and c + COST_SUFFIX in columns]
    if not models:
        raise DataError(f"{path}: no model columns (need a column X together with 'X{COST_SUFFIX}')")
    if len(frame) == 0:
        raise DataError(f"{path}: no rows")

    scores = np.column_stack([_numeric(frame[m], path, f"score column {m!r}") for m in models])
    costs = np.column_stack([_numeric(frame[c], path, f"cost column {c!r}") for c in (m + COST_SUFFIX for m in models)])
    outside = (scores < 0) | (scores > 1)
    if outside.any():
        col = int(np.argmax(outside.any(axis=0)))
        row = int(np.argmax(outside[:, col]))
        raise DataError(
            f"{path}: score for model {models[col]!r} is {scores[row, col]} at row {row + 1}, outside [0, 1]"
            f" ({int(outside[:, col].sum())} such rows for this model)"
        )

    prompts = [_prompt_text(p, path, i) for i, p in enumerate(frame["prompt"].tolist(), start=1)]
    tasks = frame["eval_name"].astype(str).tolist()
    note = "RouterBench total_cost column (measured dollars per call)"
    if output_tokens_note:
        note += f"; {output_tokens_note}"
    return make_table(prompts, tasks, scores, costs, models, prices={}, source=str(path), cost_note=note)


def _read_frame(path: Path):
    import pandas as pd

    if not path.is_file():
        raise DataError(f"{path}: file not found")
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            frame = pd.read_parquet(path)
        elif suffix == ".csv":
            frame = pd.read_csv(path)
        else:
            frame = pd.read_pickle(path)
    except (pickle.UnpicklingError, EOFError, ImportError, AttributeError, TypeError, ValueError, OSError) as e:
        kind = {".parquet": "Parquet", ".csv": "CSV"}.get(suffix, "pickle")
        raise DataError(f"{path}: not a readable {kind} file ({type(e).__name__}: {e})") from None
    if not isinstance(frame, pd.DataFrame):
        raise DataError(f"{path}: expected a pandas DataFrame, the file holds a {type(frame).__name__}")
    return frame


def _numeric(column, path: Path, what: str) -> np.ndarray:
    """Float values, refusing NaN and text: silently dropping or zeroing rows would bias every model."""
    import pandas as pd

    values = pd.to_numeric(column, errors="coerce").to_numpy(dtype=np.float64)
    text = np.isnan(values) & column.notna().to_numpy()
    if text.any():
        row = int(np.argmax(text))
        raise DataError(
            f"{path}: {what} has {int(text.sum())} non-numeric row(s), first at row {row + 1}: {column.iloc[row]!r}"
        )
    missing = ~np.isfinite(values)
    if missing.any():
        raise DataError(
            f"{path}: {what} has {int(missing.sum())} NaN/infinite row(s) of {len(values)}, first at row"
            f" {int(np.argmax(missing)) + 1}"
        )
    return values


def _prompt_text(prompt, path: Path, row: int) -> str:
    """RouterBench stores some prompts as a list of turns; the encoder wants one string."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, (list, tuple, np.ndarray)):
        return "\n".join(str(part) for part in prompt)
    raise DataError(f"{path}: prompt at row {row} is a {type(prompt).__name__}, expected text or a list of text")
