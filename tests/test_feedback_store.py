"""The feedback store, on SQLite and on a real PostgreSQL server: joins, duplicates, the reward wait time, late feedback, the trainer's reader."""
from __future__ import annotations

import time

import numpy as np
import pytest

from serve.exploration import dr_terms, dr_value, exploring_distribution, recency_weights, snips_value, weighted_mean_se
from serve.feedback_store import (
    DuplicateFeedback,
    ExpiredRequest,
    FeedbackStore,
    RewardReader,
    UnknownRequest,
    encode_vector,
    new_request_id,
    routed_at,
)

TAU = 0.01


def decision(now=None, model="m1", pref=(0.5, 0.5)):
    now = time.time() if now is None else now
    return {"request_id": new_request_id(now), "time": now, "embedding": encode_vector(np.ones(4)),
            "preference": list(pref), "model": model, "behaviour_prob": 0.25, "mode": "explore", "policy_version": 0}


def test_feedback_joins_once_and_leaves_the_pending_table(feedback_db):
    store = FeedbackStore(feedback_db(), tau=TAU)
    d = decision()
    store.record_decision(d)
    assert store.counts()["pending"] == 1
    rec = store.record_feedback(d["request_id"], 1.0, 0.005)
    assert rec["reward"] == pytest.approx(0.5 * 1.0 - 0.5 * 0.5) and rec["id"] == 1
    assert store.counts() == {"pending": 0, "rewards": 1, "first_id": 1, "last_id": 1, "dropped": 0, "defaulted": 0, "withdrawn": 0,
                              "pruned": 0, "trainer_offset": None}
    with pytest.raises(DuplicateFeedback):
        store.record_feedback(d["request_id"], 1.0, 0.005)
    # the service's own retry after a crash replays the committed answer instead
    assert store.record_feedback(d["request_id"], 1.0, 0.005, replay=True)["reward"] == rec["reward"]
    with pytest.raises(DuplicateFeedback):
        store.record_feedback(d["request_id"], 0.0, 0.005, replay=True)  # other values: a real duplicate
    with pytest.raises(UnknownRequest):
        store.record_feedback(new_request_id(), 1.0, 0.0)
    assert RewardReader(feedback_db()).request_ids() == [d["request_id"]]


def test_a_decision_batch_is_written_inline_only_when_sqlite_is_free(tmp_path):
    """The event-loop path: written at once when no one else writes; while another process holds
    the file's write lock, refused at once (nothing written, no wait); the async path then writes
    from a thread as soon as the lock is released."""
    import asyncio
    import sqlite3
    import threading

    store = FeedbackStore(tmp_path, tau=TAU)
    first, second = decision(), decision()
    assert store.record_decisions_if_free([first]) is True
    other = sqlite3.connect(store.db.path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")  # a second writer, as the feedback log's process would be
    t0 = time.perf_counter()
    assert store.record_decisions_if_free([second]) is False
    assert time.perf_counter() - t0 < store.db._BUSY_TIMEOUT_S  # refused, not after the busy timeout
    threading.Timer(0.3, lambda: other.execute("COMMIT")).start()
    asyncio.run(store.record_decisions_async([second]))
    assert store.counts()["pending"] == 2
    assert store.record_feedback(second["request_id"], 1.0, 0.0)["reward"] == pytest.approx(0.5)
    other.close()


@pytest.mark.parametrize("on_missing", ["drop", "default"])
def test_expired_decisions_are_retired_and_late_feedback_changes_nothing(feedback_db, on_missing):
    store = FeedbackStore(feedback_db(), tau=TAU, wait_s=60, on_missing=on_missing, default_reward=-0.1)
    old, fresh = decision(now=time.time() - 120), decision()
    store.record_decision(old)
    store.record_decision(fresh)
    assert store.retire_expired() == 1
    counts = store.counts()
    assert counts["pending"] == 1
    assert counts["dropped" if on_missing == "drop" else "defaulted"] == 1
    with pytest.raises(ExpiredRequest, match="reward wait time"):
        store.record_feedback(old["request_id"], 1.0, 0.0)
    rows = RewardReader(feedback_db()).after(0, 10)
    if on_missing == "default":
        assert [(r["request_id"], r["reward"], r["defaulted"]) for r in rows] == [(old["request_id"], -0.1, True)]
    else:
        assert rows == []
    assert store.counts() == counts  # the late feedback wrote nothing
    store.record_feedback(fresh["request_id"], 1.0, 0.0)  # the fresh one is still open


@pytest.mark.parametrize("on_missing", ["drop", "default"])
def test_a_withdrawn_decision_is_never_rewarded_nor_retired(feedback_db, on_missing):
    """A chat route whose provider failed (serve/openai_proxy.py): no outcome will ever come for it."""
    store = FeedbackStore(feedback_db(), tau=TAU, wait_s=60, on_missing=on_missing)
    old, kept = decision(), decision(now=time.time() - 120)
    store.record_decisions([old, kept])
    assert store.withdraw_decisions([old["request_id"], new_request_id()]) == 1  # an id never pending is no error
    assert store.withdraw_decisions([old["request_id"]]) == 0
    with pytest.raises(UnknownRequest):
        store.record_feedback(old["request_id"], 1.0, 0.0)
    assert store.retire_expired() == 1  # only the other one
    counts = store.counts()
    assert counts["withdrawn"] == 1 and counts["pending"] == 0
    assert counts["rewards"] == (1 if on_missing == "default" else 0)
    assert [r["request_id"] for r in RewardReader(feedback_db()).after(0, 10)] == \
        ([kept["request_id"]] if on_missing == "default" else [])


def test_a_client_withdraws_a_route_it_got_no_answer_for(feedback_db):
    store = FeedbackStore(feedback_db(), tau=TAU, wait_s=60)
    pending, rewarded = decision(), decision()
    store.record_decisions([pending, rewarded])
    store.record_feedback(rewarded["request_id"], 1.0, 0.001)
    store.withdraw(pending["request_id"])
    assert store.counts()["withdrawn"] == 1 and store.counts()["pending"] == 0
    with pytest.raises(UnknownRequest, match="already withdrawn"):
        store.withdraw(pending["request_id"])
    with pytest.raises(UnknownRequest):
        store.record_feedback(pending["request_id"], 1.0, 0.0)
    with pytest.raises(DuplicateFeedback):  # it has its outcome already: nothing to take back
        store.withdraw(rewarded["request_id"])
    late = decision(now=time.time() - 120)
    store.record_decision(late)
    store.retire_expired()
    with pytest.raises(ExpiredRequest):
        store.withdraw(late["request_id"])
    assert store.counts()["withdrawn"] == 1


def test_feedback_may_leave_out_a_cost_the_service_priced(feedback_db):
    from serve.feedback_store import MissingCost

    store = FeedbackStore(feedback_db(), tau=TAU)
    priced, unpriced = decision(), decision()
    store.record_decisions([priced, unpriced])
    assert store.note_answer_cost(priced["request_id"], 0.004) and not store.note_answer_cost(new_request_id(), 0.1)
    rec = store.record_feedback(priced["request_id"], 1.0, None)
    assert rec["cost"] == 0.004 and rec["reward"] == pytest.approx(0.5 * 1.0 - 0.5 * 0.4)
    assert store.record_feedback(priced["request_id"], 1.0, None, replay=True)["id"] == rec["id"]
    with pytest.raises(MissingCost, match="cost: required"):
        store.record_feedback(unpriced["request_id"], 1.0, None)
    assert store.counts()["pending"] == 1  # the refused one is still waiting for a cost
    assert store.record_feedback(unpriced["request_id"], 1.0, 0.002)["cost"] == 0.002


def test_a_reported_latency_is_kept_with_its_reward(feedback_db):
    store = FeedbackStore(feedback_db(), tau=TAU)
    timed, untimed = decision(), decision()
    for d in (timed, untimed):
        store.record_decision(d)
    store.record_feedback(timed["request_id"], 1.0, 0.001, latency_s=1.5)
    store.record_feedback(untimed["request_id"], 1.0, 0.001)
    records = {r["request_id"]: r for r in RewardReader(feedback_db()).after(0, 10)}
    assert records[timed["request_id"]]["latency_s"] == 1.5 and "latency_s" not in records[untimed["request_id"]]


def test_pending_table_is_bounded_by_the_wait_time(feedback_db):
    store = FeedbackStore(feedback_db(), tau=TAU, wait_s=10)
    now = time.time()
    for i in range(300):  # 300 requests over 300 s of traffic, no feedback at all
        store.record_decision(decision(now=now - 300 + i))
    store.retire_expired(now=now)
    assert store.counts()["pending"] <= 11


def test_reader_pages_by_id_and_refills_after_restart(feedback_db):
    store = FeedbackStore(feedback_db(), tau=TAU)
    ids = []
    for _ in range(10):
        d = decision()
        store.record_decision(d)
        ids.append(store.record_feedback(d["request_id"], 0.5, 0.0)["id"])
    reader = RewardReader(feedback_db())
    assert [r["id"] for r in reader.after(3, 4)] == ids[3:7]
    assert [r["id"] for r in reader.up_to(6, 3)] == ids[3:6]


def test_request_ids_carry_their_routing_time():
    t = 1_700_000_000.123
    rid = new_request_id(t)
    assert len(rid) == 32 and routed_at(rid) == pytest.approx(t, abs=1e-3)
    assert routed_at("not-a-request-id") is None


def test_exploring_distribution_floor_mask_and_snips():
    p = np.asarray([[0.97, 0.01, 0.01, 0.01]])
    mu = exploring_distribution(p, epsilon=0.2)
    assert mu.sum() == pytest.approx(1.0) and mu.min() >= 0.2 / 4 - 1e-12
    masked = exploring_distribution(p, epsilon=0.2, mask=np.asarray([False, True, True, False]))
    assert masked[0, 0] == 0 and masked[0, 3] == 0 and masked.sum() == pytest.approx(1.0)
    assert masked[0, 1] == pytest.approx(0.5)  # policy mass renormalised over the allowed models
    flat = exploring_distribution(p, epsilon=0.0, temperature=1e6)
    assert flat[0] == pytest.approx(np.full(4, 0.25), abs=1e-4)
    # SNIPS recovers a target policy's value from uniformly logged data
    rng = np.random.default_rng(0)
    n = 20_000
    actions = rng.integers(4, size=n)
    rewards = (actions == 2).astype(float)
    target = np.tile([0.1, 0.1, 0.7, 0.1], (n, 1))
    assert snips_value(target, actions, np.full(n, 0.25), rewards) == pytest.approx(0.7, abs=0.02)


@pytest.mark.parametrize("self_normalise", [True, False])
def test_doubly_robust_value_corrects_a_wrong_critic_and_sees_what_ips_cannot(self_normalise):
    rng = np.random.default_rng(1)
    n, k = 20_000, 6
    mu = np.full(k, 0.1 / k)
    mu[0] += 0.9  # a confident logging policy: model 3 is tried ~1.7% of the time
    actions = rng.choice(k, size=n, p=mu)
    truth = np.asarray([0.3, 0.2, 0.2, 0.9, 0.2, 0.2])
    rewards = (rng.random(n) < truth[actions]).astype(float)
    target = np.tile(np.eye(k)[3] * 0.9 + 0.1 / k, (n, 1))  # a candidate that moved to model 3
    value = float(target[0] @ truth)
    wrong = np.tile(truth - 0.3, (n, 1))  # a biased critic: the correction must remove the bias
    assert dr_value(target, wrong, actions, mu[actions], rewards, self_normalise=self_normalise) == pytest.approx(value, abs=0.06)
    # with a good critic, a few hundred records already tell the candidate from the logging policy
    good = np.tile(truth, (n, 1)) + rng.normal(0, 0.05, size=(n, k))
    few = slice(0, 300)
    logging_value = float(mu @ truth)
    est = dr_value(target[few], good[few], actions[few], mu[actions[few]], rewards[few], self_normalise=self_normalise)
    assert est == pytest.approx(value, abs=0.05) and est > logging_value + 0.3


@pytest.mark.parametrize("self_normalise", [True, False])
def test_paired_gate_terms_average_to_the_estimate_and_their_error_shrinks_with_records(self_normalise):
    """The gate's one-sided test needs per-record terms whose weighted mean is the estimate itself."""
    rng = np.random.default_rng(1)
    n, k = 400, 4
    mu = np.full(k, 1 / k)
    actions = rng.integers(k, size=n)
    rewards = (rng.random(n) < np.asarray([0.2, 0.4, 0.6, 0.8])[actions]).astype(float)
    target = rng.dirichlet(np.ones(k), size=n)
    q = rng.random((n, k))
    w = recency_weights(n, 32)
    terms = dr_terms(target, q, actions, mu[actions], rewards, w, self_normalise=self_normalise)
    value = dr_value(target, q, actions, mu[actions], rewards, w, self_normalise=self_normalise)
    assert np.sum(w * terms) / np.sum(w) == pytest.approx(value, abs=1e-9)
    x = rng.normal(size=n)
    assert weighted_mean_se(x, np.ones(n)) == pytest.approx(np.std(x, ddof=1) / np.sqrt(n))
    # recency weighting leaves ~2 * 32 / ln 2 effective records: a wider error than all 400
    assert weighted_mean_se(x, w) > 1.5 * weighted_mean_se(x, np.ones(n))


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_import_of_an_old_jsonl_log_keeps_order_skips_repeats_and_torn_lines(tmp_path, backend, request, capsys):
    import json

    from serve.feedback_db import PostgresDatabase, open_database
    from serve.feedback_import import main as import_feedback
    from serve.settings import settings_from_config

    old = tmp_path / "old"
    old.mkdir()
    ds = [decision(now=time.time() - 100 + i) for i in range(5)]
    rewards = [{**d, "score": 1.0, "cost": 0.001, "reward": 0.4} for d in ds[:3]]
    (old / "decisions.jsonl").write_text("".join(json.dumps(d) + "\n" for d in ds))
    (old / "rewards.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rewards) + '{"request_id": "cut sh')
    sets = ["--set", f"log_dir={tmp_path / 'log'}"]
    if backend == "postgresql":
        (tmp_path / "url").write_text(request.getfixturevalue("postgres_url"))
        sets += ["--set", "feedback.database=postgresql", "--set", f"feedback.database_url_file={tmp_path / 'url'}"]
    assert import_feedback([str(old), "--config", "configs/serve.yaml", *sets]) == 0
    assert "imported 3 rewards and 2 pending decisions; skipped 0 already in the store and 1 torn" in capsys.readouterr().out
    assert import_feedback([str(old), "--config", "configs/serve.yaml", *sets]) == 0  # a re-run adds nothing
    assert "imported 0 rewards and 0 pending decisions; skipped 5" in capsys.readouterr().out
    settings = settings_from_config("configs/serve.yaml", [s for s in sets if s != "--set"])
    db = open_database(settings)
    assert isinstance(db, PostgresDatabase) == (backend == "postgresql")
    store = FeedbackStore(db, tau=TAU)
    assert [r["request_id"] for r in RewardReader(db).after(0, 10)] == [d["request_id"] for d in ds[:3]]
    last = RewardReader(db).after(0, 10)[-1]["id"]
    assert store.record_feedback(ds[3]["request_id"], 0.0, 0.0)["id"] > last  # a pending one joins as usual
    (old / "rewards.jsonl").write_text('{"broken\n' + json.dumps(rewards[0]) + "\n")
    assert import_feedback([str(old), "--config", "configs/serve.yaml", *sets]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("barp import-feedback: error:") and "rewards.jsonl: line 1 is not JSON" in err and "\n" not in err


def _rewarded(store, n, now=None):
    ids = []
    for _ in range(n):
        d = decision(now=now)
        store.record_decision(d)
        ids.append(store.record_feedback(d["request_id"], 0.5, 0.001)["id"])
    return ids


def test_retention_keeps_the_newest_and_nothing_the_trainer_has_not_saved(feedback_db):
    store, reader = FeedbackStore(feedback_db(), tau=TAU), RewardReader(feedback_db())
    ids = _rewarded(store, 30)
    assert store.prune(keep=10, max_age_s=None, trained_only=True) == 0  # the trainer has committed nothing yet
    reader.commit_offset(ids[11])
    assert store.prune(keep=10, max_age_s=None, trained_only=True) == 12  # not past the trainer, though 20 are beyond 10
    assert store.counts()["first_id"] == ids[12] and store.counts()["pruned"] == 12
    reader.commit_offset(ids[-1])
    assert store.prune(keep=10, max_age_s=None, trained_only=True) == 8
    assert [r["id"] for r in reader.after(0, 100)] == ids[20:]
    # by age: every reward is older than an hour an hour from now, and the trainer has read them all
    assert store.prune(keep=None, max_age_s=60, trained_only=True, now=time.time() + 3600) == 10
    counts = store.counts()
    assert (counts["rewards"], counts["pruned"], counts["trainer_offset"]) == (0, 30, ids[-1])
    # the ids go on: a reward that arrives later is newer than any pruned one
    assert _rewarded(store, 1)[0] > ids[-1]


def test_archived_rewards_read_back_as_if_none_had_left(feedback_db, tmp_path):
    from serve.feedback_archive import ArchivedThenStored, FeedbackArchive
    from serve.feedback_store import REWARD_COLUMNS

    store, reader = FeedbackStore(feedback_db(), tau=TAU), RewardReader(feedback_db())
    ids = _rewarded(store, 25)
    before = reader.after(0, 100)
    reader.commit_offset(ids[-1])
    archive = FeedbackArchive(str(tmp_path / "archive"))
    assert store.prune(keep=5, max_age_s=None, trained_only=True, archive=archive, batch=4) == 20
    assert [(a, b) for a, b, _ in archive.parts()] == [(ids[i], ids[i + 3]) for i in range(0, 20, 4)]
    both = ArchivedThenStored(archive, reader)
    assert both.after(0, 100) == before  # every field of every record, in order
    assert both.after(ids[2], 6) == before[3:9]  # across a file's end
    assert both.up_to(ids[-1], 8) == before[-8:] and both.up_to(ids[9], 3) == before[7:10]
    # a crash after a file was written and before its rows left the database: read once, then finished
    rows = store.db.execute(f"SELECT {REWARD_COLUMNS} FROM rewards WHERE id <= ? ORDER BY id", (ids[21],))
    archive.write([rows], rows[0][0], rows[-1][0])
    assert both.after(0, 100) == before
    assert store.prune(keep=2, max_age_s=None, trained_only=True, archive=archive, batch=4) == 2
    assert [(a, b) for a, b, _ in archive.parts()][-1] == (ids[20], ids[21])  # ids[22] waits for a whole file ...
    assert store.prune(keep=2, max_age_s=60, trained_only=True, archive=archive, batch=4, now=time.time() + 3600) == 3
    assert [(a, b) for a, b, _ in archive.parts()][-1] == (ids[22], ids[24])  # ... unless max_age makes it leave
    assert both.after(0, 100) == before and store.counts()["pruned"] == 25


def test_a_pass_cut_short_between_its_deletes_is_finished_not_archived_twice(feedback_db, tmp_path):
    """Retention deletes an archived run in short transactions; a crash after some of them leaves
    the run's file and its last rows in the database: the next pass deletes those rows."""
    from serve.feedback_archive import ArchivedThenStored, FeedbackArchive
    from serve.feedback_store import REWARD_COLUMNS

    store, reader = FeedbackStore(feedback_db(), tau=TAU), RewardReader(feedback_db())
    ids = _rewarded(store, 10)
    before = reader.after(0, 100)
    reader.commit_offset(ids[-1])
    archive = FeedbackArchive(str(tmp_path / "archive"))
    rows = store.db.execute(f"SELECT {REWARD_COLUMNS} FROM rewards WHERE id <= ? ORDER BY id", (ids[5],))
    archive.write([rows[:4], rows[4:]], ids[0], ids[5])  # two row groups
    with store.db.transaction(durable=True):
        store.db.execute("DELETE FROM rewards WHERE id <= ?", (ids[2],))  # the first of the run's deletes, then the crash
    assert store.prune(keep=2, max_age_s=None, trained_only=True, archive=archive, batch=6) == 3
    assert [(a, b) for a, b, _ in archive.parts()] == [(ids[0], ids[5])]  # ids[6..7] wait for a whole file
    assert ArchivedThenStored(archive, reader).after(0, 100) == before and store.counts()["first_id"] == ids[6]


def test_an_archive_that_cannot_be_written_takes_nothing_out_of_the_database(feedback_db, tmp_path):
    import shutil

    from serve.feedback_archive import FeedbackArchive

    store, reader = FeedbackStore(feedback_db(), tau=TAU), RewardReader(feedback_db())
    ids = _rewarded(store, 6)
    reader.commit_offset(ids[-1])
    archive = FeedbackArchive(str(tmp_path / "archive"))
    shutil.rmtree(tmp_path / "archive")
    (tmp_path / "archive").write_text("a file where the archive's directory was")  # the mount went away
    with pytest.raises(OSError):
        store.prune(keep=1, max_age_s=None, trained_only=True, archive=archive, batch=5)
    assert [r["id"] for r in reader.after(0, 100)] == ids and store.counts()["pruned"] == 0


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_an_archive_and_an_export_move_into_another_store(tmp_path, backend, request, capsys):
    """What retention archived from one machine's SQLite, and an export of what it kept, come into
    a new store (the cluster's PostgreSQL) in order, defaulted rewards as defaulted, each with the time its
    feedback came (retention's age counts from it); a re-run adds nothing."""
    from serve.feedback_archive import FeedbackArchive
    from serve.feedback_db import open_database
    from serve.feedback_export import main as export_feedback
    from serve.feedback_import import main as import_feedback
    from serve.settings import settings_from_config

    old = FeedbackStore(tmp_path / "old", tau=TAU, wait_s=60, on_missing="default", default_reward=-0.1)
    _rewarded(old, 3)
    old.record_decision(decision(now=time.time() - 120))
    old.retire_expired()  # a defaulted reward, without score or cost, among the archived ones
    _rewarded(old, 3)
    before = RewardReader(tmp_path / "old").after(0, 100)
    RewardReader(tmp_path / "old").commit_offset(before[-1]["id"])
    assert old.prune(keep=3, max_age_s=None, trained_only=True, archive=FeedbackArchive(str(tmp_path / "archive")), batch=2) == 4
    source = ["--config", "configs/serve.yaml", "--set", f"log_dir={tmp_path / 'old'}"]
    assert export_feedback([str(tmp_path / "export"), *source, "--batch", "2"]) == 0
    assert "exported 3 rewards in 2 file(s)" in capsys.readouterr().out
    assert export_feedback([str(tmp_path / "export"), *source]) == 2
    assert "already holds archive files" in capsys.readouterr().err
    sets = ["--set", f"log_dir={tmp_path / 'new'}"]
    if backend == "postgresql":
        (tmp_path / "url").write_text(request.getfixturevalue("postgres_url"))
        sets += ["--set", "feedback.database=postgresql", "--set", f"feedback.database_url_file={tmp_path / 'url'}"]
    for place, n in (("archive", 4), ("export", 3)):
        assert import_feedback([str(tmp_path / place), "--config", "configs/serve.yaml", *sets]) == 0
        assert f"imported {n} rewards and 0 pending decisions; skipped 0" in capsys.readouterr().out
    assert import_feedback([str(tmp_path / "archive"), "--config", "configs/serve.yaml", *sets]) == 0
    assert "imported 0 rewards and 0 pending decisions; skipped 4" in capsys.readouterr().out
    after = RewardReader(open_database(settings_from_config("configs/serve.yaml", [s for s in sets if s != "--set"]))).after(0, 100)
    keep = ("request_id", "model", "preference", "embedding", "score", "cost", "reward", "defaulted", "feedback_time")
    assert [{k: r[k] for k in keep} for r in after] == [{k: r[k] for k in keep} for r in before]
    assert after[3]["defaulted"] and after[3]["score"] is None
