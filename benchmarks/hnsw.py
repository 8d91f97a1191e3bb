"""HNSW efSearch vs recall@5 and latency, and the value `CatalogIndex.tune_ef_search` picks.

For catalogs of 1k / 10k / 50k unit vectors of 512 float32 (OpenL3's size), random (the hard
case: in 512-d random points are nearly equidistant) and clustered (100 Gaussian clusters,
closer to real embeddings), this measures, with the index's own HNSW settings
(`helpers.index.HNSW_M`, `helpers.index.EF_CONSTRUCTION`):

* recall@5 against exact search, on held-out queries, for efSearch 16 ... 4096;
* the median latency of one query (HNSW at each efSearch, and exact ``IndexFlatIP``);
* the efSearch that `CatalogIndex.tune_ef_search` chooses from the catalog alone (catalog
  vectors as queries, themselves excluded) and the recall@5 it gives on the held-out queries.

Everything runs on one thread (other jobs share the cores; single-thread numbers are the
reproducible ones). Results go to ``benchmarks/results/hnsw.json``. Run from the repository
root::

    python -m benchmarks.hnsw                 # ~3-5 minutes on 2 cores
    python -m benchmarks.hnsw --sizes 1000    # quick
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import faiss
import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from benchmarks.index import clustered_vectors, random_vectors, recall_at_k, timed
from benchmarks.provenance import write_result
from helpers.index import EF_CONSTRUCTION, HNSW_M, CatalogIndex

RESULTS = Path(__file__).resolve().parent / "results" / "hnsw.json"
K = 5
EF_SEARCHES = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096)


def bench_one(x: np.ndarray, queries: np.ndarray, target: float) -> dict:
    """Recall/latency table of one catalog, plus the tuned efSearch and its held-out recall."""
    flat = faiss.IndexFlatIP(x.shape[1])
    flat.add(x)
    _, truth = flat.search(queries, K)
    rotate = iter(range(10**9))
    flat_ms = timed(lambda: flat.search(queries[next(rotate) % len(queries)][None], K))
    catalog = pd.DataFrame({"track_id": [str(i) for i in range(len(x))],
                            "path": [f"/{i}.wav" for i in range(len(x))]})
    t = time.perf_counter()
    index = CatalogIndex(x, catalog, {"name": "bench", "dim": x.shape[1]}, index_type="hnsw",
                         ef_search=EF_SEARCHES[0])
    graph = index.faiss_index
    build_s = time.perf_counter() - t
    table = {}
    for ef in EF_SEARCHES:
        graph.hnsw.efSearch = ef
        _, found = graph.search(queries, K)
        single = timed(lambda: graph.search(queries[next(rotate) % len(queries)][None], K),
                       min_seconds=0.2)
        table[str(ef)] = {"recall_at_5": recall_at_k(truth, found),
                          "single_query_ms": single["median_ms"]}
    t = time.perf_counter()
    tuned = index.tune_ef_search(target=target, k=K)
    tune_s = time.perf_counter() - t
    graph.hnsw.efSearch = tuned["ef_search"]
    _, found = graph.search(queries, K)
    return {"build_s": build_s, "flat_single_query_ms": flat_ms["median_ms"],
            "ef_search": table, "tuned": {**tuned, "held_out_recall_at_5":
                                          recall_at_k(truth, found), "tune_s": tune_s}}


def run(sizes: list[int], n_queries: int, target: float, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for n in sizes:
        for variant, make in (("random", random_vectors), ("clustered", clustered_vectors)):
            t0 = time.perf_counter()
            both = make(n + n_queries, rng)
            x, queries = np.ascontiguousarray(both[:n]), np.ascontiguousarray(both[n:])
            row = {"n": n, "variant": variant, **bench_one(x, queries, target)}
            row["wall_s"] = time.perf_counter() - t0
            rows.append(row)
            first = next((ef for ef, v in row["ef_search"].items()
                          if v["recall_at_5"] >= target), None)
            tuned = row["tuned"]
            print(f"n={n:>6} {variant:9} flat {row['flat_single_query_ms']:.2f} ms | first ef "
                  f"with R@5>={target}: {first} | tuned ef {tuned['ef_search']} (catalog R@5 "
                  f"{tuned['recall_at_k']:.3f}, held-out {tuned['held_out_recall_at_5']:.3f}) "
                  f"[{row['wall_s']:.0f} s]", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 50_000])
    parser.add_argument("--queries", type=int, default=200, help="held-out queries for recall")
    parser.add_argument("--target", type=float, default=0.95, help="recall@5 to reach")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    faiss.omp_set_num_threads(1)
    with threadpool_limits(limits=1):
        rows = run(args.sizes, args.queries, args.target, args.seed)
    report = {
        "benchmark": "hnsw",
        "k": K, "dim": 512, "hnsw_m": HNSW_M, "ef_construction": EF_CONSTRUCTION,
        "results": rows,
        "machine": {"threads": 1, "load_average_before": load_before,
                    "load_average_after": os.getloadavg()},
        "total_s": time.perf_counter() - t0,
        "notes": [
            "recall_at_5: held-out queries against exact search; single_query_ms: median "
            "wall-clock latency of one query on one thread",
            "tuned: CatalogIndex.tune_ef_search, which sees only the catalog (catalog vectors "
            "as queries, themselves excluded); held_out_recall_at_5 checks its choice",
            "a load average above cpu_count means other processes shared the cores",
        ],
    }
    report = write_result(args.out, report, vars(args))
    print(f"wrote {args.out} in {report['total_s']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
