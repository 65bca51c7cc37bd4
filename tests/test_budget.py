"""`barp calibrate`: the preference that fits a dollar budget, on a real (small) trained checkpoint."""
import json

import numpy as np
import pytest

from serve import budget

PROMPTS = ["What is 12345 + 67890?", "Write a haiku about rain.", "Prove that there are infinitely many primes.",
           "Implement an LRU cache in Python with O(1) operations.", "Who wrote Pride and Prejudice?"] * 4


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from conftest import train_small

    return train_small(tmp_path_factory.mktemp("budget"), "training.iterations=15", "training.rounds_per_iteration=2048")


@pytest.fixture
def prompts_file(tmp_path):
    path = tmp_path / "traffic.txt"
    path.write_text("\n".join(PROMPTS) + "\n")
    return path


def _scan(checkpoint, prompts_file, tmp_path, *args):
    out = tmp_path / "scan.json"
    rc = budget.main([checkpoint, "--prompts", str(prompts_file), "--json", str(out), *args])
    return rc, json.loads(out.read_text())


def test_the_pick_is_the_most_quality_weight_that_fits_and_its_spend_is_the_routing_priced(checkpoint, prompts_file, tmp_path):
    from barp_ray.encoder import count_tokens
    from barp_ray.policy import RoutingPolicy

    _, free = _scan(checkpoint, prompts_file, tmp_path, "--budget", "1e9", "--mode", "greedy")
    spends = [p["dollars_per_1k"] for p in free["scan"]]
    assert free["pick"]["w_q"] == 1.0 and max(spends) > 2 * min(spends)  # quality costs more on this world
    target = (min(spends) + max(spends)) / 2
    rc, fit = _scan(checkpoint, prompts_file, tmp_path, "--budget", str(target), "--mode", "greedy")
    pick = fit["pick"]
    assert rc == 0 and pick["dollars_per_1k"] <= target
    assert pick["w_q"] == max(p["w_q"] for p in fit["scan"] if p["dollars_per_1k"] <= target)
    # the spend is the greedy routing of these prompts, priced by hand: tokens x input price + 256 x output price
    policy = RoutingPolicy.load(checkpoint)
    chosen = policy.route(PROMPTS, [pick["w_q"], 1 - pick["w_q"]])
    tokens = count_tokens(PROMPTS, policy.encoder)
    prices = policy.meta["prices"]
    by_hand = np.mean([t * prices[m]["input_per_mtok"] / 1e6 + 256 * prices[m]["output_per_mtok"] / 1e6
                       for t, m in zip(tokens, chosen)])
    assert pick["dollars_per_1k"] == pytest.approx(1000 * by_hand, rel=1e-6)


def test_explore_mode_prices_the_services_exploration(checkpoint, prompts_file, tmp_path):
    _, uniform = _scan(checkpoint, prompts_file, tmp_path, "--budget", "1e9", "--epsilon", "1")
    k = len(uniform["scan"][0]["shares"])
    assert all(share == pytest.approx(1 / k) for p in uniform["scan"] for share in p["shares"].values())
    _, greedy = _scan(checkpoint, prompts_file, tmp_path, "--budget", "1e9", "--mode", "greedy")
    _, explore = _scan(checkpoint, prompts_file, tmp_path, "--budget", "1e9")  # the serving default epsilon
    assert explore["exploration"]["epsilon"] == 0.1 and greedy["exploration"] is None
    assert explore["scan"][0]["dollars_per_1k"] > greedy["scan"][0]["dollars_per_1k"]  # cheapest routing + 10 % spread


def test_a_budget_below_the_cheapest_routing_says_so(checkpoint, prompts_file, tmp_path, capsys):
    rc, scan = _scan(checkpoint, prompts_file, tmp_path, "--budget", "1e-9")
    assert rc == 1 and scan["pick"] is None and "no preference fits" in capsys.readouterr().out


@pytest.mark.parametrize("args, error", [
    (["--budget", "-1"], "--budget: must be a positive number"),
    (["--budget", "1", "--epsilon", "2"], "--epsilon: must be a number in [0, 1]"),
    (["--budget", "1", "--output-tokens", "-3"], "--output-tokens: must be >= 0"),
])
def test_bad_input_fails_in_one_line(checkpoint, prompts_file, args, error, capsys):
    assert budget.main([checkpoint, "--prompts", str(prompts_file), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"barp calibrate: error: {error}") and len(err.splitlines()) == 1, err


def test_bad_prompt_files_are_named(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a"}\nnot json\n')
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    for path, error in [(bad, "line 2: not JSON"), (empty, "holds no prompts"), (tmp_path / "nope.txt", "cannot read")]:
        assert budget.main([str(tmp_path), "--budget", "1", "--prompts", str(path)]) == 2
        assert error in capsys.readouterr().err
