"""The trainer's state store: versions behind a pointer, on a path or a pyarrow.fs URI."""
from __future__ import annotations

import pytest

from serve.state_store import POINTER, StateStore


@pytest.mark.parametrize("scheme", ["path", "file-uri"])
def test_saves_are_whole_versions_behind_a_pointer_and_old_ones_are_pruned(tmp_path, scheme):
    root = tmp_path / "state"
    store = StateStore(str(root) if scheme == "path" else f"file://{root}")
    assert store.latest("state") is None and not store.load("state", tmp_path / "out")
    for v in (1, 2, 3):
        store.save("state", v, lambda d, v=v: ((d / "sub").mkdir(), (d / "sub" / "x.txt").write_text(f"v{v}")))
    assert store.latest("state") == "v00000003"
    assert sorted(p.name for p in (root / "state").iterdir()) == [POINTER, "v00000002", "v00000003"]
    assert store.load("state", tmp_path / "out") and (tmp_path / "out" / "sub" / "x.txt").read_text() == "v3"


def test_a_save_that_dies_midway_leaves_the_previous_state(tmp_path):
    store = StateStore(str(tmp_path / "state"))
    store.save("state", 1, lambda d: (d / "x.txt").write_text("one"))

    def crash(d):
        (d / "x.txt").write_text("two, half written")
        raise KeyboardInterrupt  # the process dies before the pointer moves

    with pytest.raises(KeyboardInterrupt):
        store.save("state", 2, crash)
    assert store.load("state", tmp_path / "out") and (tmp_path / "out" / "x.txt").read_text() == "one"
    # a restarted process reads the same: the pointer is on disk, not in memory
    assert StateStore(str(tmp_path / "state")).latest("state") == "v00000001"
