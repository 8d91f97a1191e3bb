"""Retrieval metrics on a hand-made catalog whose answers are worked out in the comments."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from helpers.index import CatalogIndex
from helpers.retrieval import leave_one_out, ranking_metrics, tsne_2d


def circle_catalog() -> tuple[np.ndarray, pd.DataFrame]:
    """Five unit vectors on a circle (angles in degrees), so rankings follow the angles.

    track  angle  genre  artist
      0      0      A      x
      1     12      A      x
      2     30      B      y
      3     90      B      y
      4    100      A      z
    """
    angles = np.deg2rad([0, 12, 30, 90, 100])
    vectors = np.stack([np.cos(angles), np.sin(angles)], 1).astype(np.float32)
    catalog = pd.DataFrame({"track_id": [f"t{i}" for i in range(5)],
                            "path": [f"/m/{i}.wav" for i in range(5)],
                            "genre": list("AABBA"), "artist": list("xxyyz")})
    return vectors, catalog


def test_ranking_metrics_known_values():
    # hits at ranks 1 and 3 of 3, R = 2: P@3 = 2/3, AP@3 = (1/1 + 2/3) / 2
    p, ap = ranking_metrics(np.array([[True, False, True]]), np.array([2]), k=3)
    assert p[0] == pytest.approx(2 / 3) and ap[0] == pytest.approx((1 + 2 / 3) / 2)
    # one hit at rank 2, R = 2: P@2 = 1/2, AP@2 = (1/2) / 2
    p, ap = ranking_metrics(np.array([[False, True]]), np.array([2]), k=2)
    assert p[0] == pytest.approx(0.5) and ap[0] == pytest.approx(0.25)
    # nothing relevant left: both 0
    p, ap = ranking_metrics(np.array([[False, False]]), np.array([0]), k=2)
    assert p[0] == 0 and ap[0] == 0


def test_leave_one_out_on_hand_made_catalog():
    vectors, catalog = circle_catalog()
    index = CatalogIndex(vectors, catalog, {"name": "hand", "dim": 2})
    result = leave_one_out(index, k=2)
    # top-2 per query: 0->[1,2] (A: hit, miss), 1->[0,2] (hit, miss), 2->[1,0] (B: miss, miss),
    # 3->[4,2] (miss, hit), 4->[3,2] (A: miss, miss)
    # P@2 = [.5, .5, 0, .5, 0]; AP@2 = [1/2, 1/2, 0, (1/2)/min(2, R=1), 0] = [.5, .5, 0, .5, 0]
    assert result["precision_at_k"] == pytest.approx(0.3)
    assert result["map_at_k"] == pytest.approx(0.3)
    assert result["per_label"] == pytest.approx({"A": 1 / 3, "B": 0.25})
    assert result["excluded"] == ["self", "same_track"] and result["n_queries"] == 5


def test_excluding_same_artist_removes_the_artist_shortcut():
    vectors, catalog = circle_catalog()
    result = leave_one_out(vectors=vectors, catalog=catalog, k=2, exclude_same_artist=True)
    # every hit above came from the query's own artist (0<->1 are x, 2<->3 are y), so
    # without them no neighbour shares the genre
    assert result["precision_at_k"] == 0.0 and result["map_at_k"] == 0.0
    assert result["excluded"] == ["self", "same_track", "same_artist", "duplicates"]


def test_exact_duplicates_are_excluded_and_counted():
    vectors, catalog = circle_catalog()
    vectors = np.vstack([vectors, vectors[2:3]])  # t5: a copy of t2 under another artist
    catalog = pd.concat([catalog, pd.DataFrame({"track_id": ["t5"], "path": ["/m/5.wav"],
                                                "genre": ["B"], "artist": ["w"]})],
                        ignore_index=True)
    plain = leave_one_out(vectors=vectors, catalog=catalog, k=1)
    strict = leave_one_out(vectors=vectors, catalog=catalog, k=1, exclude_duplicates=True)
    assert plain["per_label"]["B"] > strict["per_label"]["B"]
    assert strict["n_duplicates_excluded"] == 2
    assert strict["excluded"] == ["self", "same_track", "duplicates"]


def test_tsne_is_deterministic_for_a_seed():
    x = np.random.default_rng(0).normal(size=(40, 8)).astype(np.float32)
    a, b = tsne_2d(x, seed=3), tsne_2d(x, seed=3)
    assert a.shape == (40, 2)
    np.testing.assert_array_equal(a, b)


def test_plots_return_figures():
    from matplotlib.figure import Figure

    from helpers.plots_embed import plot_per_genre_precision, plot_tsne

    xy = np.random.default_rng(0).normal(size=(10, 2))
    assert isinstance(plot_tsne(xy, ["a", "b"] * 5, styles=["ai"] * 5 + ["human"] * 5), Figure)
    assert isinstance(plot_per_genre_precision({"A": 0.5, "B": 1.0}, k=5), Figure)
    nested = {"all": {"A": 0.5, "B": 1.0}, "other artists": {"A": 0.2, "B": 0.4}}
    assert isinstance(plot_per_genre_precision(nested), Figure)


def test_sibling_excerpts_of_a_track_are_not_counted_as_hits():
    """Four songs, two excerpts each (same track_id, nearly the same vector). Each song's
    nearest *other* song has the other genre, so once siblings are excluded P@1 is 0; counting
    the sibling would give 1.0 by construction."""
    angles = np.deg2rad([0, 1, 20, 21, 40, 41, 60, 61])  # songs a, b, c, d at 0/20/40/60
    vectors = np.stack([np.cos(angles), np.sin(angles)], 1).astype(np.float32)
    catalog = pd.DataFrame({"track_id": list("aabbccdd"),
                            "path": [f"/m/{i}.wav" for i in range(8)],
                            "genre": list("AABBAABB")})
    result = leave_one_out(vectors=vectors, catalog=catalog, k=1)
    assert result["precision_at_k"] == 0.0 and result["n_same_track_excluded"] == 8
    # the same file listed twice (one relative, one absolute path) is one track too
    catalog = catalog.assign(track_id=[f"t{i}" for i in range(8)],
                             path=["m/0.wav", str(Path("m/0.wav").resolve()),
                                   *[f"/m/{i}.wav" for i in range(2, 8)]])
    pair = leave_one_out(vectors=vectors, catalog=catalog, k=1)
    assert pair["n_same_track_excluded"] == 2


def test_same_artist_exclusion_refuses_a_catalog_without_artists():
    vectors = np.eye(4, dtype=np.float32)
    catalog = pd.DataFrame({"track_id": list("abcd"), "path": list("abcd"),
                            "genre": ["x", "x", "y", "y"], "artist": [""] * 4})
    with pytest.raises(ValueError, match="no artist values"):
        leave_one_out(vectors=vectors, catalog=catalog, k=2, exclude_same_artist=True)
    assert leave_one_out(vectors=vectors, catalog=catalog, k=2)["n_queries"] == 4
