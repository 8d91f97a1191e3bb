"""CatalogIndex and build_index: exact cosine search, storage checks, resumable builds."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.neighbors import NearestNeighbors

from helpers.audio import AudioError
from helpers.embed import Embedder, l2_normalise
from helpers.index import CatalogIndex, build_index, exact_top_k, index_files, recommend

DIM = 16


class Crash(Exception):
    """Stands in for a kill: not a file error, so the build does not swallow it."""


class FakeEmbedder(Embedder):
    """Deterministic vectors from the file name; counts calls; can crash after N files."""

    name = "fake"

    def __init__(self, variant: int = 0, fail_after: int | None = None) -> None:
        self.variant = variant
        self.fail_after = fail_after
        self.dim = DIM
        self.calls = 0

    def params(self):
        return {"variant": self.variant}

    def embed_raw_file(self, path):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise Crash(f"killed after {self.calls} files")
        self.calls += 1
        if "bad" in Path(path).name:
            raise AudioError(path, "cannot decode audio")
        seed = int(hashlib.sha256(f"{path}{self.variant}".encode()).hexdigest()[:8], 16)
        return np.random.default_rng(seed).normal(size=DIM).astype(np.float32)


def manifest(n: int, bad: tuple[int, ...] = ()) -> pd.DataFrame:
    names = [f"/music/{'bad' if i in bad else 'song'}_{i:03d}.wav" for i in range(n)]
    return pd.DataFrame({
        "path": names,
        "label": "human",
        "split": "train",
        "track_id": [f"t{i:03d}" for i in range(n)],
        "title": [f"Song {i}" for i in range(n)],
        "artist": [f"artist{i % 4}" for i in range(n)],
        "genre": [f"g{i % 3}" for i in range(n)],
        "source": "test",
    })


def random_index(n=300, dim=DIM, seed=0, **kwargs) -> CatalogIndex:
    rng = np.random.default_rng(seed)
    vectors = l2_normalise(rng.normal(size=(n, dim)))
    catalog = manifest(n)
    return CatalogIndex(vectors, catalog, FakeEmbedder().config(), **kwargs)


def test_exact_search_equals_sklearn_brute_force_cosine():
    index = random_index()
    rng = np.random.default_rng(1)
    queries = rng.normal(size=(20, DIM)).astype(np.float32)
    results = index.search(queries, k=7)
    nn = NearestNeighbors(n_neighbors=7, metric="cosine", algorithm="brute").fit(index.vectors)
    dist, idx = nn.kneighbors(queries)
    for res, d, i in zip(results, dist, idx):
        assert list(res["track_id"]) == list(index.catalog["track_id"].iloc[i])
        np.testing.assert_allclose(res["similarity"], 1 - d, atol=1e-5)
        assert list(res["rank"]) == list(range(1, 8))


def brute_force(queries, vectors, k):
    """The reference: full sort of every similarity, ties by row (lexsort), first k."""
    sims = queries.astype(np.float64) @ vectors.astype(np.float64).T
    rows = np.array([np.lexsort((np.arange(len(s)), -s))[:k] for s in sims])
    return np.take_along_axis(sims, rows, axis=1), rows


@pytest.mark.parametrize(("n", "k"), [(300, 7), (300, 1), (40, 40), (40, 41), (1, 5), (1, 1)])
def test_exact_top_k_equals_a_full_sort(n, k):
    rng = np.random.default_rng(n + k)
    vectors = l2_normalise(rng.normal(size=(n, DIM)))
    queries = l2_normalise(rng.normal(size=(9, DIM)))
    sims, rows = exact_top_k(queries, vectors, k)
    want_sims, want_rows = brute_force(queries, vectors, min(k, n))
    assert rows.shape == sims.shape == (9, min(k, n))
    np.testing.assert_array_equal(rows, want_rows)
    np.testing.assert_allclose(sims, want_sims, atol=1e-6)


def test_exact_top_k_breaks_ties_by_row_order_even_at_the_cut():
    # 30 rows, only 3 distinct directions: every similarity is tied many times over
    rng = np.random.default_rng(3)
    base = l2_normalise(rng.normal(size=(3, DIM)))
    vectors = base[rng.integers(0, 3, 30)]
    queries = l2_normalise(rng.normal(size=(6, DIM)))
    for k in (1, 4, 11, 30):
        sims, rows = exact_top_k(queries, vectors, k)
        want_sims, want_rows = brute_force(queries, vectors, k)
        np.testing.assert_array_equal(rows, want_rows)
        np.testing.assert_allclose(sims, want_sims, atol=1e-6)


def test_exact_top_k_cuts_big_batches_into_blocks(monkeypatch):
    rng = np.random.default_rng(4)
    vectors = l2_normalise(rng.normal(size=(50, DIM)))
    queries = l2_normalise(rng.normal(size=(23, DIM)))
    whole = exact_top_k(queries, vectors, 5)
    monkeypatch.setattr("helpers.index.EXACT_BLOCK_FLOATS", 50 * 4)  # blocks of 4 queries
    blocked = exact_top_k(queries, vectors, 5)
    np.testing.assert_array_equal(blocked[1], whole[1])
    np.testing.assert_array_equal(blocked[1], brute_force(queries, vectors, 5)[1])


@pytest.mark.parametrize(("n", "k"), [(1, 3), (12, 12), (12, 20)])
def test_flat_search_on_tiny_catalogs_returns_every_row_in_order(n, k):
    index = random_index(n=n)
    q = np.random.default_rng(2).normal(size=(3, DIM))
    results = index.search(q, k=k)
    _, want = brute_force(l2_normalise(q), index.vectors, min(k, n))
    for res, rows in zip(results, want):
        assert list(res["track_id"]) == list(index.catalog["track_id"].iloc[rows])
        assert list(res["rank"]) == list(range(1, min(k, n) + 1))
    alone = index.search(index.vectors[:1], k=k, exclude_track_ids=["t000"])[0]
    assert len(alone) == min(k, n - 1) and "t000" not in set(alone["track_id"])


def test_flat_index_keeps_no_second_copy_of_the_matrix():
    index = random_index()
    index.search(index.vectors[:2], k=3)
    assert index._faiss is None
    with pytest.raises(ValueError, match="flat index has no FAISS index"):
        _ = index.faiss_index


def test_query_from_the_catalog_never_returns_itself():
    index = random_index()
    rows = [3, 50, 299]
    with_self = index.search(index.vectors[rows], k=6)
    results = index.search(index.vectors[rows], k=5,
                           exclude_track_ids=list(index.catalog["track_id"].iloc[rows]))
    by_path = index.search(index.vectors[rows], k=5,
                           exclude_paths=list(index.catalog["path"].iloc[rows]))
    for r, res, res_p, full in zip(rows, results, by_path, with_self):
        assert full["track_id"].iloc[0] == index.catalog["track_id"].iloc[r]
        assert index.catalog["track_id"].iloc[r] not in set(res["track_id"])
        assert list(res["track_id"]) == list(full["track_id"].iloc[1:])
        assert list(res_p["track_id"]) == list(res["track_id"])


def test_hnsw_recall_at_5_is_high_on_small_data():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(20, 32))
    vectors = l2_normalise(centres[rng.integers(0, 20, 1000)] + 0.3 * rng.normal(size=(1000, 32)))
    catalog = manifest(1000)
    exact = CatalogIndex(vectors, catalog, {"name": "x", "dim": 32})
    hnsw = CatalogIndex(vectors, catalog, {"name": "x", "dim": 32}, index_type="hnsw",
                        hnsw_m=16, ef_search=64)
    queries = l2_normalise(centres[rng.integers(0, 20, 200)] + 0.3 * rng.normal(size=(200, 32)))
    truth = exact.search(queries, k=5)
    approx = hnsw.search(queries, k=5)
    recall = np.mean([len(set(t["track_id"]) & set(a["track_id"])) / 5
                      for t, a in zip(truth, approx)])
    assert recall >= 0.95


@pytest.mark.parametrize("index_type", ["flat", "hnsw"])
def test_save_load_round_trip(tmp_path, index_type):
    index = random_index(index_type=index_type)
    index.save(tmp_path / "idx")
    loaded = CatalogIndex.load(tmp_path / "idx")
    np.testing.assert_array_equal(loaded.vectors, index.vectors)
    pd.testing.assert_frame_equal(loaded.catalog, index.catalog)
    assert loaded.embedder_config == index.embedder_config
    assert loaded.index_type == index_type
    q = index.vectors[:4]
    for a, b in zip(index.search(q, k=5), loaded.search(q, k=5)):
        pd.testing.assert_frame_equal(a, b)
    assert not [p for p in (tmp_path / "idx").rglob("*") if ".tmp" in p.name]


def test_each_save_is_a_new_generation_and_the_old_one_is_removed(tmp_path):
    index = random_index(n=20, index_type="hnsw")
    index.save(tmp_path)
    first = index_files(tmp_path)
    index.add(l2_normalise(np.ones((1, DIM))), manifest(21).iloc[20:])
    index.save(tmp_path)
    second = index_files(tmp_path)
    assert second["vectors"].parent != first["vectors"].parent
    assert not first["vectors"].parent.exists()
    assert [p.name for p in tmp_path.glob("data-*")] == [second["vectors"].parent.name]
    assert second["graph"].is_file() and len(CatalogIndex.load(tmp_path)) == 21


def test_an_index_folder_of_the_first_format_loads_and_converts(tmp_path):
    # Format 1 kept vectors.npy / catalog.csv next to meta.json, which had no "data" entry.
    index = random_index(n=30)
    np.save(tmp_path / "vectors.npy", index.vectors)
    index.catalog.to_csv(tmp_path / "catalog.csv", index=False)
    meta = {**index.meta, "version": 1}
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    loaded = CatalogIndex.load(tmp_path)
    np.testing.assert_array_equal(loaded.vectors, index.vectors)
    pd.testing.assert_frame_equal(loaded.catalog, index.catalog)
    loaded.add(l2_normalise(np.ones((1, DIM))), manifest(31).iloc[30:])
    loaded.save(tmp_path)
    assert not (tmp_path / "vectors.npy").exists() and not (tmp_path / "catalog.csv").exists()
    assert len(CatalogIndex.load(tmp_path)) == 31


def test_an_index_of_a_newer_format_is_refused_clearly(tmp_path):
    random_index().save(tmp_path)
    meta = json.loads((tmp_path / "meta.json").read_text())
    (tmp_path / "meta.json").write_text(json.dumps({**meta, "version": 99}))
    with pytest.raises(ValueError, match="format version 99 is newer.*update helpers"):
        CatalogIndex.load(tmp_path)


def test_truncated_vectors_file_is_a_clear_error(tmp_path):
    random_index().save(tmp_path)
    vectors = index_files(tmp_path)["vectors"]
    data = vectors.read_bytes()
    vectors.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=str(vectors)):
        CatalogIndex.load(tmp_path)


def test_meta_count_mismatch_is_a_clear_error(tmp_path):
    random_index().save(tmp_path)
    meta = json.loads((tmp_path / "meta.json").read_text())
    meta["count"] += 1
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"vectors\.npy.*meta\.json says"):
        CatalogIndex.load(tmp_path)


def test_catalog_rows_mismatch_and_missing_files_are_clear_errors(tmp_path):
    random_index().save(tmp_path)
    path = index_files(tmp_path)["catalog"]
    pd.read_csv(path).iloc[:-1].to_csv(path, index=False)
    with pytest.raises(ValueError, match="catalog.csv"):
        CatalogIndex.load(tmp_path)
    (tmp_path / "meta.json").unlink()
    with pytest.raises(FileNotFoundError, match="meta.json"):
        CatalogIndex.load(tmp_path)


def test_query_embedder_with_another_config_is_refused(tmp_path):
    index = build_index(manifest(5), tmp_path, FakeEmbedder(variant=0), progress=False)
    assert isinstance(index.check_embedder(FakeEmbedder(variant=0)), FakeEmbedder)
    with pytest.raises(ValueError, match="does not match the index.*params.variant"):
        index.check_embedder(FakeEmbedder(variant=1))
    with pytest.raises(ValueError, match="does not match"):
        recommend(["/music/query.wav"], index, FakeEmbedder(variant=1))
    with pytest.raises(ValueError, match="dim"):
        index.search(np.ones((1, DIM + 1), np.float32))


def test_build_resumes_after_a_crash_without_re_embedding(tmp_path):
    rows = manifest(10)
    reference = build_index(rows, tmp_path / "ref", FakeEmbedder(), progress=False)

    crashing = FakeEmbedder(fail_after=7)
    with pytest.raises(Crash):
        build_index(rows, tmp_path / "idx", crashing, progress=False, checkpoint_every=3)
    assert not (tmp_path / "idx" / "meta.json").exists()
    assert len(list((tmp_path / "idx" / "partial").glob("chunk_*.npz"))) == 2  # 6 files saved

    resumed = FakeEmbedder()
    index = build_index(rows, tmp_path / "idx", resumed, progress=False, checkpoint_every=3)
    assert resumed.calls == 4  # only the files after the last checkpoint
    np.testing.assert_array_equal(index.vectors, reference.vectors)
    pd.testing.assert_frame_equal(index.catalog, reference.catalog)
    assert not (tmp_path / "idx" / "partial").exists()


def test_re_running_with_a_bigger_manifest_embeds_only_new_tracks(tmp_path):
    rows = manifest(10)
    full = build_index(rows, tmp_path / "full", FakeEmbedder(), progress=False)
    build_index(rows.iloc[:6], tmp_path / "idx", FakeEmbedder(), progress=False)
    again = FakeEmbedder()
    index = build_index(rows, tmp_path / "idx", again, progress=False)
    assert again.calls == 4
    assert len(CatalogIndex.load(tmp_path / "idx")) == 10
    np.testing.assert_array_equal(index.vectors, full.vectors)
    nothing_new = FakeEmbedder()
    build_index(rows, tmp_path / "idx", nothing_new, progress=False)
    assert nothing_new.calls == 0


@pytest.mark.parametrize("index_type", ["flat", "hnsw"])
def test_add_appends_searchable_tracks(index_type):
    index = random_index(n=20, index_type=index_type)
    index.search(index.vectors[:1], k=1)  # HNSW: the graph exists before the add, which
    # must update it too
    new = l2_normalise(np.random.default_rng(5).normal(size=(2, DIM)))
    rows = manifest(22).iloc[20:]
    index.add(new, rows)
    assert len(index) == 22
    assert index.search(new[:1], k=1)[0]["track_id"].iloc[0] == "t020"
    with pytest.raises(ValueError, match="duplicate"):
        index.add(new[:1], rows.iloc[:1])


def test_bad_file_is_logged_and_skipped(tmp_path, caplog):
    index = build_index(manifest(6, bad=(2,)), tmp_path, FakeEmbedder(), progress=False)
    assert len(index) == 5 and "t002" not in set(index.catalog["track_id"])
    failures = pd.read_csv(tmp_path / "failures.csv")
    assert list(failures["track_id"]) == ["t002"]
    assert "cannot decode" in failures["error"].iloc[0]
    assert "bad_002" in caplog.text


def test_only_the_requested_label_is_indexed(tmp_path):
    rows = manifest(6)
    rows.loc[[0, 1], "label"] = "ai"
    index = build_index(rows, tmp_path, FakeEmbedder(), progress=False)
    assert set(index.catalog["track_id"]) == {"t002", "t003", "t004", "t005"}


# -- self-matches: resolved paths and repeated track ids ---------------------------------------


class NameEmbedder(FakeEmbedder):
    """Vectors from the file *name*: the same file gives the same vector however it is named
    (relative or absolute), and excerpts of one song (``<song>_<n>.wav``) lie close together."""

    def embed_raw_file(self, path):
        song, _, part = Path(path).stem.rpartition("_")
        seed = int(hashlib.sha256(song.encode()).hexdigest()[:8], 16)
        base = np.random.default_rng(seed).normal(size=DIM)
        return (base + 0.05 * np.random.default_rng(int(part)).normal(size=DIM)).astype(
            np.float32)


def test_relative_manifest_paths_and_sibling_excerpts_never_match_the_query(tmp_path,
                                                                          monkeypatch):
    monkeypatch.chdir(tmp_path)
    songs = [f"song{s}_{part}" for s in range(4) for part in range(3)]  # 3 excerpts each
    for name in songs:
        (tmp_path / "audio").mkdir(exist_ok=True)
        (tmp_path / "audio" / f"{name}.wav").write_bytes(b"")
    rows = pd.DataFrame({"path": [f"audio/{n}.wav" for n in songs], "label": "human",
                         "track_id": [n.split("_")[0] for n in songs]})
    index = build_index(rows, tmp_path / "index", NameEmbedder(), progress=False)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # queried from another working directory
    query = tmp_path / "audio" / "song1_0.wav"  # absolute, the catalog was given relative
    table = recommend([query], index, NameEmbedder(), k=len(songs))
    assert len(table) == len(songs) - 3
    assert "song1" not in set(table["track_id"])
    assert str(query) not in set(table["path"]) and table["similarity"].max() < 0.99
    # the same exclusions through search(), by track id alone
    hits = index.search(index.vectors[:1], k=len(songs), exclude_track_ids=["song0"])[0]
    assert len(hits) == len(songs) - 3 and "song0" not in set(hits["track_id"])


def test_re_running_a_build_adds_new_excerpts_of_an_indexed_track(tmp_path):
    rows = manifest(4)
    build_index(rows, tmp_path, FakeEmbedder(), progress=False)
    extra = manifest(5).iloc[4:].assign(track_id="t000")  # a second excerpt of track t000
    index = build_index(pd.concat([rows, extra]), tmp_path, FakeEmbedder(), progress=False)
    assert len(index) == 5 and list(index.catalog["track_id"]).count("t000") == 2


# -- catalog metadata from a folder ------------------------------------------------------------


def test_folder_index_has_titles_artists_and_genres(tmp_path):
    import soundfile as sf

    from helpers.datasets import load_manifest

    root = tmp_path / "corpus"
    files = {
        "human/rock/The Band/first_song.wav": None,        # artist folder under the genre
        "human/rock/The Band/Live/encore.wav": None,       # an album folder below the artist
        "human/blues/blues.00012.wav": None,              # GTZAN: the folder is the genre
        "human/jazz/train/solo.wav": None,                # a split folder is no artist
        "human/Nina - Blue Moon.wav": None,                # "Artist - Title"
        "human/tagged.wav": {"title": "Real Title", "artist": "Real Artist"},
        "ai/x.wav": None,
    }
    for rel, tags in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        with sf.SoundFile(path, "w", samplerate=8000, channels=1) as f:
            for key, value in (tags or {}).items():
                setattr(f, key, value)
            f.write(np.zeros(800, np.float32))
    index = build_index(load_manifest(root), tmp_path / "index", FakeEmbedder(),
                        progress=False)
    got = {Path(p).name: (t, a, g) for p, t, a, g in
           index.catalog[["path", "title", "artist", "genre"]].itertuples(index=False)}
    assert got == {
        "first_song.wav": ("first song", "The Band", "rock"),
        "encore.wav": ("encore", "The Band", "rock"),
        "blues.00012.wav": ("blues.00012", "", "blues"),
        "solo.wav": ("solo", "", "jazz"),
        "Nina - Blue Moon.wav": ("Blue Moon", "Nina", ""),
        "tagged.wav": ("Real Title", "Real Artist", ""),
    }


def test_manifest_values_are_never_replaced_by_file_names(tmp_path):
    index = build_index(manifest(3), tmp_path, FakeEmbedder(), progress=False)
    assert list(index.catalog["title"]) == ["Song 0", "Song 1", "Song 2"]
    assert list(index.catalog["artist"]) == ["artist0", "artist1", "artist2"]


# -- audio policy in the metadata --------------------------------------------------------------


def test_an_index_without_a_stored_policy_loads_with_the_first_30_s_and_says_so(tmp_path,
                                                                                  caplog):
    build_index(manifest(4), tmp_path, FakeEmbedder(), progress=False)
    meta_path = index_files(tmp_path)["meta"]
    meta = json.loads(meta_path.read_text())
    assert meta["embedder"]["policy"]["description"] == "first 30 s"
    del meta["embedder"]["policy"]
    meta_path.write_text(json.dumps(meta))
    with caplog.at_level("INFO", logger="helpers.index"):
        old = CatalogIndex.load(tmp_path)
    assert "before audio policies were stored" in caplog.text and "first 30 s" in caplog.text
    assert old.embedder_config["policy"]["seconds"] == 30.0
    old.check_embedder(FakeEmbedder())  # today's embedder still queries it


def test_an_index_refuses_a_query_embedder_with_another_policy(tmp_path):
    index = build_index(manifest(4), tmp_path, FakeEmbedder(), progress=False)
    other = FakeEmbedder()
    other.position = "centre"
    with pytest.raises(ValueError, match="audio policy"):
        index.check_embedder(other)


# -- HNSW: efSearch tuned, exact search below the threshold ------------------------------------


def test_hnsw_ef_search_is_tuned_to_the_target_recall_and_stored(tmp_path):
    rng = np.random.default_rng(1)
    vectors = l2_normalise(rng.normal(size=(3000, 64)).astype(np.float32))
    catalog = pd.DataFrame({"track_id": [f"t{i}" for i in range(3000)],
                            "path": [f"/m/{i}.wav" for i in range(3000)]})
    index = CatalogIndex(vectors, catalog, {"name": "x", "dim": 64}, index_type="hnsw")
    queries = l2_normalise(rng.normal(size=(200, 64)).astype(np.float32))
    truth = NearestNeighbors(n_neighbors=5, metric="cosine").fit(vectors).kneighbors(
        queries, return_distance=False)
    found = [set(f["track_id"]) for f in index.search(queries, k=5)]
    recall = np.mean([len(f & {f"t{j}" for j in t}) / 5 for f, t in zip(found, truth)])
    assert recall >= 0.93 and index.ef_tuning["recall_at_k"] >= 0.95
    assert index.ef_search > 16  # random 64-d vectors need more than the smallest value
    index.save(tmp_path)
    meta = json.loads(index_files(tmp_path)["meta"].read_text())
    assert meta["hnsw"]["ef_search"] == index.ef_search
    assert CatalogIndex.load(tmp_path).ef_search == index.ef_search


def test_small_catalogs_get_exact_search_unless_hnsw_is_asked_for(tmp_path):
    assert build_index(manifest(5), tmp_path / "a", FakeEmbedder(),
                       progress=False).index_type == "flat"
    assert build_index(manifest(5), tmp_path / "b", FakeEmbedder(), progress=False,
                       hnsw=True).index_type == "hnsw"


def test_cli_index_of_a_plain_folder_of_music(audio_folder, tmp_path, capsys):
    from helpers.cli import main

    out = tmp_path / "index"
    # a user's music folder: no manifest, no ai/ or human/ level
    assert main(["index", "--manifest", str(audio_folder / "human"), "--out", str(out),
                 "--embedder", "features"]) == 0
    catalog = CatalogIndex.load(out).catalog
    assert set(catalog["title"]) == {f"human{i}" for i in range(6)}  # broken.wav failed


def test_cli_index_label_all_keeps_both_labels_with_titles(audio_folder, tmp_path, capsys):
    from helpers.cli import main

    out = tmp_path / "index"
    assert main(["index", "--manifest", str(audio_folder), "--out", str(out), "--embedder",
                 "features", "--label", "all"]) == 0
    assert "exact search" in capsys.readouterr().out
    catalog = CatalogIndex.load(out).catalog
    assert len(catalog) == 12  # 6 ai + 6 human; broken.wav is in failures.csv
    assert set(catalog["title"]) == {f"{label}{i}" for label in ("ai", "human")
                                     for i in range(6)}
