"""`barp route-dataset`: a dataset of prompts routed by Ray Data actors on the session's real Ray,
with a real (small) trained checkpoint; every answer checked against the policy routing in-process."""
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from barp_ray.dataset_routing import main as route_dataset

PROMPTS = ["What is 12345 + 67890?", "Write a haiku about rain.", "Prove that there are infinitely many primes.",
           "Implement an LRU cache in Python with O(1) operations.", "Who wrote Pride and Prejudice?",
           "Summarise the causes of the French Revolution in three sentences."]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from conftest import train_small

    return train_small(tmp_path_factory.mktemp("route-dataset"), "training.iterations=15", "training.rounds_per_iteration=2048")


def _expected(checkpoint, prompts, preferences):
    """(models, probabilities, dollars) as the policy routes in this process, priced as calibrate prices."""
    from barp_ray.data.llmrouter import token_costs
    from barp_ray.encoder import count_tokens
    from barp_ray.policy import RoutingPolicy

    policy = RoutingPolicy.load(checkpoint)
    probs = policy.probabilities(policy.observe(prompts), np.float32(preferences))
    choice = probs.argmax(-1)
    prices = [policy.meta["prices"][m] for m in policy.models]
    output_tokens = policy.meta["config"]["data"]["output_tokens"]
    costs = token_costs(count_tokens(prompts, policy.encoder), output_tokens,
                        [p["input_per_mtok"] for p in prices], [p["output_per_mtok"] for p in prices])
    rows = np.arange(len(prompts))
    return [policy.models[c] for c in choice], probs[rows, choice], costs[rows, choice]


def test_a_parquet_directory_is_routed_row_for_row_as_the_policy_routes(checkpoint, tmp_path, capsys):
    from conftest import start_local_ray

    start_local_ray()
    source = tmp_path / "traffic"
    source.mkdir()
    prompts = PROMPTS * 5
    pairs = [None if i % 3 == 0 else [round(0.1 * (i % 11), 1), round(1 - 0.1 * (i % 11), 1)] for i in range(len(prompts))]
    for part in range(3):  # a directory of several files, as a Ray Data job writes them
        rows = range(part * 10, part * 10 + 10)
        pq.write_table(pa.table({"id": list(rows), "prompt": [prompts[i] for i in rows],
                                 "w": pa.array([pairs[i] for i in rows], type=pa.list_(pa.float64()))}),
                       source / f"part-{part}.parquet")
    dest = tmp_path / "routed"
    assert route_dataset([checkpoint, str(source), str(dest), "--preference-column", "w", "--preference", "0.6",
                          "--concurrency", "2", "--num-cpus", "0.5", "--batch-size", "4"]) == 0
    out = capsys.readouterr().out
    routed = pq.read_table(dest).to_pandas().sort_values("id").reset_index(drop=True)
    assert list(routed["id"]) == list(range(30)) and list(routed["prompt"]) == prompts
    used = [[0.6, 0.4] if p is None else p for p in pairs]
    np.testing.assert_allclose(np.stack(routed["preference"]), used, atol=1e-6)
    models, probability, dollars = _expected(checkpoint, prompts, used)
    assert list(routed["model"]) == models
    np.testing.assert_allclose(routed["probability"], probability, rtol=1e-5)
    np.testing.assert_allclose(routed["estimated_cost"], dollars, rtol=1e-9)
    assert routed["error"].isna().all() and len(set(models)) > 1  # the per-row preferences moved the routing
    assert out.startswith(f"routed 30 of 30 rows to {dest}")
    assert f"estimated spend ${sum(dollars):.4f}" in out
    for m in set(models):
        assert f"{m:<32} {models.count(m):>9}" in out


def test_rows_it_cannot_route_are_written_with_the_reason_and_the_rest_routed(checkpoint, tmp_path, capsys):
    from conftest import start_local_ray

    start_local_ray()
    lines = [{"text": PROMPTS[0]}, {"text": ""}, {"text": PROMPTS[1], "pref": [2, 3]},
             {"text": 42}, {"text": PROMPTS[2], "pref": 0.9}, {"text": PROMPTS[3], "pref": [0.3, 0.7]}]
    source = tmp_path / "traffic.jsonl"
    source.write_text("".join(json.dumps(x) + "\n" for x in lines))
    dest = tmp_path / "routed"
    assert route_dataset([checkpoint, str(source), str(dest), "--prompt-column", "text",
                          "--preference-column", "pref", "--output-tokens", "100"]) == 0
    assert f"routed 3 of 6 rows to {dest}; 3 refused" in capsys.readouterr().out
    routed = pq.read_table(dest).to_pandas()
    errors = dict(zip(routed.index, routed["error"]))
    assert errors[1] == "text: expected a non-empty string, got ''"
    assert errors[2].startswith("pref: ") and "[2.0, 3.0]" in errors[2]
    assert errors[3] == "text: expected a non-empty string, got 42" and routed["text"][3] == "42"
    refused = routed.iloc[[1, 2, 3]]
    assert refused["model"].isna().all() and refused["preference"].isna().all() and refused["estimated_cost"].isna().all()
    good = routed.iloc[[0, 4, 5]]
    assert good["error"].isna().all()
    models, _, _ = _expected(checkpoint, list(good["text"]), [[0.8, 0.2], [0.9, 0.1], [0.3, 0.7]])
    assert list(good["model"]) == models


@pytest.mark.parametrize("case", ["prompt_column", "clash", "dest_not_empty", "dest_file", "checkpoint", "source",
                                  "preference", "concurrency", "cpus", "output_tokens",
                                  "mixed_column"])
def test_bad_input_is_one_line_naming_it(checkpoint, tmp_path, capsys, case):
    from conftest import start_local_ray

    start_local_ray()
    source = tmp_path / "traffic.jsonl"
    rows = [{"prompt": p, "model": "mine"} if case == "clash" else {"prompt": p} for p in PROMPTS]
    if case == "mixed_column":  # a JSONL column of numbers and text (in the second of two blocks): no Parquet type holds it
        rows = [{"prompt": p, "tag": i if i != 4 else "x"} for i, p in enumerate(PROMPTS)]
        args_extra = ["--batch-size", "3"]
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    dest = tmp_path / "routed"
    args = [checkpoint, str(source), str(dest)]
    expected = {
        "prompt_column": "--prompt-column/--preference-column: ['question'] not among the source's columns ['prompt']",
        "clash": "source: already has column(s) ['model'], which routing writes",
        "dest_not_empty": "dest: ",
        "dest_file": "dest: ",
        "checkpoint": "not a barp-ray checkpoint",
        "source": "source: cannot read",
        "preference": "--preference: ",
        "concurrency": "--concurrency: must be at least 1, got 0",
        "cpus": "--concurrency/--num-cpus: 2 actor(s) x 1 CPU leave no CPU of the cluster's 2 for reading and writing",
        "output_tokens": "--output-tokens: must be >= 0, got -5",
        "mixed_column": "routing stopped, nothing kept in dest: source: a column Parquet cannot hold: ",
    }[case]
    if case == "prompt_column":
        args += ["--prompt-column", "question"]
    elif case == "dest_not_empty":
        dest.mkdir()
        (dest / "old.parquet").write_bytes(b"x")
    elif case == "dest_file":
        dest.write_text("x")
    elif case == "checkpoint":
        args[0] = str(tmp_path)
    elif case == "source":
        args[1] = str(tmp_path / "missing.parquet")
    elif case == "preference":
        args += ["--preference", "2,3"]
    elif case == "concurrency":
        args += ["--concurrency", "0"]
    elif case == "cpus":  # a pool holding every CPU would starve the read and write tasks: a hang, not a run
        args += ["--concurrency", "2"]
    elif case == "output_tokens":
        args += ["--output-tokens", "-5"]
    elif case == "mixed_column":
        args += args_extra
    assert route_dataset(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("barp route-dataset: error: ") and expected in err, err
    assert err.count("\n") == 1, err
    if case != "dest_not_empty":
        assert not dest.is_dir() or not any(dest.iterdir())  # nothing written, or what a failed run wrote removed
