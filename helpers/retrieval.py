"""Evaluation of the recommender: does a track's neighbourhood share its genre/style?

* `leave_one_out` -- every catalog track queries the rest of the catalog (itself excluded,
  and so are the other excerpts of its track: rows with its ``track_id`` or its file);
  precision@K and mAP@K of the label (genre or style), overall and per label. With
  ``exclude_same_artist=True`` the neighbours by the same artist, and exact-duplicate vectors,
  are excluded too: GTZAN holds repeated excerpts and many clips per artist (Sturm 2013, "The
  GTZAN dataset: its contents, its faults..."), and without this filter "genre" retrieval
  partly measures artist or duplicate retrieval. The result dict says which filter was used.
* `ai_query_precision` -- AI tracks query the human catalog; precision@K of their style
  among the recommended human tracks.
* `tsne_2d` -- a 2-D map of the embedding for plots (`helpers.plots_embed`).

Definitions (per query with label y, ranked neighbours r_1..r_K after exclusions):
``P@K = #{i <= K : label(r_i) = y} / K``; ``AP@K = (1 / min(K, R)) * sum_i P@i * rel_i`` with
R the number of relevant catalog items left after exclusions (the normalisation of
Manning et al., capped at K so a perfect list scores 1). Queries with an empty label are
skipped; queries with R = 0 count as 0 for both.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from helpers.embed import Embedder, l2_normalise
from helpers.index import CatalogIndex, resolve_path

log = logging.getLogger(__name__)

_DUPLICATE_COSINE = 1.0 - 1e-6  # unit vectors this close are the same audio


def _labels(values: Any) -> np.ndarray:
    return pd.Series(values, dtype=object).fillna("").astype(str).to_numpy()


def ranking_metrics(
    relevant: np.ndarray, n_relevant: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per-query P@K and AP@K from relevance flags of ranked lists.

    Parameters
    ----------
    relevant : np.ndarray, shape (n_queries, K), bool
        Whether the i-th ranked neighbour shares the query's label (shorter lists padded with
        False).
    n_relevant : np.ndarray, shape (n_queries,)
        Relevant items available to each query (R).
    k : int

    Returns
    -------
    precision, average_precision : np.ndarray, shape (n_queries,)
    """
    rel = np.asarray(relevant, dtype=float)[:, :k]
    hits = np.cumsum(rel, axis=1)  # (n_queries, K)
    precision = hits[:, -1] / k if rel.shape[1] else np.zeros(len(rel))
    prec_at_i = hits / np.arange(1, rel.shape[1] + 1)
    denom = np.minimum(k, np.asarray(n_relevant, dtype=float))
    with np.errstate(invalid="ignore", divide="ignore"):
        ap = np.where(denom > 0, (prec_at_i * rel).sum(axis=1) / denom, 0.0)
    return precision, ap


def leave_one_out(
    index: CatalogIndex | None = None,
    k: int = 5,
    label_column: str = "genre",
    exclude_same_artist: bool = False,
    exclude_duplicates: bool | None = None,
    vectors: np.ndarray | None = None,
    catalog: pd.DataFrame | None = None,
    block: int = 1024,
) -> dict[str, Any]:
    """Leave-one-out precision@K and mAP@K of label consistency over a catalog.

    Exact cosine search on the index's own vectors (blocked matrix products, so HNSW
    approximation errors do not enter the score).

    Parameters
    ----------
    index : CatalogIndex, optional
        The catalog; or give `vectors` and `catalog` directly.
    k : int
        Neighbours per query.
    label_column : str
        Catalog column whose agreement counts as relevant ("genre" = genre or style).
    exclude_same_artist : bool
        Drop neighbours with the query's (non-empty) artist.
    exclude_duplicates : bool, optional
        Drop neighbours whose vector equals the query's (cosine > 1 - 1e-6); defaults to
        `exclude_same_artist`.
    vectors : np.ndarray, shape (n, dim), optional
    catalog : pd.DataFrame, optional
        Needs `label_column`, and ``artist`` when `exclude_same_artist`; rows sharing a
        ``track_id`` or a ``path`` (when those columns exist) never count for each other.
    block : int
        Queries per matrix product (memory ~ block * n * 4 bytes).

    Returns
    -------
    dict
        ``precision_at_k``, ``map_at_k``, ``k``, ``n_queries``, ``label_column``, ``excluded``
        (list: "self", "same_track", and "same_artist" / "duplicates" when used),
        ``n_same_track_excluded`` (other excerpts of a query's track), ``n_duplicates_excluded``
        (neighbour pairs dropped as duplicates), ``per_label`` ({label: P@K}),
        ``per_label_map`` ({label: mAP@K}), ``per_label_count``.
    """
    if index is not None:
        vectors, catalog = index.vectors, index.catalog
    if vectors is None or catalog is None:
        raise ValueError("give an index, or both vectors and catalog")
    if exclude_duplicates is None:
        exclude_duplicates = exclude_same_artist
    v = l2_normalise(vectors)
    labels = _labels(catalog[label_column])
    artists = _labels(catalog["artist"]) if exclude_same_artist else None
    if artists is not None and not (artists != "").any():
        # GTZAN, for one, has no artist column: "same artist excluded" would exclude nothing
        # and read as a stricter number than it is.
        raise ValueError("exclude_same_artist=True, but the catalog has no artist values: the "
                         "result would exclude nothing; add an artist column or leave it off")
    tracks = _track_keys(catalog)
    queries = np.flatnonzero(labels != "")
    relevant = np.zeros((len(queries), k), dtype=bool)
    n_relevant = np.zeros(len(queries))
    n_dupes = n_siblings = 0
    for start in range(0, len(queries), block):
        q = queries[start:start + block]
        sims = v[q] @ v.T  # (block, n)
        mask = _loo_mask(sims, q, artists, exclude_duplicates, tracks)
        n_dupes += mask.n_duplicates
        n_siblings += mask.n_same_track
        rel, n_rel = _loo_relevance(sims, q, labels, mask.excluded, k)
        relevant[start:start + len(q), :rel.shape[1]] = rel
        n_relevant[start:start + len(q)] = n_rel
    precision, ap = ranking_metrics(relevant, n_relevant, k)
    excluded = ["self", "same_track", *(["same_artist"] if exclude_same_artist else []),
                *(["duplicates"] if exclude_duplicates else [])]
    return {**_summary(precision, ap, labels, labels[queries]), "k": int(k),
            "label_column": label_column, "excluded": excluded,
            "n_same_track_excluded": int(n_siblings), "n_duplicates_excluded": int(n_dupes)}


def _track_keys(catalog: pd.DataFrame) -> np.ndarray:
    """One integer per row; rows of one track (same ``track_id`` or same file) share it."""
    n = len(catalog)
    parent = np.arange(n)

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for column, key in (("track_id", str), ("path", resolve_path)):
        if column not in catalog.columns:
            continue
        first: dict[str, int] = {}
        for row, value in enumerate(catalog[column].fillna("").astype(str)):
            if value:
                other = first.setdefault(key(value), row)
                parent[root(row)] = root(other)
    return np.array([root(i) for i in range(n)])


def _summary(precision: np.ndarray, ap: np.ndarray, labels: np.ndarray,
             q_labels: np.ndarray) -> dict[str, Any]:
    """Mean P@K and mAP@K over the queries, overall and per label (see `leave_one_out`)."""
    groups = sorted(set(q_labels))
    label_counts = pd.Series(labels).value_counts()
    return {
        "precision_at_k": float(precision.mean()) if len(precision) else float("nan"),
        "map_at_k": float(ap.mean()) if len(ap) else float("nan"),
        "n_queries": int(len(q_labels)),
        "per_label": {g: float(precision[q_labels == g].mean()) for g in groups},
        "per_label_map": {g: float(ap[q_labels == g].mean()) for g in groups},
        "per_label_count": {g: int(label_counts[g]) for g in groups},
    }


@dataclass
class _Exclusions:
    excluded: np.ndarray  # (n_queries, n) bool: catalog items a query may not retrieve
    n_duplicates: int  # pairs excluded only for being duplicates
    n_same_track: int  # other excerpts of the query's track


def _loo_mask(sims: np.ndarray, q: np.ndarray, artists: np.ndarray | None,
              exclude_duplicates: bool, tracks: np.ndarray) -> _Exclusions:
    """Which catalog items each query in `q` may not retrieve: itself and the other excerpts
    of its track (same `tracks` key), its artist, copies.

    `sims` is ``(len(q), n)``: the queries' cosine similarity to every catalog item.
    """
    mask = tracks[q][:, None] == tracks[None, :]  # self and sibling excerpts
    n_same_track = int(mask.sum()) - len(q)
    if artists is not None:
        mask |= (artists[q][:, None] == artists[None, :]) & (artists[q][:, None] != "")
    n_dupes = 0
    if exclude_duplicates:
        dup = sims > _DUPLICATE_COSINE
        n_dupes = int((dup & ~mask).sum())
        mask |= dup
    return _Exclusions(mask, n_dupes, n_same_track)


def _loo_relevance(sims: np.ndarray, q: np.ndarray, labels: np.ndarray, mask: np.ndarray,
                   k: int) -> tuple[np.ndarray, np.ndarray]:
    """Relevance flags ``(len(q), <= k)`` of each query's ranked neighbours, and R per query."""
    n_rel = ((labels[None, :] == labels[q][:, None]) & ~mask).sum(1)
    kk = min(k, sims.shape[1] - 1)
    if kk <= 0:
        return np.zeros((len(q), 0), dtype=bool), n_rel
    sims = np.where(mask, -np.inf, sims)  # (block, n)
    top = np.argpartition(-sims, kk - 1, axis=1)[:, :kk]
    order = np.argsort(-np.take_along_axis(sims, top, axis=1), axis=1, kind="stable")
    top = np.take_along_axis(top, order, axis=1)  # (block, kk), best first
    valid = np.isfinite(np.take_along_axis(sims, top, axis=1))
    return (labels[top] == labels[q][:, None]) & valid, n_rel


def ai_query_precision(
    index: CatalogIndex,
    embedder: Embedder | None,
    ai_manifest_rows: pd.DataFrame,
    k: int = 5,
    label_column: str = "genre",
    progress: bool = False,
) -> dict[str, Any]:
    """Precision@K of an AI track's style among the human tracks recommended for it.

    Parameters
    ----------
    index : CatalogIndex
        The human catalog.
    embedder : Embedder or None
        Must match the index (``None``: the index's own, `CatalogIndex.embedder`).
    ai_manifest_rows : pd.DataFrame
        Manifest rows of the AI queries (``path`` and `label_column`).
    k : int
    label_column : str

    Returns
    -------
    dict
        ``precision_at_k``, ``k``, ``n_queries``, ``n_failed`` (unreadable files),
        ``per_label`` ({style: P@K}), ``mean_top1_similarity``.
    """
    embedder = (index.embedder() if embedder is None
                else index.check_embedder(embedder)).for_queries()
    rows = ai_manifest_rows.reset_index(drop=True)
    vectors, ok, errors = embedder.embed_files(rows["path"], progress=progress)
    rows = rows[ok].reset_index(drop=True)
    results = index.search(vectors, k=k, exclude_paths=list(rows["path"]))
    labels = _labels(rows[label_column])
    cat_labels = {tid: g for tid, g in zip(index.catalog["track_id"],
                                            _labels(index.catalog[label_column]))}
    relevant = np.zeros((len(rows), k), dtype=bool)
    top1 = []
    for i, frame in enumerate(results):
        got = np.array([cat_labels[t] for t in frame["track_id"]], dtype=object)
        relevant[i, :len(got)] = got == labels[i]
        if len(frame):
            top1.append(float(frame["similarity"].iloc[0]))
    precision = relevant.sum(1) / k
    return {
        "precision_at_k": float(precision.mean()) if len(precision) else float("nan"),
        "k": int(k),
        "n_queries": int(len(rows)),
        "n_failed": len(errors),
        "per_label": {g: float(precision[labels == g].mean()) for g in sorted(set(labels))},
        "mean_top1_similarity": float(np.mean(top1)) if top1 else float("nan"),
    }


def tsne_2d(vectors: np.ndarray, seed: int = 0, perplexity: float | None = None,
            method: str = "auto") -> np.ndarray:
    """2-D t-SNE map of embedding vectors (cosine geometry) for plotting.

    Parameters
    ----------
    vectors : np.ndarray, shape (n, dim)
    seed : int
        Random state (the map is deterministic for a given seed).
    perplexity : float, optional
        Default ``min(30, (n - 1) / 3)``, valid for small catalogs.
    method : {"auto", "exact", "barnes_hut"}
        "auto": exact gradients up to 500 points (fast there, and free of the thread start-up
        cost of Barnes-Hut), Barnes-Hut above.

    Returns
    -------
    np.ndarray, shape (n, 2), float32
    """
    # imported here: sklearn.manifold takes about a second to import, and only plots need it
    from sklearn.manifold import TSNE

    x = l2_normalise(vectors)  # euclidean on unit vectors ranks like cosine
    n = len(x)
    if n < 3:
        raise ValueError(f"t-SNE needs at least 3 vectors, got {n}")
    perplexity = perplexity or max(1.0, min(30.0, (n - 1) / 3))
    if method == "auto":
        method = "exact" if n <= 500 else "barnes_hut"
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed,
                method=method)
    return tsne.fit_transform(x).astype(np.float32)
