"""Faults: SIGKILL index building and training mid-way, restart, and lose nothing.

(Preprocessing has its own SIGKILL test in ``tests/test_cache.py``.) Each test kills the real
CLI (`python -m helpers ...`) in a subprocess once its first checkpoints are on disk, restarts
the same command (in this process, through `helpers.cli.main`, which saves a second
interpreter start of several seconds), and checks that finished work was neither redone nor
lost and that the result equals an uninterrupted run. Truncated checkpoints and index files
must be refused with a message that names the file.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import faiss
import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
from conftest import tone

from helpers.cache import preprocess
from helpers.cli import main
from helpers.config import FrontEndConfig
from helpers.datasets import load_manifest, write_manifest
from helpers.embed import FeatureEmbedder, l2_normalise
from helpers.index import CatalogIndex, build_index, index_files
from helpers.run import load_run
from helpers.train import TrainConfig, train

CLI = [sys.executable, "-m", "helpers"]
FRONT = FrontEndConfig(duration=2.0)
EPOCHS = 8


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _kill_when(proc: subprocess.Popen, ready, what: str, timeout: float = 120.0) -> None:
    """SIGKILL `proc` as soon as `ready()` is true; fail if it ended or never got there."""
    deadline = time.time() + timeout
    while not ready():
        assert proc.poll() is None, f"the job ended (rc {proc.returncode}) before {what}"
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL


def _state_dicts_equal(a: dict, b: dict, name: str) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{name}:{key} differs"


# --- index building --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def songs(tmp_path_factory) -> Path:
    """12 one-second human clips and one broken file (in the first checkpoint chunk)."""
    folder = tmp_path_factory.mktemp("songs")
    rows = []
    for i in range(12):
        sf.write(folder / f"s{i:02d}.wav", tone(1.0, 16_000, 150.0 + 45 * i, seed=i), 16_000)
        rows.append({"path": f"s{i:02d}.wav", "label": "human", "split": "train",
                     "track_id": f"t{i:02d}", "artist": f"a{i % 3}"})
    (folder / "broken.wav").write_text("not audio")
    rows.insert(1, {"path": "broken.wav", "label": "human", "split": "train",
                    "track_id": "broken", "artist": "a0"})
    return write_manifest(pd.DataFrame(rows), folder / "manifest.csv")


def _chunk_paths(partial: Path) -> tuple[list[str], list[str]]:
    ok, bad = [], []
    for chunk in sorted(partial.glob("chunk_*.npz")):
        with np.load(chunk) as z:
            ok += z["ok_paths"].tolist()
            bad += z["bad_paths"].tolist()
    return ok, bad


def test_index_build_resumes_after_kill_without_re_embedding(songs, tmp_path, caplog):
    out = tmp_path / "index"
    args = ["index", "--manifest", str(songs), "--out", str(out), "--embedder", "features",
            "--checkpoint-every", "3"]
    proc = subprocess.Popen([*CLI, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _kill_when(proc, lambda: len(list((out / "partial").glob("chunk_*.npz"))) >= 2,
               "two checkpoint chunks")
    assert not (out / "meta.json").exists(), "the kill should land before the index is saved"
    ok, bad = _chunk_paths(out / "partial")
    saved = {p: v for p, v in zip(ok, _raw_vectors(out / "partial"), strict=True)}
    assert len(ok) + len(bad) < 13 and bad == [str(songs.parent / "broken.wav")]

    with caplog.at_level(logging.INFO, logger="helpers.index"):
        assert main(args) == 0
    got = re.search(r"resuming: (\d+) files already embedded, (\d+) failed, (\d+) to go",
                    caplog.text)
    assert got, caplog.text
    assert (int(got[1]), int(got[2]), int(got[3])) == (len(ok), 1, 13 - len(ok) - 1)

    index = CatalogIndex.load(out)
    reference = build_index(load_manifest(songs), tmp_path / "ref", FeatureEmbedder(),
                            progress=False)
    np.testing.assert_array_equal(index.vectors, reference.vectors)
    pd.testing.assert_frame_equal(index.catalog, reference.catalog)
    assert index.embedder_config == reference.embedder_config
    # the broken file's failure, found before the kill, is not lost
    assert pd.read_csv(out / "failures.csv")["track_id"].tolist() == ["broken"]
    assert not (out / "partial").exists()
    # what was embedded before the kill is what the index holds (not recomputed differently)
    raw = FeatureEmbedder().with_state(index.embedder_config["state"])
    rows = index.catalog.set_index("path").index
    for path, vector in saved.items():
        np.testing.assert_array_equal(index.vectors[rows.get_loc(path)],
                                      raw.transform(vector[None])[0])


def _raw_vectors(partial: Path) -> list[np.ndarray]:
    vectors = []
    for chunk in sorted(partial.glob("chunk_*.npz")):
        with np.load(chunk) as z:
            vectors += list(z["vectors"])
    return vectors


# A deterministic embedder that logs every file it embeds. The same source runs in this
# process and in the subprocesses below, so their vectors and configs are the same.
_EMBEDDER_SOURCE = """
import hashlib
import time

import numpy as np

from helpers.embed import Embedder


class PathHashEmbedder(Embedder):
    name = "fake"
    dim = 8

    def __init__(self, log_path, delay=0.0):
        self.log_path, self.delay = log_path, delay

    def params(self):
        return {"variant": 0}

    def embed_raw_file(self, path):
        with open(self.log_path, "a") as log:
            log.write(f"{path}\\n")
        time.sleep(self.delay)
        seed = int(hashlib.sha256(str(path).encode()).hexdigest()[:8], 16)
        return np.random.default_rng(seed).normal(size=self.dim).astype(np.float32)
"""

# argv: index folder, manifest csv, "before:NAME" / "after:NAME" (SIGKILL itself around the
# index's write of file NAME) or "never", embedding log, then optional barrier files (this
# process's first): touch ours, wait for all, so that two builds start together.
_BUILD_SCRIPT = _EMBEDDER_SOURCE + """
import os
import signal
import sys
from pathlib import Path

import pandas as pd

import helpers.index as index_module

out, manifest_csv, kill_at, log_path = sys.argv[1:5]
barrier = [Path(p) for p in sys.argv[5:]]
when, _, target = kill_at.partition(":")


def killing(writer):
    def write(path, *args, **kwargs):
        if when == "before" and Path(path).name == target:
            os.kill(os.getpid(), signal.SIGKILL)
        result = writer(path, *args, **kwargs)
        if when == "after" and Path(path).name == target:
            os.kill(os.getpid(), signal.SIGKILL)
        return result
    return write


for name in ("write_npy", "write_csv", "write_json"):
    setattr(index_module, name, killing(getattr(index_module, name)))
if barrier:
    barrier[0].touch()
    while not all(p.exists() for p in barrier):
        time.sleep(0.01)
embedder = PathHashEmbedder(log_path, delay=0.1 if barrier else 0.0)
index_module.build_index(pd.read_csv(manifest_csv), out, embedder, progress=False,
                         checkpoint_every=2)
"""
_namespace: dict = {}
exec(_EMBEDDER_SOURCE, _namespace)  # noqa: S102 (our own source, shared with the subprocesses)
PathHashEmbedder = _namespace["PathHashEmbedder"]


def _fake_manifest(n: int, first: int = 0) -> pd.DataFrame:
    ids = range(first, first + n)
    return pd.DataFrame({"path": [f"/music/song_{i:03d}.wav" for i in ids], "label": "human",
                         "track_id": [f"t{i:03d}" for i in ids]})


def _embedded(log: Path) -> list[str]:
    return log.read_text().split() if log.exists() else []


@pytest.mark.parametrize("kill_at", ["after:vectors.npy", "before:meta.json",
                                     "after:meta.json"])
def test_adding_to_an_index_killed_mid_commit_keeps_it_whole(tmp_path, kill_at):
    out, log = tmp_path / "index", tmp_path / "embedded.log"
    build_index(_fake_manifest(6), out, PathHashEmbedder(log), progress=False)
    before = CatalogIndex.load(out)
    _fake_manifest(10).to_csv(tmp_path / "more.csv", index=False)
    proc = subprocess.run([sys.executable, "-c", _BUILD_SCRIPT, str(out),
                           str(tmp_path / "more.csv"), kill_at, str(log)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]

    after_kill = CatalogIndex.load(out)
    if kill_at == "after:meta.json":  # the commit was made; only the clean-up is missing
        assert len(after_kill) == 10
    else:  # the old index, intact
        np.testing.assert_array_equal(after_kill.vectors, before.vectors)
        pd.testing.assert_frame_equal(after_kill.catalog, before.catalog)
    embedded = _embedded(log)
    index = build_index(_fake_manifest(10), out, PathHashEmbedder(log), progress=False)
    assert _embedded(log) == embedded, "the re-run embedded files again"
    assert sorted(embedded) == sorted(_fake_manifest(10)["path"])  # each one exactly once
    reference = build_index(_fake_manifest(10), tmp_path / "ref",
                            PathHashEmbedder(tmp_path / "ref.log"), progress=False)
    np.testing.assert_array_equal(index.vectors, reference.vectors)
    pd.testing.assert_frame_equal(CatalogIndex.load(out).catalog, reference.catalog)
    assert len(list(out.glob("data-*"))) == 1 and not (out / "partial").exists()


def test_two_processes_adding_to_one_index_keep_every_row(tmp_path):
    out, log = tmp_path / "index", tmp_path / "embedded.log"
    build_index(_fake_manifest(2), out, PathHashEmbedder(log), progress=False)
    _fake_manifest(5, first=2).to_csv(tmp_path / "a.csv", index=False)
    _fake_manifest(5, first=7).to_csv(tmp_path / "b.csv", index=False)
    ready_a, ready_b = tmp_path / "ready_a", tmp_path / "ready_b"
    procs = [subprocess.Popen([sys.executable, "-c", _BUILD_SCRIPT, str(out),
                               str(tmp_path / f"{name}.csv"), "never", str(log), *barrier],
                              stderr=subprocess.PIPE, text=True)
             for name, barrier in (("a", [str(ready_a), str(ready_b)]),
                                   ("b", [str(ready_b), str(ready_a)]))]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-2000:]
    index = CatalogIndex.load(out)
    assert sorted(index.catalog["path"]) == sorted(_fake_manifest(12)["path"])
    assert sorted(_embedded(log)) == sorted(_fake_manifest(12)["path"])  # each one once


# --- training --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def killed_and_resumed(tmp_path_factory) -> dict:
    """A reference run, and the same run killed by SIGKILL after epoch >= 1, then resumed."""
    root = tmp_path_factory.mktemp("train")
    rng = np.random.default_rng(0)
    rows = []
    for i in range(16):
        label = ("human", "ai")[i % 2]
        y = tone(2.0, 16_000, 220.0 + 30 * i, seed=i)
        if label == "human":  # noisier: something to learn
            y = y + (0.1 * rng.standard_normal(len(y))).astype(np.float32)
        sf.write(root / f"c{i:02d}.wav", y, 16_000)
        rows.append({"path": f"c{i:02d}.wav", "label": label, "split": "train",
                     "track_id": f"{label}{i}"})
    manifest = write_manifest(pd.DataFrame(rows), root / "manifest.csv")
    cache = root / "cache"
    preprocess(load_manifest(manifest), cache, FRONT, n_jobs=1, progress=False)
    shards = {p.name: p.stat().st_mtime_ns for p in (cache / "shards").iterdir()}

    reference = train(manifest, root / "reference", preset="tiny", cache_dir=cache,
                      frontend=FRONT, progress=False,
                      train_config=TrainConfig(epochs=EPOCHS, batch_size=2, seed=1))
    run = root / "killed"
    args = ["train", "--manifest", str(manifest), "--out", str(run), "--cache", str(cache),
            "--duration", "2", "--epochs", str(EPOCHS), "--batch-size", "2", "--seed", "1",
            "--augment", "0"]  # the reference trains on the manifest as it is
    proc = subprocess.Popen([*CLI, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _kill_when(proc, (run / "last.pt").exists, "the first epoch's checkpoint")
    at_kill = torch.load(run / "last.pt", weights_only=True)
    logger = logging.getLogger("helpers.train")
    handler = _ListHandler()
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        code = main([*args, "--resume"])
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    return {"reference": reference, "run": run, "at_kill": at_kill, "code": code,
            "log": "\n".join(handler.messages), "cache": cache, "shards": shards,
            "args": args}


class _ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_training_resumes_after_kill_with_identical_weights(killed_and_resumed):
    k = killed_and_resumed
    assert 1 <= k["at_kill"]["epoch"] < EPOCHS and not k["at_kill"]["finished"]
    assert k["code"] == 0
    assert f"resuming {k['run']} after epoch {k['at_kill']['epoch']}" in k["log"]
    for name in ("best.pt", "last.pt"):
        a = torch.load(k["reference"] / name, weights_only=True)
        b = torch.load(k["run"] / name, weights_only=True)
        assert a["epoch"] == b["epoch"]
        _state_dicts_equal(a["model"], b["model"], name)
    ref_info = json.loads((k["reference"] / "run.json").read_text())
    info = json.loads((k["run"] / "run.json").read_text())
    for key in ("temperature", "threshold", "best_epoch", "epochs_run", "n_clips"):
        assert info[key] == ref_info[key], key


def test_training_kill_loses_and_redoes_nothing_finished(killed_and_resumed, caplog):
    k = killed_and_resumed
    history = pd.read_csv(k["run"] / "history.csv")
    reference = pd.read_csv(k["reference"] / "history.csv")
    assert history["epoch"].tolist() == list(range(1, EPOCHS + 1))
    pd.testing.assert_series_equal(history["train_loss"], reference["train_loss"])
    # epochs finished before the kill keep their recorded timings: they were not run again
    before = pd.DataFrame(k["at_kill"]["history"])
    pd.testing.assert_frame_equal(history.iloc[: len(before)].reset_index(drop=True),
                                  before[history.columns], check_dtype=False)
    # the feature cache was reused as it was
    now = {p.name: p.stat().st_mtime_ns for p in (k["cache"] / "shards").iterdir()}
    assert now == k["shards"]
    # a finished run is left alone by another --resume
    with caplog.at_level(logging.INFO, logger="helpers.train"):
        assert main([*k["args"], "--resume"]) == 0
    assert "run already finished" in caplog.text


# --- truncated files are refused by name -------------------------------------------------------


def test_truncated_checkpoints_are_clear_errors(killed_and_resumed, tmp_path):
    run = shutil.copytree(killed_and_resumed["run"], tmp_path / "run")
    best, last = run / "best.pt", run / "last.pt"
    best.write_bytes(best.read_bytes()[: best.stat().st_size // 2])
    with pytest.raises(RuntimeError, match=rf"{re.escape(str(best))}: unreadable checkpoint"):
        load_run(run)
    model, _ = load_run(run, checkpoint="last.pt")  # the other checkpoint still loads
    assert sum(p.numel() for p in model.parameters()) > 0
    last.write_bytes(last.read_bytes()[:1000])
    with pytest.raises(RuntimeError, match=rf"{re.escape(str(last))}: unreadable checkpoint"):
        train(killed_and_resumed["run"].parent / "manifest.csv", run, resume=True,
              progress=False)


def _small_index(index_type: str = "flat") -> CatalogIndex:
    vectors = l2_normalise(np.random.default_rng(0).normal(size=(40, 8)))
    catalog = pd.DataFrame({"track_id": [f"t{i}" for i in range(40)],
                            "path": [f"/m/{i}.wav" for i in range(40)]})
    return CatalogIndex(vectors, catalog, {"name": "fake", "dim": 8, "params": {},
                                           "state": None}, index_type=index_type)


@pytest.mark.parametrize(("name", "keep"), [("catalog.csv", 0.5), ("catalog.csv", 0.0),
                                            ("meta.json", 0.5), ("vectors.npy", 0.9)])
def test_truncated_index_files_are_clear_errors(tmp_path, name, keep):
    _small_index().save(tmp_path)
    path = {p.name: p for p in index_files(tmp_path).values()}[name]
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(ValueError) as info:
        CatalogIndex.load(tmp_path)
    assert str(path) in str(info.value)
    assert "rebuild" in str(info.value) or "delete" in str(info.value)


def test_a_truncated_hnsw_graph_is_rebuilt_from_the_vectors(tmp_path, caplog):
    index = _small_index("hnsw")
    index.save(tmp_path)
    graph = index_files(tmp_path)["graph"]
    graph.write_bytes(graph.read_bytes()[:500])
    with pytest.raises(RuntimeError):
        faiss.read_index(str(graph))  # the damage is real
    loaded = CatalogIndex.load(tmp_path)
    assert "index.faiss unreadable" in caplog.text
    query = index.vectors[:5]
    for a, b in zip(loaded.search(query, k=3), index.search(query, k=3), strict=True):
        pd.testing.assert_frame_equal(a, b)
