"""Loaders turn real files into `RoutingTable`s, or fail with a `DataError` naming the file and the problem."""
from __future__ import annotations

import json
import os
import pickle
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from barp_ray.data import (  # noqa: E402
    DataError,
    load_llmrouter,
    load_records,
    load_routerbench,
    per_task_split,
    random_split,
    synthetic_table,
    task_split,
    write_records,
)

LLMROUTER_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "llmrouter"


def raises(*parts: str):
    """DataError whose message contains every part, in order (plain text, not regex)."""
    return pytest.raises(DataError, match=".*".join(re.escape(p) for p in parts))


# ---------------------------------------------------------------- LLMRouter, real files


@pytest.fixture(scope="module")
def llmrouter_test() -> "object":
    if not (LLMROUTER_DIR / "dcrouter_test.json").is_file():
        pytest.skip(f"LLMRouter data not found at {LLMROUTER_DIR}")
    return load_llmrouter(LLMROUTER_DIR, split="test")


def test_llmrouter_test_split_shapes(llmrouter_test):
    t = llmrouter_test
    assert t.n == 500 and t.k == 9
    assert t.scores.shape == t.costs.shape == (500, 9)
    assert t.models[0] == "qwen2.5-7b-instruct"  # default_llm.json order, not score-key order
    assert {"gpqa", "human_eval", "mbpp", "gsm8k", "agentverse-logicgrid"} <= set(t.task_names())
    assert len(t.task_names()) == 10
    assert set(t.prices) == set(t.models)
    assert "WordPiece" in t.cost_note and "fixed 256" in t.cost_note


def test_llmrouter_costs_follow_prices(llmrouter_test):
    t = llmrouter_test
    assert (t.costs > 0).all()
    cheap, dear = t.models.index("gemma-2-9b-it"), t.models.index("llama-3.1-nemotron-51b-instruct")
    assert t.prices[t.models[dear]].input_per_mtok > t.prices[t.models[cheap]].input_per_mtok
    assert (t.costs[:, dear] > t.costs[:, cheap]).all()
    # all prices here are equal for input and output, so the ratio is the price ratio exactly
    np.testing.assert_allclose(t.costs[:, dear] / t.costs[:, cheap], 9.0)


def test_llmrouter_per_task_output_tokens(llmrouter_test):
    t = load_llmrouter(LLMROUTER_DIR, output_tokens={"gpqa": 1000, "default": 0}, split="test")
    model = t.models.index("gemma-2-9b-it")
    per_token = t.prices["gemma-2-9b-it"].output_per_mtok / 1e6
    extra = llmrouter_test.costs[:, model] - t.costs[:, model]  # 256 -> 0 or 1000 output tokens
    gpqa = t.tasks == "gpqa"
    np.testing.assert_allclose(extra[~gpqa], 256 * per_token)
    np.testing.assert_allclose(extra[gpqa], (256 - 1000) * per_token)
    assert "gpqa=1000" in t.cost_note and "default=0" in t.cost_note


def test_random_split_sizes_and_disjoint(llmrouter_test):
    train, test = random_split(llmrouter_test, test_fraction=0.2, seed=0)
    assert (train.n, test.n) == (400, 100)
    assert not set(train.prompts.tolist()) & set(test.prompts.tolist())
    again, _ = random_split(llmrouter_test, test_fraction=0.2, seed=0)
    assert (again.prompts == train.prompts).all()


def test_task_split_holds_out_whole_tasks(llmrouter_test):
    held = ["gpqa", "human_eval"]
    train, test = task_split(llmrouter_test, held)
    assert train.n + test.n == 500 and test.n == 100
    assert not set(held) & set(train.task_names())
    assert set(test.task_names()) == set(held)
    with raises("not in the data"):
        task_split(llmrouter_test, ["no-such-task"])


def test_task_rows_are_one_tasks_prompts_and_an_unknown_task_names_the_ones_there_are(llmrouter_test):
    rows = llmrouter_test.task_rows("mmlu")
    assert len(rows) == 50 and set(llmrouter_test.subset(rows).task_names()) == {"mmlu"}
    with raises("no prompt of task 'no-such-task'; it has agentverse-logicgrid, "):
        llmrouter_test.task_rows("no-such-task")


def test_per_task_split_holds_out_the_same_number_of_each_named_task(llmrouter_test):
    import collections

    train, test = per_task_split(llmrouter_test, 10, ["gpqa", "mmlu", "mbpp"], seed=0)
    assert collections.Counter(test.tasks.astype(str).tolist()) == {"gpqa": 10, "mmlu": 10, "mbpp": 10}
    assert train.n + test.n == 500 and set(train.task_names()) == set(llmrouter_test.task_names())
    assert not set(train.prompts.tolist()) & set(test.prompts.tolist())
    again, _ = per_task_split(llmrouter_test, 10, ["gpqa", "mmlu", "mbpp"], seed=0)
    assert (again.prompts == train.prompts).all()
    _, every = per_task_split(llmrouter_test, 5, [], seed=1)
    assert every.n == 5 * len(llmrouter_test.task_names())
    with raises("'gpqa' has 50 prompts"):
        per_task_split(llmrouter_test, 50, ["gpqa"], seed=0)
    with raises("not in the data"):
        per_task_split(llmrouter_test, 5, ["no-such-task"], seed=0)


def test_per_task_split_repeats_a_share_of_held_out_prompts_in_training(llmrouter_test):
    """data.test_repeat_share: as the LLMRouter test file asks again train prompts of the tasks whose
    whole pool the train file holds, that share of a task's held-out prompts also trains; the held-out
    prompts themselves are the same draw as without repeats."""
    plain_train, plain_test = per_task_split(llmrouter_test, 10, ["gpqa", "mmlu", "mbpp"], seed=0)
    train, test = per_task_split(llmrouter_test, 10, ["gpqa", "mmlu", "mbpp"], seed=0,
                                 repeat_share={"gpqa": 1.0, "mbpp": 0.4})
    assert (test.prompts == plain_test.prompts).all()
    repeated = set(train.prompts.tolist()) & set(test.prompts.tolist())
    tasks = dict(zip(test.prompts.tolist(), test.tasks.astype(str).tolist()))
    assert sorted(tasks[p] for p in repeated) == ["gpqa"] * 10 + ["mbpp"] * 4
    assert train.n == plain_train.n + 14
    with raises("not in the data"):
        per_task_split(llmrouter_test, 5, ["gpqa"], seed=0, repeat_share={"no-such-task": 1.0})
    with raises("no prompt is held out of"):
        per_task_split(llmrouter_test, 5, ["gpqa"], seed=0, repeat_share={"mmlu": 1.0})


# ---------------------------------------------------------------- LLMRouter, bad files

HELLO = "Write hello world in C."
MODELS = {"cheap-1b": (0.1, 0.2), "dear-70b": (1.0, 2.0), "unused-7b": (0.3, 0.3)}


def make_llmrouter(root: Path, train=None, test=None, queries_train=None, queries_test=None, llm=None) -> Path:
    """A tiny LLMRouter directory; each argument replaces one file's content (str = raw text)."""
    root.mkdir(parents=True, exist_ok=True)
    train = train if train is not None else [
        {"question": "What is 2+2?", "scores": {"dear-70b": 1.0, "cheap-1b": 0.5}, "cluster_id": 0},
        {"question": "Name a prime.", "scores": {"cheap-1b": 1.0, "dear-70b": 1.0}, "cluster_id": 1},
    ]
    test = test if test is not None else [{"question": HELLO, "scores": {"cheap-1b": 0.0, "dear-70b": 1.0}}]
    queries_train = queries_train if queries_train is not None else [
        {"task_name": "math", "query": "What is 2+2?"},
        {"task_name": "trivia", "query": "Name a prime."},
    ]
    queries_test = queries_test if queries_test is not None else [{"task_name": "code", "query": HELLO}]
    llm = llm if llm is not None else {m: {"input_price": i, "output_price": o} for m, (i, o) in MODELS.items()}

    def dump(name, content, lines=False):
        if isinstance(content, str):
            text = content
        elif lines:
            text = "".join(json.dumps(r) + "\n" for r in content)
        else:
            text = json.dumps(content)
        (root / name).write_text(text, encoding="utf-8")

    dump("dcrouter_train.json", train)
    dump("dcrouter_test.json", test)
    dump("default_query_train.jsonl", queries_train, lines=True)
    dump("default_query_test.jsonl", queries_test, lines=True)
    dump("default_llm.json", llm)
    return root


def test_llmrouter_small_directory_all_split(tmp_path):
    t = load_llmrouter(make_llmrouter(tmp_path / "lr"), output_tokens=100, split="all")
    assert t.models == ("cheap-1b", "dear-70b")  # price-file order, models without scores dropped
    assert t.tasks.tolist() == ["math", "trivia", "code"]
    np.testing.assert_allclose(t.scores[:, 0], [0.5, 1.0, 0.0])
    from barp_ray.encoder import count_tokens

    tokens = count_tokens(t.prompts.tolist())
    np.testing.assert_allclose(t.costs[:, 1], tokens * 1.0 / 1e6 + 100 * 2.0 / 1e6)


def test_llmrouter_missing_directory(tmp_path):
    with raises(str(tmp_path / "nowhere"), "directory not found"):
        load_llmrouter(tmp_path / "nowhere")


def test_llmrouter_missing_file(tmp_path):
    root = make_llmrouter(tmp_path / "lr")
    (root / "default_llm.json").unlink()
    with raises("default_llm.json", "file not found"):
        load_llmrouter(root)


def test_llmrouter_invalid_json(tmp_path):
    root = make_llmrouter(tmp_path / "lr", test='[{"question": "x",\n "scores": }]')
    with raises("dcrouter_test.json", "invalid JSON at line 2"):
        load_llmrouter(root, split="test")


def test_llmrouter_invalid_jsonl_line(tmp_path):
    root = make_llmrouter(tmp_path / "lr", queries_test='{"task_name": "code", "query": "a"}\n{not json}\n')
    with raises("default_query_test.jsonl line 2", "invalid JSON"):
        load_llmrouter(root, split="test")


def test_llmrouter_record_missing_question(tmp_path):
    root = make_llmrouter(tmp_path / "lr", test=[{"scores": {"cheap-1b": 0.0, "dear-70b": 1.0}}])
    with raises("dcrouter_test.json record 1", "'question' missing"):
        load_llmrouter(root, split="test")


def test_llmrouter_record_missing_scores(tmp_path):
    train = [{"question": "What is 2+2?", "scores": {"cheap-1b": 1.0, "dear-70b": 1.0}}, {"question": "Name a prime."}]
    root = make_llmrouter(tmp_path / "lr", train=train)
    with raises("dcrouter_train.json record 2", "'scores' missing"):
        load_llmrouter(root, split="train")


def test_llmrouter_score_outside_range(tmp_path):
    root = make_llmrouter(tmp_path / "lr", test=[{"question": HELLO, "scores": {"cheap-1b": 1.7, "dear-70b": 1.0}}])
    with raises("dcrouter_test.json record 1", "score for model 'cheap-1b' is 1.7, outside [0, 1]"):
        load_llmrouter(root, split="test")


def test_llmrouter_score_not_numeric(tmp_path):
    root = make_llmrouter(tmp_path / "lr", test=[{"question": HELLO, "scores": {"cheap-1b": "high", "dear-70b": 1.0}}])
    with raises("dcrouter_test.json record 1", "score for model 'cheap-1b' is 'high', not a number"):
        load_llmrouter(root, split="test")


def test_llmrouter_model_without_price(tmp_path):
    test = [{"question": HELLO, "scores": {"cheap-1b": 0.0, "mystery-9b": 1.0}}]
    root = make_llmrouter(tmp_path / "lr", test=test)
    with raises("default_llm.json", "no price entry for model(s) ['mystery-9b']"):
        load_llmrouter(root, split="test")


def test_llmrouter_price_missing_field(tmp_path):
    llm = {"cheap-1b": {"input_price": 0.1, "output_price": 0.2}, "dear-70b": {"input_price": 1.0}}
    root = make_llmrouter(tmp_path / "lr", llm=llm)
    with raises("default_llm.json", "model 'dear-70b' has output_price missing"):
        load_llmrouter(root, split="test")


def test_llmrouter_question_without_task(tmp_path):
    root = make_llmrouter(tmp_path / "lr", queries_test=[{"task_name": "code", "query": "something else"}])
    with raises("dcrouter_test.json record 1", "question has no task", repr(HELLO)):
        load_llmrouter(root, split="test")


def test_llmrouter_inconsistent_model_sets(tmp_path):
    test = [{"question": HELLO, "scores": {"cheap-1b": 0.0, "unused-7b": 1.0}}]
    root = make_llmrouter(tmp_path / "lr", test=test)
    with raises("dcrouter_test.json record 1", "model set differs", "missing ['dear-70b'], extra ['unused-7b']"):
        load_llmrouter(root, split="all")


def test_llmrouter_output_tokens_must_cover_tasks(tmp_path):
    root = make_llmrouter(tmp_path / "lr")
    with raises(str(root), "no 'default' and no entry for task(s) ['trivia']"):
        load_llmrouter(root, output_tokens={"math": 300}, split="train")


def test_llmrouter_bad_split(tmp_path):
    with raises("split must be one of"):
        load_llmrouter(make_llmrouter(tmp_path / "lr"), split="dev")


# ---------------------------------------------------------------- RouterBench


def routerbench_frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "sample_id": ["mmlu.0", "gsm8k.1", "mbpp.2"],
            "prompt": ["What is 2+2?", ["You are helpful.", "Solve x+1=3."], "Write fizzbuzz."],
            "eval_name": ["mmlu", "gsm8k", "mbpp"],
            "gpt-4": [1.0, 1.0, 0.0],
            "gpt-4|model_response": ["4", "x=2", "..."],
            "gpt-4|total_cost": [3e-3, 4e-3, 5e-3],
            "mistral-7b": [0.0, 1.0, 0.5],
            "mistral-7b|model_response": ["5", "x=2", "..."],
            "mistral-7b|total_cost": [1e-5, 2e-5, 3e-5],
            "oracle_model_to_route_to": ["gpt-4", "mistral-7b", "mistral-7b"],
        }
    )


def test_routerbench_pickle_round_trip(tmp_path):
    path = tmp_path / "routerbench_0shot.pkl"
    routerbench_frame().to_pickle(path)
    t = load_routerbench(path, output_tokens_note="as measured by Martian")
    assert t.models == ("gpt-4", "mistral-7b")
    assert t.prompts.tolist() == ["What is 2+2?", "You are helpful.\nSolve x+1=3.", "Write fizzbuzz."]
    assert t.tasks.tolist() == ["mmlu", "gsm8k", "mbpp"]
    np.testing.assert_allclose(t.scores[:, 1], [0.0, 1.0, 0.5])
    np.testing.assert_allclose(t.costs[:, 0], [3e-3, 4e-3, 5e-3])
    assert t.prices == {}
    assert "RouterBench total_cost column" in t.cost_note and "Martian" in t.cost_note


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_routerbench_converted_formats(tmp_path, suffix):
    frame = routerbench_frame()
    frame["prompt"] = ["a", "b", "c"]
    path = tmp_path / f"rb{suffix}"
    frame.to_parquet(path) if suffix == ".parquet" else frame.to_csv(path, index=False)
    t = load_routerbench(path)
    assert t.models == ("gpt-4", "mistral-7b") and t.n == 3
    np.testing.assert_allclose(t.costs[:, 1], [1e-5, 2e-5, 3e-5])


def test_routerbench_not_a_pickle(tmp_path):
    path = tmp_path / "garbage.pkl"
    path.write_bytes(b"this is not a pickle")
    with raises("garbage.pkl", "not a readable pickle file"):
        load_routerbench(path)


def test_routerbench_not_a_dataframe(tmp_path):
    path = tmp_path / "dict.pkl"
    path.write_bytes(pickle.dumps({"prompt": ["x"]}))
    with raises("dict.pkl", "expected a pandas DataFrame", "dict"):
        load_routerbench(path)


@pytest.mark.parametrize("column", ["prompt", "eval_name"])
def test_routerbench_missing_column(tmp_path, column):
    path = tmp_path / "rb.pkl"
    routerbench_frame().drop(columns=[column]).to_pickle(path)
    with raises("rb.pkl", f"column '{column}' missing"):
        load_routerbench(path)


def test_routerbench_no_model_columns(tmp_path):
    path = tmp_path / "rb.pkl"
    routerbench_frame().drop(columns=["gpt-4|total_cost", "mistral-7b|total_cost"]).to_pickle(path)
    with raises("rb.pkl", "no model columns"):
        load_routerbench(path)


def test_routerbench_nan_scores(tmp_path):
    frame = routerbench_frame()
    frame.loc[[0, 2], "mistral-7b"] = np.nan
    path = tmp_path / "rb.pkl"
    frame.to_pickle(path)
    with raises("rb.pkl", "score column 'mistral-7b' has 2 NaN/infinite row(s) of 3"):
        load_routerbench(path)


def test_routerbench_nan_costs(tmp_path):
    frame = routerbench_frame()
    frame.loc[1, "gpt-4|total_cost"] = np.nan
    path = tmp_path / "rb.pkl"
    frame.to_pickle(path)
    with raises("rb.pkl", "cost column 'gpt-4|total_cost' has 1 NaN/infinite row(s)", "first at row 2"):
        load_routerbench(path)


def test_routerbench_score_outside_range(tmp_path):
    frame = routerbench_frame()
    frame.loc[2, "gpt-4"] = 10.0  # e.g. an unnormalised MT-Bench grade
    path = tmp_path / "rb.pkl"
    frame.to_pickle(path)
    with raises("rb.pkl", "score for model 'gpt-4' is 10.0 at row 3, outside [0, 1]"):
        load_routerbench(path)


def test_routerbench_missing_file(tmp_path):
    with raises("absent.pkl", "file not found"):
        load_routerbench(tmp_path / "absent.pkl")


# ---------------------------------------------------------------- records


@pytest.mark.parametrize("name", ["table.jsonl", "table.json", "table.parquet"])
def test_records_round_trip(tmp_path, name):
    table = synthetic_table(n_prompts=60, seed=3)
    path = tmp_path / name
    write_records(table, path)
    back = load_records(path)
    assert back.models == table.models
    assert back.prompts.tolist() == table.prompts.tolist()
    assert back.tasks.tolist() == table.tasks.tolist()
    np.testing.assert_array_equal(back.scores, table.scores)
    np.testing.assert_array_equal(back.costs, table.costs)
    assert name in back.cost_note
    if name.endswith(".parquet"):  # Parquet keeps the model prices (schema metadata) for price-aware policies
        assert table.prices and back.prices == table.prices


def test_records_jsonl_schema_and_default_task(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text(
        '{"prompt": "hi", "scores": {"a": 1, "b": 0.25}, "costs": {"b": 0.002, "a": 0.0}}\n'
        "\n"
        '{"prompt": "bye", "task": "chat", "scores": {"b": 0.5, "a": 0.0}, "costs": {"a": 1e-6, "b": 3e-6}}\n',
        encoding="utf-8",
    )
    t = load_records(path)
    assert t.models == ("a", "b")  # first record's score order
    assert t.tasks.tolist() == ["default", "chat"]
    np.testing.assert_allclose(t.scores, [[1.0, 0.25], [0.0, 0.5]])
    np.testing.assert_allclose(t.costs, [[0.0, 0.002], [1e-6, 3e-6]])


def test_records_parquet_map_columns(tmp_path):
    path = tmp_path / "map.parquet"
    kind = pa.map_(pa.string(), pa.float64())
    pq.write_table(
        pa.table(
            {
                "prompt": ["p1", "p2"],
                "scores": pa.array([[("x", 0.1), ("y", 0.9)], [("y", 1.0), ("x", 0.0)]], type=kind),
                "costs": pa.array([[("x", 1.0), ("y", 2.0)], [("x", 3.0), ("y", 4.0)]], type=kind),
            }
        ),
        path,
    )
    t = load_records(path)
    assert t.models == ("x", "y") and t.tasks.tolist() == ["default", "default"]
    np.testing.assert_allclose(t.scores[1], [0.0, 1.0])


GOOD = {"prompt": "p", "task": "t", "scores": {"a": 0.5, "b": 1.0}, "costs": {"a": 0.1, "b": 0.2}}


def write_lines(path: Path, records: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "bad, problem",
    [
        ({k: v for k, v in GOOD.items() if k != "scores"}, "'scores' missing"),
        ({k: v for k, v in GOOD.items() if k != "prompt"}, "'prompt' missing"),
        ({**GOOD, "scores": {"a": 1.7, "b": 1.0}}, "score for model 'a' is 1.7, outside [0, 1]"),
        ({**GOOD, "scores": {"a": "good", "b": 1.0}}, "score for model 'a' is 'good', not a number"),
        ({**GOOD, "costs": {"a": -0.1, "b": 0.2}}, "cost for model 'a' is -0.1, negative"),
        ({**GOOD, "costs": {"a": 0.1}}, "'scores' and 'costs' name different models"),
        ({**GOOD, "scores": {"a": 0.5, "c": 1.0}, "costs": {"a": 0.1, "c": 0.2}}, "model set differs from the first"),
        ("{broken", "invalid JSON"),
        ('[{"prompt": "p"}]', "not a JSON array"),
        ({**GOOD, "task": 7}, "'task' is 7, not a string"),
    ],
)
def test_records_jsonl_errors(tmp_path, bad, problem):
    path = write_lines(tmp_path / "data.jsonl", [GOOD, GOOD, bad])  # the bad record is line 3
    with raises("data.jsonl line 3: ", problem):
        load_records(path)


def test_records_parquet_error_names_row(tmp_path):
    path = tmp_path / "data.parquet"
    costs = [{"a": 0.1, "b": 0.2}] * 3 + [{"a": -1.0, "b": 0.2}]
    pq.write_table(pa.table({"prompt": list("pqrs"), "scores": [{"a": 0.5, "b": 1.0}] * 4, "costs": costs}), path)
    with raises("data.parquet row 4: ", "cost for model 'a' is -1.0, negative"):
        load_records(path)


def test_records_parquet_missing_column(tmp_path):
    path = tmp_path / "data.parquet"
    pq.write_table(pa.table({"prompt": ["p"], "scores": pa.array([{"a": 0.5}])}), path)
    with raises("data.parquet", "column 'costs' missing"):
        load_records(path)


def test_records_file_problems(tmp_path):
    with raises("data.csv", "unknown records extension"):
        load_records(tmp_path / "data.csv")
    with raises("absent.jsonl", "file not found"):
        load_records(tmp_path / "absent.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n", encoding="utf-8")
    with raises("empty.jsonl", "no records"):
        load_records(tmp_path / "empty.jsonl")
    (tmp_path / "junk.parquet").write_bytes(b"not parquet at all")
    with raises("junk.parquet", "not a readable Parquet file"):
        load_records(tmp_path / "junk.parquet")
