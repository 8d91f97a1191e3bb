"""Catalog index: cosine nearest neighbours over human tracks, stored in a folder.

An index folder is self-describing::

    index/
      meta.json          the commit record: embedder config (name, params, fitted state),
                         dim, count, index type, date, and "data": the generation folder below
      data-000003/       one generation of the index, never changed once meta.json names it
        vectors.npy      (n, dim) float32, unit-norm rows: the source of truth
        catalog.csv      one row per vector: track_id, path, title, artist, genre, source
        index.faiss      only for HNSW: a cache of the graph (rebuilt when absent or stale)
      failures.csv       files the last build could not read, with the reason
      partial/           raw vectors of a build in progress (removed when it is committed)
      index.lock         held by a running build, so that two builds never interleave

Saving writes a whole new generation folder, then replaces ``meta.json`` (one atomic rename,
`helpers.io`), then deletes the previous generation. A process killed at any point therefore
leaves either the old index or the new one, never files that disagree; the checkpoints in
``partial/`` survive until the commit, so re-running the build embeds nothing twice. Folders
written before generations existed (format 1: the three files next to ``meta.json``) still
load, and are converted on their next save.

Search is the inner product of unit vectors, i.e. cosine similarity: exact up to
`FLAT_MAX_TRACKS` tracks, HNSW (FAISS ``IndexHNSWFlat`` with ``METRIC_INNER_PRODUCT``) above,
unless asked otherwise. Exact search is one numpy matrix product over ``vectors.npy`` itself
(`exact_top_k`), no second copy of the matrix: FAISS ``IndexFlatIP``, whose bundled OpenBLAS
may not know the CPU, was several times slower for query batches and no faster for one query
at 10k-50k tracks (measured in the same run: benchmarks/results/index.json). It reads
the whole matrix per query, 2 KB per 512-d track: a few milliseconds at GTZAN's (1k) and
SONICS' (tens of thousands) sizes, where HNSW only adds a graph to build and a recall below 1
(benchmarks/results/hnsw.json). An HNSW index picks its ``efSearch`` on its own catalog so
that recall@5 reaches 0.95 (`CatalogIndex.tune_ef_search`) and stores it in ``meta.json``.

A query never gets itself back: `CatalogIndex.search` drops every catalog row of the query's
track id and every row whose resolved absolute path is the query's, together with the other
excerpts (rows) of that row's track.

`build_index` embeds a manifest's human tracks with a progress bar, checkpointing raw vectors
in ``partial/`` every few files so that a killed build resumes where it stopped; re-running it
on a bigger manifest embeds only the new paths. It holds ``index.lock`` from the first read to
the commit, so two builds adding to one folder at the same time run one after the other and
keep every row.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import shutil
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pandas as pd
import soundfile as sf
from tqdm import tqdm

from helpers.embed import (
    Embedder,
    canonical_config,
    describe_config_difference,
    embedder_from_config,
    l2_normalise,
    legacy_policy,
    same_space,
    vector_space,
)
from helpers.io import (
    atomic_path,
    file_lock,
    read_json,
    write_bytes,
    write_csv,
    write_json,
    write_npy,
)

log = logging.getLogger(__name__)

FORMAT_VERSION = 2  # 1: files beside meta.json; 2: generation folders named by meta.json
LOCK_NAME = "index.lock"
DATA_FILES = ("vectors.npy", "catalog.csv", "index.faiss")
_GENERATION = re.compile(r"data-(\d{6})")
CATALOG_COLUMNS = ("track_id", "path", "title", "artist", "genre", "source")
INDEX_TYPES = ("flat", "hnsw")
#: Largest catalog built as exact search by ``index_type="auto"``: below it, one exact query
#: costs milliseconds (benchmarks/results/hnsw.json) and HNSW would only lose recall.
FLAT_MAX_TRACKS = 100_000
HNSW_M = 32  # neighbours per node: memory ~ 2 * M * 4 bytes per track on top of the vector
EF_CONSTRUCTION = 80
#: efSearch values `CatalogIndex.tune_ef_search` tries, smallest first.
EF_SEARCH_LADDER = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
RESULT_COLUMNS = ("rank", "track_id", "similarity", "title", "artist", "genre", "path")


def resolve_path(path: str | os.PathLike) -> str:
    """A path as the index compares paths: absolute, normalised, ``~`` expanded.

    Relative paths are taken relative to the working directory; symbolic links are kept (a
    link and its target are two catalog entries, as they are two manifest rows).
    """
    return os.path.normcase(os.path.abspath(os.path.expanduser(os.fspath(path))))


def _catalog_frame(rows: pd.DataFrame) -> pd.DataFrame:
    """The catalog columns of a manifest, as strings, missing ones empty."""
    out = pd.DataFrame(index=range(len(rows)))
    for col in CATALOG_COLUMNS:
        values = rows[col].to_numpy() if col in rows.columns else [""] * len(rows)
        out[col] = pd.Series(values, dtype=object).fillna("").astype(str).to_numpy()
    if (out["track_id"] == "").any():
        missing = out["track_id"] == ""
        out.loc[missing, "track_id"] = [Path(p).stem for p in out.loc[missing, "path"]]
    return out


class CatalogIndex:
    """Cosine nearest-neighbour index over L2-normalised track vectors.

    Parameters
    ----------
    vectors : np.ndarray, shape (n, dim)
        Track vectors; rows are L2-normalised here (a no-op for embedder output).
    catalog : pd.DataFrame
        ``n`` rows with (at least) ``track_id`` and ``path``; ``title, artist, genre, source``
        are filled with "" when absent.
    embedder_config : dict
        `Embedder.config` of the embedder that made the vectors.
    index_type : {"flat", "hnsw"}
        Exact search (default, right up to ~10^5 tracks) or the HNSW graph.
    hnsw_m : int
        HNSW neighbours per node (memory ~ ``2 * m * 4`` bytes per track on top of the vector).
    ef_search : int, optional
        HNSW candidate list at query time: higher = better recall, slower. ``None`` picks it
        with `tune_ef_search` (recall@5 >= 0.95 on this catalog) when the graph is built.
    ef_construction : int
        HNSW candidate list while building.
    ef_tuning : dict, optional
        What `tune_ef_search` measured (stored in ``meta.json``).

    Examples
    --------
    >>> index = CatalogIndex.load("runs/index")               # doctest: +SKIP
    >>> index.search(query_vectors, k=5)[0]                    # doctest: +SKIP
    """

    def __init__(
        self,
        vectors: np.ndarray,
        catalog: pd.DataFrame,
        embedder_config: dict[str, Any],
        index_type: str = "flat",
        hnsw_m: int = HNSW_M,
        ef_search: int | None = None,
        ef_construction: int = EF_CONSTRUCTION,
        created: str | None = None,
        ef_tuning: dict[str, Any] | None = None,
    ) -> None:
        if index_type not in INDEX_TYPES:
            raise ValueError(f"index_type must be one of {INDEX_TYPES}, got {index_type!r}")
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2:
            raise ValueError(f"vectors must be (n, dim), got shape {vectors.shape}")
        if len(catalog) != len(vectors):
            raise ValueError(f"{len(vectors)} vectors but {len(catalog)} catalog rows")
        self.embedder_config = canonical_config(embedder_config)
        if "policy" not in self.embedder_config:
            self.embedder_config["policy"] = legacy_policy(self.embedder_config)
            log.info("index built before audio policies were stored: using the one it was "
                     "built with, %s", self.embedder_config["policy"]["description"])
        if "dim" in self.embedder_config and self.embedder_config["dim"] != vectors.shape[1]:
            raise ValueError(f"vectors have dim {vectors.shape[1]}, the embedder "
                             f"{self.embedder_config['dim']}")
        norms = np.linalg.norm(vectors, axis=1)
        # normalising unit vectors again would change their last bits; only fix real drift
        self.vectors = vectors if np.allclose(norms, 1.0, atol=1e-5) else l2_normalise(vectors)
        self.catalog = _catalog_frame(catalog)
        self.index_type = index_type
        self.hnsw_m = int(hnsw_m)
        self.ef_search = None if ef_search is None else int(ef_search)
        self.ef_construction = int(ef_construction)
        self.ef_tuning = ef_tuning
        self.created = created or datetime.now(timezone.utc).isoformat(timespec="seconds")
        self._faiss: faiss.Index | None = None  # the HNSW graph; flat search needs none

    # -- basics --------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.vectors)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    @property
    def meta(self) -> dict[str, Any]:
        """What ``meta.json`` holds."""
        return {
            "version": FORMAT_VERSION,
            "embedder": self.embedder_config,
            "dim": self.dim,
            "count": len(self),
            "index_type": self.index_type,
            "hnsw": {"m": self.hnsw_m, "ef_search": self.ef_search,
                     "ef_construction": self.ef_construction, "ef_tuning": self.ef_tuning},
            "created": self.created,
            "metric": "cosine (inner product of L2-normalised vectors)",
        }

    def __repr__(self) -> str:
        return (f"CatalogIndex({len(self)} tracks x {self.dim}, {self.index_type}, "
                f"embedder={self.embedder_config.get('name')!r})")

    @property
    def faiss_index(self) -> faiss.Index:
        """The HNSW graph, built from `vectors` on first use (efSearch tuned then).

        Raises
        ------
        ValueError
            For a flat index: exact search is numpy over `vectors` (`exact_top_k`).
        """
        if self.index_type != "hnsw":
            raise ValueError("a flat index has no FAISS index: exact search is numpy over "
                             "CatalogIndex.vectors (helpers.index.exact_top_k)")
        if self._faiss is None:
            self._faiss = self._build_faiss(self.vectors)
            if self.ef_search is None:
                self.tune_ef_search()
        return self._faiss

    def _new_faiss(self) -> faiss.Index:
        index = faiss.IndexHNSWFlat(self.dim, self.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = self.ef_construction
        index.hnsw.efSearch = self.ef_search or EF_SEARCH_LADDER[0]
        return index

    def _build_faiss(self, vectors: np.ndarray) -> faiss.Index:
        index = self._new_faiss()
        if len(vectors):
            index.add(vectors)
        return index

    def set_ef_search(self, ef_search: int) -> None:
        """Change HNSW's query-time candidate list (recall/speed trade-off)."""
        self.ef_search = int(ef_search)
        if self._faiss is not None and self.index_type == "hnsw":
            self._faiss.hnsw.efSearch = self.ef_search

    def tune_ef_search(self, target: float = 0.95, k: int = 5, n_queries: int = 200,
                       seed: int = 0) -> dict[str, Any]:
        """Set the smallest efSearch whose recall@k on this catalog reaches `target`.

        The queries are new points near catalog tracks: a sampled catalog vector moved in a
        random direction by the distance to its nearest neighbour, so each lies about as far
        from the catalog as a new song does (a catalog vector itself is in the graph and far
        too easy to find). Exact search gives the truth, so the choice fits this catalog's
        size and structure: random 512-d vectors need a far larger efSearch than clustered
        ones (benchmarks/results/hnsw.json). These probes are a little easier than new songs
        (up to 3 points of recall in our measurements), so the chosen value is the first that
        reaches the target plus half the gap to 1 on them (0.975 for 0.95).

        Parameters
        ----------
        target : float
            Recall@k to reach.
        k : int
        n_queries : int
            Catalog vectors the queries are made from (sampled with `seed`).
        seed : int

        Returns
        -------
        dict
            ``ef_search``, ``recall_at_k`` (measured), ``k``, ``target``, ``n_queries``,
            ``n`` (catalog size); also kept in `ef_tuning` and ``meta.json``. When even the
            largest value of `EF_SEARCH_LADDER` misses the target it is used and a warning
            says that exact search is the better choice.
        """
        if self.index_type != "hnsw":
            raise ValueError("tune_ef_search is for HNSW indexes; flat search is exact")
        if self._faiss is None:
            self._faiss = self._build_faiss(self.vectors)
        graph = self._faiss
        q = _probe_queries(self.vectors, n_queries, seed)
        kk = min(k, len(self))
        result = {"ef_search": EF_SEARCH_LADDER[0], "recall_at_k": 1.0, "k": int(k),
                  "target": float(target), "n_queries": len(q), "n": len(self)}
        if len(self) > kk:
            needed = target + (1.0 - target) / 2  # the margin for easy probes, see above
            _, truth = exact_top_k(q, self.vectors, kk)
            for ef in EF_SEARCH_LADDER:
                graph.hnsw.efSearch = max(ef, kk)
                _, found = graph.search(q, kk)  # (n_queries, kk)
                recall = np.mean([len(set(t) & set(f)) / kk for t, f in zip(truth, found)])
                result.update(ef_search=int(ef), recall_at_k=float(recall))
                if recall >= needed:
                    break
            else:
                log.warning("HNSW recall@%d is %.3f < %.2f at efSearch %d on %d tracks: exact "
                            "search (index_type='flat') is the better choice here", kk,
                            recall, needed, ef, len(self))
        self.ef_tuning = result
        self.set_ef_search(result["ef_search"])
        return result


    # -- embedder compatibility ----------------------------------------------------------
    def check_embedder(self, embedder: Embedder) -> Embedder:
        """Return an embedder whose vectors live in this index's space, or raise.

        An unfitted embedder with the same name and parameters (e.g. a fresh
        ``FeatureEmbedder()``) is given the index's fitted state (as a copy).

        Raises
        ------
        ValueError
            The embedder's config differs from the one the index was built with.
        """
        own = self.embedder_config
        got = embedder.config()
        if (got.get("state") is None and own.get("state") is not None
                and same_space({**got, "state": None}, {**own, "state": None})):
            embedder = embedder.with_state(own["state"])
            got = embedder.config()
        if not same_space(got, own):
            raise ValueError(
                f"embedder {got['name']!r} does not match the index (built with "
                f"{own.get('name')!r}): {describe_config_difference(own, got)}. Query with "
                "the index's embedder, CatalogIndex.embedder()")
        return embedder

    def embedder(self, **overrides: Any) -> Embedder:
        """Rebuild the index's embedder (fitted state included).

        Parameters
        ----------
        **overrides
            Runtime arguments the config does not store: ``device``, ``weights`` (path of a
            custom OpenL3 weights file), ``cache_dir``, ``run_dir`` (classifier run).
        """
        return embedder_from_config(self.embedder_config, **overrides)

    # -- search --------------------------------------------------------------------------
    def search(
        self,
        query_vectors: np.ndarray,
        k: int = 5,
        exclude_track_ids: Sequence[str | None] | None = None,
        exclude_paths: Sequence[str | os.PathLike | None] | None = None,
    ) -> list[pd.DataFrame]:
        """The `k` most similar catalog tracks for each query vector.

        Parameters
        ----------
        query_vectors : np.ndarray, shape (n_queries, dim) or (dim,)
            Query vectors from this index's embedder (normalised here).
        k : int
            Results per query (fewer if the catalog is smaller).
        exclude_track_ids : sequence of (str or None), optional
            One per query: a track id none of whose rows (excerpts) is returned for it.
        exclude_paths : sequence of (path or None), optional
            One per query: a file never returned for it, compared as resolved absolute paths
            (a relative path is relative to the working directory); the other rows of that
            file's track id (its sibling excerpts) are left out too.

        Returns
        -------
        list of pd.DataFrame
            One per query, columns ``rank`` (1-based), ``track_id``, ``similarity`` (cosine,
            descending), ``title``, ``artist``, ``genre``, ``path``.
        """
        q = l2_normalise(np.atleast_2d(np.asarray(query_vectors, dtype=np.float32)))
        if q.shape[1] != self.dim:
            raise ValueError(f"query vectors have dim {q.shape[1]}, the index {self.dim}")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        drop = self._excluded_rows(len(q), exclude_track_ids, exclude_paths)
        # asking for k + (rows dropped) always leaves k results
        k_search = min(len(self), k + max((len(d) for d in drop), default=0))
        if k_search == 0:
            return [pd.DataFrame(columns=list(RESULT_COLUMNS)) for _ in range(len(q))]
        if self.index_type == "flat":
            sims, idx = exact_top_k(q, self.vectors, k_search)  # (n_queries, k_search) each
        else:
            sims, idx = self.faiss_index.search(q, k_search)
        return [self._result_frame(idx[i], sims[i], drop[i], k) for i in range(len(q))]

    def _excluded_rows(
        self,
        n_queries: int,
        exclude_track_ids: Sequence[str | None] | None,
        exclude_paths: Sequence[str | os.PathLike | None] | None,
    ) -> list[set[int]]:
        """Catalog rows never to return, one set per query."""
        ids = list(exclude_track_ids) if exclude_track_ids is not None else [None] * n_queries
        paths = list(exclude_paths) if exclude_paths is not None else [None] * n_queries
        if len(ids) != n_queries or len(paths) != n_queries:
            raise ValueError("exclude_track_ids / exclude_paths need one entry per query")
        if all(t is None for t in ids) and all(p is None for p in paths):
            return [set() for _ in range(n_queries)]
        track_ids = self.catalog["track_id"].to_numpy()
        rows_of_id: dict[str, set[int]] = {}
        for row, tid in enumerate(track_ids):
            rows_of_id.setdefault(tid, set()).add(row)
        rows_of_path: dict[str, set[int]] = {}
        for row, p in enumerate(self.catalog["path"]):
            rows_of_path.setdefault(resolve_path(p), set()).add(row)
        drop = []
        for tid, path in zip(ids, paths):
            rows: set[int] = set()
            query_ids = {str(tid)} if tid is not None else set()
            if path is not None:
                same_file = rows_of_path.get(resolve_path(path), set())
                rows |= same_file
                query_ids |= {track_ids[r] for r in same_file}
            for t in query_ids:
                rows |= rows_of_id.get(t, set())
            drop.append(rows)
        return drop

    def _result_frame(self, idx: np.ndarray, sims: np.ndarray, drop: set[int],
                      k: int) -> pd.DataFrame:
        """One query's hits ``(k_search,)`` as a result table, excluded rows left out."""
        keep = [(j, s) for j, s in zip(idx, sims) if j >= 0 and j not in drop][:k]
        rows = [int(j) for j, _ in keep]
        frame = self.catalog.iloc[rows][["track_id", "title", "artist", "genre", "path"]]
        frame = frame.reset_index(drop=True)
        frame.insert(0, "rank", np.arange(1, len(rows) + 1))
        frame.insert(2, "similarity", np.array([s for _, s in keep], dtype=np.float32))
        return frame[list(RESULT_COLUMNS)]

    # -- growth --------------------------------------------------------------------------
    def add(self, vectors: np.ndarray, catalog_rows: pd.DataFrame) -> None:
        """Append tracks (vectors from this index's embedder, one catalog row each).

        A track id may repeat (excerpts of one song); a file (resolved path) may not.

        Raises
        ------
        ValueError
            Wrong dimension, row-count mismatch, or a path already in the index.
        """
        vectors = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
        if not np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5):
            vectors = l2_normalise(vectors)
        rows = _catalog_frame(catalog_rows.reset_index(drop=True))
        if vectors.shape[1] != self.dim or len(rows) != len(vectors):
            raise ValueError(f"add: got {vectors.shape} vectors for {len(rows)} rows, "
                             f"index dim {self.dim}")
        new_paths = rows["path"].map(resolve_path)
        clash = set(new_paths) & set(self.catalog["path"].map(resolve_path))
        if clash or new_paths.duplicated().any():
            raise ValueError(f"add: duplicate paths (already in the index) {sorted(clash)[:3]}")
        self.vectors = np.concatenate([self.vectors, vectors])
        self.catalog = pd.concat([self.catalog, rows], ignore_index=True)
        if self._faiss is not None:
            self._faiss.add(vectors)
            self.tune_ef_search()  # a bigger graph may need a larger efSearch
        elif self.index_type == "hnsw":
            self.ef_search = None  # tuned when the graph is built

    # -- storage -------------------------------------------------------------------------
    def save(self, out_dir: str | os.PathLike) -> Path:
        """Write the index folder as one atomic commit (see the module docstring).

        Waits for a build that holds the folder's lock. A process killed while saving leaves
        the previous index (or none) loadable, never a mix.

        Returns
        -------
        Path
            The folder.
        """
        out = Path(out_dir)
        with folder_lock(out):
            self._commit(out)
        return out

    def _commit(self, out: Path) -> None:
        """Write a new generation, switch ``meta.json`` to it, drop the old ones.

        The caller holds the folder lock, so no other writer is between these steps.
        """
        current = _committed_generation(out)
        _remove_generations(out, keep=current)  # leftovers of a commit that was killed
        name = f"data-{_generation_number(current) + 1:06d}"
        data = out / name
        write_npy(data / "vectors.npy", self.vectors)
        write_csv(data / "catalog.csv", self.catalog)
        if self.index_type == "hnsw":
            with atomic_path(data / "index.faiss") as tmp:
                faiss.write_index(self.faiss_index, str(tmp))
        write_json(out / "meta.json", {**self.meta, "data": name})  # the commit
        _remove_generations(out, keep=name)
        for legacy in DATA_FILES:  # format 1 kept these beside meta.json
            (out / legacy).unlink(missing_ok=True)

    @classmethod
    def load(cls, index_dir: str | os.PathLike, ef_search: int | None = None) -> CatalogIndex:
        """Load an index folder and check that its files agree.

        Parameters
        ----------
        index_dir : path
            A folder written by `save` / `build_index` (either storage format).
        ef_search : int, optional
            Override the stored HNSW ``efSearch``.

        Raises
        ------
        FileNotFoundError
            The folder or one of its files is missing.
        ValueError
            A damaged or truncated file, or files that disagree (counts, dimension); the
            message names the file.
        """
        d = Path(index_dir)
        if not d.is_dir():
            raise FileNotFoundError(f"{d}: no such index folder (build it with build_index)")
        for attempt in range(3):
            meta = _read_meta(d)
            try:
                index = cls._from_files(index_files(d, meta), meta)
                break
            except FileNotFoundError:
                # A build may have committed a newer generation and deleted this one between
                # our reading meta.json and the data files: read the new commit instead.
                if attempt == 2 or (d / "meta.json").is_file() and _read_meta(d) == meta:
                    raise
        if ef_search is not None:
            index.ef_search = int(ef_search)
        if index._faiss is not None and index.index_type == "hnsw" and index.ef_search:
            index._faiss.hnsw.efSearch = index.ef_search
        return index

    @classmethod
    def _from_files(cls, files: dict[str, Path], meta: dict[str, Any]) -> CatalogIndex:
        """Build the index from one generation's files, checking them against `meta`."""
        for key in ("vectors", "catalog"):
            if not files[key].is_file():
                raise FileNotFoundError(f"{files[key]}: missing; the index is incomplete, "
                                        "rebuild it with build_index")
        vectors = _read_vectors(files["vectors"], meta)
        catalog = _read_catalog(files["catalog"], meta)
        hnsw = meta.get("hnsw", {})
        # Indexes written before tuning kept a fixed efSearch of 64 (recall@5 0.21 at 50k
        # random vectors): those are tuned again on first use.
        tuned = hnsw.get("ef_tuning") is not None
        index = cls(vectors, catalog, meta["embedder"], index_type=meta["index_type"],
                    hnsw_m=hnsw.get("m", HNSW_M),
                    ef_search=hnsw.get("ef_search") if tuned else None,
                    ef_construction=hnsw.get("ef_construction", EF_CONSTRUCTION),
                    created=meta.get("created"), ef_tuning=hnsw.get("ef_tuning"))
        if index.index_type == "hnsw" and files["graph"].is_file():
            index._faiss = _read_cached_graph(files["graph"], index)
            if index._faiss is not None and not tuned:
                index.tune_ef_search()
        return index


#: Similarities held at once by `exact_top_k` (128 MB of float32): a batch is cut into blocks
#: of queries so that a catalog of millions never needs a (n_queries, n) matrix.
EXACT_BLOCK_FLOATS = 1 << 25


def exact_top_k(queries: np.ndarray, vectors: np.ndarray,
                k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-`k` inner products of each query with the rows of `vectors`.

    One BLAS matrix product per block of queries, then ``argpartition`` and a sort of the
    `k` best. Equal similarities are ordered by row number, also at the cut: of rows tied
    with the k-th best, the first rows are kept, so the answer never depends on the
    partition's internal order.

    Parameters
    ----------
    queries : np.ndarray, shape (n_queries, dim)
        float32; unit rows give cosine similarities.
    vectors : np.ndarray, shape (n, dim)
        float32, C-contiguous (``vectors.T`` is then read in place, not copied).
    k : int
        Results per query; more than `n` gives `n`.

    Returns
    -------
    sims : np.ndarray, shape (n_queries, min(k, n)), float32
        Descending along each row.
    rows : np.ndarray, shape (n_queries, min(k, n)), int64
        Row numbers of `vectors`.
    """
    n = len(vectors)
    k = min(int(k), n)
    sims_out = np.empty((len(queries), k), dtype=np.float32)
    rows_out = np.empty((len(queries), k), dtype=np.int64)
    if k <= 0:
        return sims_out, rows_out
    block = max(1, EXACT_BLOCK_FLOATS // n)
    for start in range(0, len(queries), block):
        sims = queries[start:start + block] @ vectors.T  # (block, n)
        if k < n:
            top = np.argpartition(sims, n - k, axis=1)[:, n - k:]  # (block, k), unordered
        else:
            top = np.tile(np.arange(n), (len(sims), 1))
        top_sims = np.take_along_axis(sims, top, axis=1)
        kth = top_sims.min(axis=1, keepdims=True)  # (block, 1)
        # rows tied with the k-th best beyond k: the partition kept arbitrary ones of them
        for i in np.flatnonzero((sims >= kth).sum(axis=1) > k):
            candidates = np.flatnonzero(sims[i] >= kth[i])  # ascending row numbers
            top[i] = candidates[np.argsort(-sims[i, candidates], kind="stable")[:k]]
            top_sims[i] = sims[i, top[i]]
        order = np.lexsort((top, -top_sims), axis=-1)  # similarity down, then row up
        sims_out[start:start + block] = np.take_along_axis(top_sims, order, axis=1)
        rows_out[start:start + block] = np.take_along_axis(top, order, axis=1)
    return sims_out, rows_out


def _probe_queries(vectors: np.ndarray, n_queries: int, seed: int) -> np.ndarray:
    """New unit vectors ``(n_queries, dim)`` about as far from the catalog as its tracks are
    from each other: each sampled row turned, in a random direction, until its cosine to the
    row equals the row's cosine to its nearest neighbour, so the row no longer stands out."""
    rng = np.random.default_rng(seed)
    ids = np.sort(rng.choice(len(vectors), size=min(n_queries, len(vectors)), replace=False))
    base = vectors[ids]  # (n_queries, dim)
    sims = np.concatenate([base[i:i + 16] @ vectors.T for i in range(0, len(base), 16)])
    sims[np.arange(len(ids)), ids] = -np.inf
    cos = np.clip(sims.max(axis=1), -1.0, 1.0)[:, None]  # (n_queries, 1)
    turn = rng.standard_normal(base.shape).astype(np.float32)
    # a unit direction orthogonal to each row
    turn = l2_normalise(turn - (turn * base).sum(axis=1, keepdims=True) * base)
    return l2_normalise(cos * base + np.sqrt(1.0 - cos**2) * turn)


# ------------------------------------------------------------------------------------------
# Storage: generations, the commit record, the folder lock
# ------------------------------------------------------------------------------------------


def index_files(index_dir: str | os.PathLike,
                meta: dict[str, Any] | None = None) -> dict[str, Path]:
    """Paths of the files of the committed index in `index_dir`.

    Parameters
    ----------
    index_dir : path
        An index folder.
    meta : dict, optional
        Its ``meta.json``, when already read.

    Returns
    -------
    dict
        ``meta``, ``vectors``, ``catalog`` and ``graph`` (``index.faiss``, present for HNSW
        only): the generation folder ``meta.json`` names, or the folder itself for format 1.
    """
    d = Path(index_dir)
    meta = _read_meta(d) if meta is None else meta
    data = d / meta["data"] if "data" in meta else d
    return {"meta": d / "meta.json", "vectors": data / "vectors.npy",
            "catalog": data / "catalog.csv", "graph": data / "index.faiss"}


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike) -> Iterator[Path]:
    """Hold the exclusive lock of an index folder (created when missing); waits for it.

    The lock is `helpers.io.file_lock` on ``folder/index.lock``, released by the OS when the
    holder dies, so a killed build never leaves the folder locked.

    Yields
    ------
    Path
        The folder.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with file_lock(folder / LOCK_NAME, "another index build"):
        yield folder


def _read_meta(d: Path) -> dict[str, Any]:
    """``meta.json``, checked to be an index meta file this code can read."""
    path = d / "meta.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; the index is incomplete, rebuild it with "
                                "build_index")
    meta = read_json(path)
    for key in ("embedder", "dim", "count", "index_type"):
        if key not in meta:
            raise ValueError(f"{path}: no {key!r} entry; not an index meta file")
    if meta.get("version", 0) > FORMAT_VERSION:
        raise ValueError(f"{path}: format version {meta['version']} is newer than this code "
                         f"({FORMAT_VERSION}); update helpers")
    if "data" in meta and not _GENERATION.fullmatch(str(meta["data"])):
        raise ValueError(f"{path}: 'data' is {meta['data']!r}, not a generation folder name; "
                         "rebuild the index")
    return meta


def _committed_generation(d: Path) -> str | None:
    """The generation ``meta.json`` names; None for no index or a format-1 folder."""
    if not (d / "meta.json").is_file():
        return None
    try:
        return read_json(d / "meta.json").get("data")
    except ValueError:  # a damaged record commits nothing; the new one replaces it
        return None


def _generation_number(name: str | None) -> int:
    match = _GENERATION.fullmatch(name or "")
    return int(match[1]) if match else 0


def _remove_generations(d: Path, keep: str | None) -> None:
    """Delete every generation folder but `keep` (old commits, or a killed commit's)."""
    for folder in d.glob("data-*"):
        if folder.name != keep and _GENERATION.fullmatch(folder.name):
            shutil.rmtree(folder, ignore_errors=True)


def _read_vectors(path: Path, meta: dict[str, Any]) -> np.ndarray:
    try:
        vectors = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise ValueError(f"{path}: damaged or truncated ({err}); rebuild the index") from err
    if vectors.ndim != 2 or vectors.dtype != np.float32:
        raise ValueError(f"{path}: expected a 2-D float32 array, got {vectors.dtype} "
                         f"{vectors.shape}")
    if vectors.shape != (meta["count"], meta["dim"]):
        raise ValueError(f"{path}: shape {vectors.shape} but meta.json says "
                         f"({meta['count']}, {meta['dim']}); rebuild the index")
    if not np.isfinite(vectors).all():
        raise ValueError(f"{path}: holds NaN/Inf; rebuild the index")
    return vectors


def _read_catalog(path: Path, meta: dict[str, Any]) -> pd.DataFrame:
    try:
        catalog = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: damaged ({err}); rebuild the index") from err
    if len(catalog) != meta["count"]:
        raise ValueError(f"{path}: {len(catalog)} rows but meta.json says {meta['count']}; "
                         "rebuild the index")
    missing = set(CATALOG_COLUMNS) - set(catalog.columns)
    if missing:
        raise ValueError(f"{path}: missing columns {sorted(missing)}")
    return catalog


def _read_cached_graph(path: Path, index: CatalogIndex) -> faiss.Index | None:
    """The stored HNSW graph if it fits `index`; None (rebuilt on first search) otherwise."""
    try:
        cached = faiss.read_index(str(path))
    except RuntimeError as err:
        log.warning("%s unreadable (%s); rebuilding the HNSW graph", path, err)
        return None
    if cached.ntotal == len(index) and cached.d == index.dim:
        return cached
    log.warning("%s is stale; rebuilding the HNSW graph", path)
    return None


# ------------------------------------------------------------------------------------------
# Building, with checkpoints
# ------------------------------------------------------------------------------------------


class _Partial:
    """Raw vectors of a build in progress, in ``partial/chunk_NNNNNN.npz`` files.

    Each chunk holds the paths it covers, the raw vectors of the readable ones and the errors
    of the others; chunks are written atomically, so a kill loses at most the chunk in work.
    """

    def __init__(self, folder: Path, embedder: Embedder) -> None:
        self.folder = folder
        self.spec = {k: v for k, v in vector_space(embedder.config()).items() if k != "state"}
        self.raw_dim = embedder.raw_dim

    def load(self) -> tuple[dict[str, np.ndarray], dict[str, str]]:
        """Done paths -> raw vector, failed paths -> error, from earlier runs."""
        vectors: dict[str, np.ndarray] = {}
        errors: dict[str, str] = {}
        if not self.folder.is_dir():
            return vectors, errors
        spec_path = self.folder / "embedder.json"
        # a checkpoint from before policies has none: vector_space gives it the legacy one
        if spec_path.is_file() and not same_space({**read_json(spec_path), "state": None},
                                                  {**self.spec, "state": None}):
            raise ValueError(
                f"{self.folder}: a build with another embedder was interrupted here "
                f"({describe_config_difference(read_json(spec_path), self.spec)}); delete the "
                "folder or build with the same embedder")
        for chunk in sorted(self.folder.glob("chunk_*.npz")):
            try:
                with np.load(chunk, allow_pickle=False) as z:
                    ok_paths = z["ok_paths"].tolist()
                    raw = z["vectors"]
                    bad_paths, bad_errors = z["bad_paths"].tolist(), z["bad_errors"].tolist()
            except (ValueError, OSError, KeyError, EOFError) as err:
                log.warning("ignoring damaged checkpoint %s (%s); its files are redone",
                            chunk, err)
                continue
            vectors.update(zip(ok_paths, raw))
            errors.update(zip(bad_paths, bad_errors))
        return vectors, errors

    def write(self, number: int, ok_paths: list[str], raw: list[np.ndarray],
              errors: list[tuple[str, str]]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        if not (self.folder / "embedder.json").is_file():
            write_json(self.folder / "embedder.json", self.spec)
        buf = io.BytesIO()
        np.savez(
            buf,
            ok_paths=np.array(ok_paths, dtype=str),
            vectors=(np.stack(raw).astype(np.float32) if raw
                     else np.zeros((0, self.raw_dim), np.float32)),
            bad_paths=np.array([p for p, _ in errors], dtype=str),
            bad_errors=np.array([e for _, e in errors], dtype=str),
        )
        write_bytes(self.folder / f"chunk_{number:06d}.npz", buf.getvalue())

    def next_number(self) -> int:
        numbers = [int(p.stem.split("_")[1]) for p in self.folder.glob("chunk_*.npz")]
        return max(numbers, default=-1) + 1

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def build_index(
    manifest_df: pd.DataFrame,
    out_dir: str | os.PathLike,
    embedder: Embedder,
    label: str | None = "human",
    progress: bool = True,
    checkpoint_every: int = 64,
    index_type: str = "auto",
    hnsw_m: int = HNSW_M,
    ef_search: int | None = None,
    hnsw: bool = False,
) -> CatalogIndex:
    """Embed a manifest's tracks into an index folder; resumable and incremental.

    Parameters
    ----------
    manifest_df : pd.DataFrame
        A manifest (`helpers.datasets.load_manifest`): ``path`` plus optional ``label``,
        ``track_id``, ``title``, ``artist``, ``genre``, ``source``. Paths are stored
        absolute (relative ones are relative to the working directory); empty titles and
        artists are filled from tags and file names (`describe_files`).
    out_dir : path
        Index folder. If it already holds an index, only paths not in it are embedded and
        appended (the embedder must match the index's; a fitted standardisation is kept).
        The folder is locked for the whole build: a second build on it waits, then adds
        what the first did not.
    embedder : Embedder
        E.g. ``make_embedder("features")``. An embedder that needs fitting is fitted on the
        catalog's raw vectors (in place, scikit-learn style) when the index is new.
    label : str or None
        Keep only rows with this ``label`` ("human": the catalog recommends human music);
        ``None`` keeps every row.
    progress : bool
        Show a tqdm progress bar.
    checkpoint_every : int
        Files per checkpoint chunk in ``out_dir/partial``; a killed build loses at most this
        many files of work.
    index_type : {"auto", "flat", "hnsw"}
        For a new index. "auto": exact search up to `FLAT_MAX_TRACKS` tracks, HNSW above.
    hnsw_m, ef_search
        For a new HNSW index: see `CatalogIndex` (``ef_search=None`` tunes it).
    hnsw : bool
        Shorthand for ``index_type="hnsw"`` (the CLI's ``--hnsw``).

    Returns
    -------
    CatalogIndex
        Also saved in `out_dir`; unreadable files are listed in ``out_dir/failures.csv``.

    Raises
    ------
    ValueError
        No rows to index, an embedder that does not match an existing index or checkpoint,
        or no file could be embedded.
    """
    out = Path(out_dir)
    rows = _catalog_rows(manifest_df, label)
    if hnsw:
        index_type = "hnsw"
    if index_type not in ("auto", *INDEX_TYPES):
        raise ValueError(f"index_type must be 'auto' or one of {INDEX_TYPES}, got "
                         f"{index_type!r}")
    with folder_lock(out):
        return _build_locked(rows, out, embedder, checkpoint_every, progress,
                             index_type=index_type, hnsw_m=hnsw_m, ef_search=ef_search)


def _build_locked(rows: pd.DataFrame, out: Path, embedder: Embedder, checkpoint_every: int,
                  progress: bool, **index_kwargs: Any) -> CatalogIndex:
    """`build_index` once the folder lock is held: embed what is missing, then commit."""
    existing = CatalogIndex.load(out) if (out / "meta.json").is_file() else None
    partial = _Partial(out / "partial", embedder)
    if existing is not None:
        embedder = existing.check_embedder(embedder)
        # a file is identified by its path: a new excerpt of an indexed track is new
        rows = rows[~rows["path"].isin(set(existing.catalog["path"].map(resolve_path)))]
        if rows.empty:
            # a build killed after its commit left these behind
            partial.remove()
            _remove_generations(out, keep=_committed_generation(out))
            log.info("%s: all %d tracks already indexed", out, len(existing))
            return existing
    rows = rows.reset_index(drop=True)
    done, failed = _embed_missing(rows, embedder, partial, checkpoint_every, progress)
    new_rows = rows[rows["path"].isin(done.keys())].reset_index(drop=True)
    new_raw = (np.stack([done[p] for p in new_rows["path"]]) if len(new_rows)
               else np.zeros((0, embedder.dim), np.float32))
    n_failed = _write_failures(out, rows, failed)
    if existing is not None:
        index = existing
        if len(new_rows):
            index.add(embedder.transform(new_raw), new_rows)
    elif len(new_rows):
        index = _new_index(embedder, new_raw, new_rows, **index_kwargs)
    else:
        raise ValueError(f"none of the {len(rows)} files could be embedded; see "
                         f"{out / 'failures.csv'}")
    index._commit(out)
    partial.remove()  # only now: a kill before the commit keeps every embedded vector
    log.info("%s: %d tracks indexed (%d new, %d failed)", out, len(index), len(new_rows),
             n_failed)
    return index


def _new_index(embedder: Embedder, raw: np.ndarray, rows: pd.DataFrame, index_type: str,
               **index_kwargs: Any) -> CatalogIndex:
    """A new index of raw vectors, fitting the embedder on them first if it needs it."""
    if embedder.needs_fit and not embedder.is_fitted:
        embedder.fit(raw)
    if index_type == "auto":
        index_type = "flat" if len(rows) <= FLAT_MAX_TRACKS else "hnsw"
    return CatalogIndex(embedder.transform(raw), rows, embedder.config(),
                        index_type=index_type, **index_kwargs)


def _catalog_rows(manifest_df: pd.DataFrame, label: str | None) -> pd.DataFrame:
    """The manifest rows to index, as catalog columns, one per absolute path.

    Empty titles and artists are filled from the files (`describe_files`).
    """
    rows = manifest_df
    if label is not None and "label" in rows.columns:
        rows = rows[rows["label"].astype(str) == label]
    rows = _catalog_frame(rows.reset_index(drop=True))
    rows["path"] = rows["path"].map(resolve_path)
    rows = rows.drop_duplicates("path").reset_index(drop=True)
    if rows.empty:
        raise ValueError(f"no rows with label {label!r} in the manifest to index")
    return describe_files(rows)


#: Folder names that say nothing about a song (labels, splits, containers).
_GENERIC_FOLDERS = frozenset({"ai", "human", "real", "fake", "train", "val", "valid",
                              "validation", "test", "audio", "music", "songs", "tracks",
                              "data", "wav", "mp3", "genres", "genres_original"})


def describe_files(rows: pd.DataFrame) -> pd.DataFrame:
    """Fill empty ``title``, ``artist`` and ``genre`` cells from each file's tags and name.

    Rules, in order (a non-empty manifest value is never replaced):

    1. Tags the file carries that libsndfile reads (WAV INFO chunks, FLAC/Ogg Vorbis
       comments): ``title``, ``artist``, ``genre``.
    2. A file named ``Artist - Title.ext`` gives both.
    3. The title is the file name without extension, ``_`` read as a space.
    4. The artist is the file's parent folder when that folder lies *below* the genre folder
       (``human/<genre>/<artist>/song.wav``, or ``.../<genre>/<artist>/<album>/song.wav``:
       the folder right under the genre) and is not a label, split or container name
       (`_GENERIC_FOLDERS`). A file right in a genre folder (GTZAN's ``blues/blues.00012.wav``)
       or in a plain folder gets no artist: the folder names its genre or nothing.
    5. With no genre, a parent folder whose name starts the file name (``blues/blues.0001``)
       is taken as the genre.

    Parameters
    ----------
    rows : pd.DataFrame
        Catalog columns (`CATALOG_COLUMNS`), absolute paths.

    Returns
    -------
    pd.DataFrame
        A copy with the empty cells filled where a rule applies.
    """
    rows = rows.copy()
    for i, path in enumerate(rows["path"]):
        found = _describe_file(Path(path), rows.at[i, "genre"])
        for col in ("title", "artist", "genre"):
            if not rows.at[i, col] and found.get(col):
                rows.at[i, col] = found[col]
    return rows


def _describe_file(path: Path, genre: str) -> dict[str, str]:
    """Title/artist/genre of one file by the rules of `describe_files`."""
    found = _read_tags(path)
    stem = path.stem.replace("_", " ").strip()
    artist, sep, title = stem.partition(" - ")
    if sep and artist.strip() and title.strip():
        found.setdefault("artist", artist.strip())
        found.setdefault("title", title.strip())
    found.setdefault("title", stem)
    parents = list(path.parent.parts[1:])  # without the root
    if not genre and parents and path.stem.lower().startswith(parents[-1].lower()):
        found.setdefault("genre", parents[-1])
    genre = genre or found.get("genre", "")
    if genre in parents:
        below = parents[len(parents) - parents[::-1].index(genre):]
        if below and below[0].lower() not in _GENERIC_FOLDERS:
            found.setdefault("artist", below[0])
    return found


def _read_tags(path: Path) -> dict[str, str]:
    """The title/artist/genre tags libsndfile reads from a file (none for MP3, or on error)."""
    try:
        with sf.SoundFile(path) as f:
            tags = f.copy_metadata()
    except (sf.LibsndfileError, RuntimeError, OSError, TypeError):
        return {}
    return {k: str(v).strip() for k, v in tags.items()
            if k in ("title", "artist", "genre") and str(v).strip()}


def _embed_missing(
    rows: pd.DataFrame, embedder: Embedder, partial: _Partial, checkpoint_every: int,
    progress: bool,
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Raw vectors of `rows`' paths (path -> vector) and errors (path -> message).

    Paths in earlier runs' checkpoints are taken from them; the rest are embedded and
    checkpointed every `checkpoint_every` files.
    """
    done, failed = partial.load()
    todo = [p for p in rows["path"] if p not in done and p not in failed]
    if todo:
        embedder.prepare()  # a missing model is one error now, not one per file
    if done or failed:
        log.info("resuming: %d files already embedded, %d failed, %d to go",
                 len(done), len(failed), len(todo))
    number = partial.next_number() if partial.folder.is_dir() else 0
    ok_paths: list[str] = []
    raw: list[np.ndarray] = []
    errors: list[tuple[str, str]] = []
    for i, path in enumerate(tqdm(todo, desc=f"index ({embedder.name})", unit="file",
                                  disable=not progress)):
        try:
            raw.append(embedder.embed_raw_file(path))
            ok_paths.append(path)
        except (ValueError, OSError, RuntimeError, EOFError) as err:
            log.warning("skipping %s: %s", path, err)
            errors.append((path, str(err)))
        if len(ok_paths) + len(errors) >= checkpoint_every or (i == len(todo) - 1):
            partial.write(number, ok_paths, raw, errors)
            done.update(zip(ok_paths, raw))
            failed.update(errors)
            number, ok_paths, raw, errors = number + 1, [], [], []
    return done, failed


def _write_failures(out: Path, rows: pd.DataFrame, failed: dict[str, str]) -> int:
    """Write ``failures.csv`` for `rows` (an empty table when all were read); the count."""
    failures = rows[rows["path"].isin(failed.keys())][["path", "track_id"]].copy()
    failures["error"] = [failed[p] for p in failures["path"]]
    write_csv(out / "failures.csv", failures)
    if len(failures):
        log.warning("%d of %d files could not be embedded; see %s", len(failures), len(rows),
                    out / "failures.csv")
    return len(failures)


def recommend(
    paths_or_vectors: Sequence[str | os.PathLike] | np.ndarray,
    index: CatalogIndex,
    embedder: Embedder | None = None,
    k: int = 5,
) -> pd.DataFrame:
    """Recommend the `k` most similar catalog tracks for audio files or query vectors.

    Parameters
    ----------
    paths_or_vectors : list of path, or np.ndarray of shape (n, dim)
        Query audio files, or vectors already in the index's space.
    index : CatalogIndex
    embedder : Embedder, optional
        Used for paths; ``None`` rebuilds the index's own (`CatalogIndex.embedder`). One with
        a different config is refused.
    k : int
        Recommendations per query.

    Returns
    -------
    pd.DataFrame
        Columns ``query`` (the path, or the row number for vectors), ``rank``, ``track_id``,
        ``similarity``, ``title``, ``artist``, ``genre``, ``path``. A query file that is in
        the catalog is never recommended to itself. Unreadable query files are logged and
        left out.

    Raises
    ------
    ValueError
        Embedder mismatch, or none of the query files could be read.
    """
    if isinstance(paths_or_vectors, np.ndarray):
        vectors = np.atleast_2d(paths_or_vectors)
        queries: list[Any] = list(range(len(vectors)))
        exclude_paths: list[str | None] = [None] * len(vectors)
    else:
        paths = [os.path.abspath(Path(p).expanduser()) for p in paths_or_vectors]
        embedder = (index.embedder() if embedder is None
                    else index.check_embedder(embedder)).for_queries()
        vectors, ok, errors = embedder.embed_files(paths, progress=len(paths) > 20)
        if not ok.any():
            raise ValueError("no query file could be read: "
                             + "; ".join(f"{p}: {e}" for p, e in errors))
        queries = [p for p, good in zip(paths, ok) if good]
        exclude_paths = list(queries)
    results = index.search(vectors, k=k, exclude_paths=exclude_paths)
    frames = [r.assign(query=q) for q, r in zip(queries, results)]
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    return table[["query", *RESULT_COLUMNS]]

