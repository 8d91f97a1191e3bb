"""The atomic writer: readers see the old file or the new one, never a mix or a leftover."""

from __future__ import annotations

import json
import multiprocessing as mp

import numpy as np
import pandas as pd
import pytest

from helpers.io import atomic_path, read_json, write_csv, write_json, write_npy, write_text


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "a.txt"
    write_text(target, "old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half of the new")
        raise RuntimeError("killed mid-write")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_writers_round_trip_and_create_folders(tmp_path):
    write_npy(tmp_path / "d" / "x.npy", np.arange(6, dtype=np.float32).reshape(2, 3))
    np.testing.assert_array_equal(np.load(tmp_path / "d" / "x.npy"), [[0, 1, 2], [3, 4, 5]])
    frame = pd.DataFrame({"a": [1, 2], "b": ["x", "y"]})
    write_csv(tmp_path / "t.csv", frame)
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "t.csv"), frame)


def test_write_json_is_strict_json(tmp_path):
    write_json(tmp_path / "m.json", {"auc": float("nan"), "n": np.int64(3),
                                     "v": np.array([1.0, np.inf]), "p": tmp_path})
    text = (tmp_path / "m.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"auc": None, "n": 3, "v": [1.0, None], "p": str(tmp_path)}


def test_read_json_names_a_damaged_file(tmp_path):
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.json"):
        read_json(tmp_path / "bad.json")


def _hammer(path: str, value: int) -> None:
    for _ in range(1000):
        write_text(path, str(value) * 100_000)


def test_concurrent_writers_never_leave_a_mixed_file(tmp_path):
    # Two real processes write the same target over and over; every read must see one
    # writer's whole content (a shared temporary name would interleave them).
    target = tmp_path / "shared.txt"
    write_text(target, "0" * 100_000)
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_hammer, args=(str(target), v)) for v in (1, 2)]
    for p in procs:
        p.start()
    seen = set()
    while any(p.is_alive() for p in procs):
        text = target.read_text()
        assert len(set(text)) == 1 and len(text) == 100_000
        seen.add(text[0])
    for p in procs:
        p.join()
        assert p.exitcode == 0
    assert not [p for p in tmp_path.iterdir() if p.name != "shared.txt"]
