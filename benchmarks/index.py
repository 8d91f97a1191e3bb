"""Catalog search speed: numpy exact vs. FAISS exact vs. FAISS HNSW vs. scikit-learn brute force.

For catalogs of 1k / 10k / 50k / 200k unit vectors of 512 float32 (OpenL3's size), measures:

* build time (FAISS ``add``; scikit-learn ``fit``; HNSW graph construction);
* exact query latency for one query and for batches of 64 and 100 (median over repeats,
  k = 5) of the three exact searches in the same run: `helpers.index.exact_top_k` (numpy: one
  BLAS product + argpartition, what `CatalogIndex` uses for flat search), FAISS
  ``IndexFlatIP`` and scikit-learn brute force, on 1 and 2 threads (`--compare-threads`),
  their runs alternated so that a change in machine load hits all three alike; the BLAS
  numpy uses (threadpoolctl) is recorded, since FAISS bundles its own;
* bytes per track (serialised FAISS index / n);
* HNSW recall@5 against the exact answer, on random vectors (the hard case: in 512-d random
  points are all nearly equidistant, so graph search has little structure to use) and on a
  clustered variant (100 Gaussian clusters, closer to real embeddings);
* for the exact single query, the ratio to the memory-bandwidth limit: the time of one
  matrix-vector product ``M @ q`` (BLAS sgemv reads the whole matrix once) measured in the
  same run, so a ratio of 1.0 means the search runs at the speed of reading the matrix.
  Below ~10k tracks the matrix fits in cache and the "limit" is cache bandwidth.

Everything runs on `--threads` threads (1 by default: with other jobs on the cores, idle-spinning
OpenMP threads turn millisecond searches into scheduler-quantum waits, and single-thread numbers
are the reproducible ones; multiply throughput by the cores for a dedicated machine).
Results go to ``benchmarks/results/index.json`` (written atomically), with the machine's CPU
count, platform and load average: on a shared machine, a load average above the core count
means other processes competed for the cores, and latencies are upper bounds. Run from the
repository root::

    python -m benchmarks.index            # ~3-4 minutes on 2 cores
    python -m benchmarks.index --sizes 1000 10000 --hnsw-max 10000   # quick
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import faiss
import numpy as np
from sklearn.neighbors import NearestNeighbors
from threadpoolctl import threadpool_info, threadpool_limits

from benchmarks.provenance import write_result
from helpers.index import exact_top_k

RESULTS = Path(__file__).resolve().parent / "results" / "index.json"
DIM = 512
K = 5
BATCH = 64
BATCHES = {"single_query": 1, "batch_64": 64, "batch_100": 100}


def unit_rows(x: np.ndarray) -> np.ndarray:
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def random_vectors(n: int, rng: np.random.Generator) -> np.ndarray:
    return unit_rows(rng.standard_normal((n, DIM), dtype=np.float32))


def clustered_vectors(n: int, rng: np.random.Generator, n_clusters: int = 100,
                      spread: float = 0.5) -> np.ndarray:
    centres = rng.standard_normal((n_clusters, DIM), dtype=np.float32)
    x = centres[rng.integers(0, n_clusters, n)]
    x += spread * rng.standard_normal((n, DIM), dtype=np.float32)
    return unit_rows(x)


def timed(fn: Callable[[], object], min_repeats: int = 3, min_seconds: float = 0.3,
          max_repeats: int = 200) -> dict[str, float]:
    """Median and best wall time of `fn` over enough repeats to fill `min_seconds`."""
    times = []
    start = time.perf_counter()
    while len(times) < max_repeats and (len(times) < min_repeats
                                         or time.perf_counter() - start < min_seconds):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return {"median_ms": 1e3 * statistics.median(times), "best_ms": 1e3 * min(times),
            "repeats": len(times)}


def timed_alternating(fns: dict[str, Callable[[], object]], min_repeats: int = 3,
                      min_seconds: float = 0.3, max_repeats: int = 200) -> dict[str, dict]:
    """`timed` for several functions, called in turn each round: a load change hits all."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    start = time.perf_counter()
    rounds = 0
    while rounds < max_repeats and (rounds < min_repeats
                                    or time.perf_counter() - start < min_seconds):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
        rounds += 1
    return {name: {"median_ms": 1e3 * statistics.median(v), "best_ms": 1e3 * min(v),
                   "repeats": len(v)} for name, v in times.items()}


def compare_exact(x: np.ndarray, queries: np.ndarray, flat: faiss.Index,
                  nn: NearestNeighbors | None, threads: list[int]) -> dict:
    """Numpy vs FAISS flat vs sklearn, ``{threads: {batch name: {method: timing}}}``."""
    out: dict[str, dict] = {}
    for n_threads in threads:
        faiss.omp_set_num_threads(n_threads)
        with threadpool_limits(limits=n_threads):
            cases = {}
            for name, size in BATCHES.items():
                q = queries[:size]
                fns = {"numpy": lambda q=q: exact_top_k(q, x, K),
                       "faiss_flat": lambda q=q: flat.search(q, K)}
                if nn is not None:
                    fns["sklearn"] = lambda q=q: nn.kneighbors(q)
                timing = timed_alternating(fns)
                for v in timing.values():
                    v["per_query_ms"] = v["median_ms"] / size
                cases[name] = timing
            out[str(n_threads)] = cases
    return out


def recall_at_k(truth: np.ndarray, approx: np.ndarray) -> float:
    return float(np.mean([len(set(t) & set(a)) / len(t) for t, a in zip(truth, approx)]))


def bench_exact(x: np.ndarray, queries: np.ndarray) -> dict:
    n = len(x)
    t = time.perf_counter()
    index = faiss.IndexFlatIP(DIM)
    index.add(x)
    build_s = time.perf_counter() - t
    rotate = iter(range(10**9))
    single = timed(lambda: index.search(queries[next(rotate) % len(queries)][None], K))
    batch = timed(lambda: index.search(queries[:BATCH], K))
    # memory-bandwidth reference: one pass over the matrix, same data, same run
    dot = timed(lambda: x @ queries[0], min_repeats=5)
    matrix_bytes = x.nbytes
    out = {
        "build_s": build_s,
        "single_query": single,
        "batch_64": {**batch, "per_query_ms": batch["median_ms"] / BATCH},
        "bytes_per_track": len(faiss.serialize_index(index)) / n,
        "matrix_read_ms": dot,
        "matrix_read_gb_per_s": matrix_bytes / (dot["best_ms"] / 1e3) / 1e9,
        "single_query_vs_bandwidth_limit": single["best_ms"] / dot["best_ms"],
    }
    return out, index


def bench_sklearn(x: np.ndarray, queries: np.ndarray) -> dict:
    t = time.perf_counter()
    nn = NearestNeighbors(n_neighbors=K, metric="cosine", algorithm="brute").fit(x)
    build_s = time.perf_counter() - t
    single = timed(lambda: nn.kneighbors(queries[:1]), min_seconds=0.2)
    batch = timed(lambda: nn.kneighbors(queries[:BATCH]), min_seconds=0.2)
    return {"build_s": build_s, "single_query": single,
            "batch_64": {**batch, "per_query_ms": batch["median_ms"] / BATCH}}


def bench_hnsw(x: np.ndarray, queries: np.ndarray, truth: np.ndarray, m: int,
               ef_construction: int, ef_searches: list[int]) -> dict:
    n = len(x)
    index = faiss.IndexHNSWFlat(DIM, m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = ef_construction
    t = time.perf_counter()
    index.add(x)
    build_s = time.perf_counter() - t
    out = {"build_s": build_s, "m": m, "ef_construction": ef_construction,
           "bytes_per_track": len(faiss.serialize_index(index)) / n, "ef_search": {}}
    for ef in ef_searches:
        index.hnsw.efSearch = ef
        _, found = index.search(queries, K)
        rotate = iter(range(10**9))
        single = timed(lambda idx=index, r=rotate: idx.search(
            queries[next(r) % len(queries)][None], K))
        batch = timed(lambda idx=index: idx.search(queries[:BATCH], K))
        out["ef_search"][str(ef)] = {
            "recall_at_5": recall_at_k(truth, found),
            "single_query": single,
            "batch_64": {**batch, "per_query_ms": batch["median_ms"] / BATCH},
        }
    return out


def run(sizes: list[int], hnsw_max: int, hnsw_random_max: int, sklearn_max: int, m: int,
        ef_construction: int, ef_searches: list[int], n_queries: int, seed: int,
        threads: int, compare_threads: list[int]) -> dict:
    rng = np.random.default_rng(seed)
    results = []
    for n in sizes:
        for variant in ("random", "clustered"):
            if variant == "clustered" and n > hnsw_max:
                continue  # the clustered variant only matters for HNSW recall
            t0 = time.perf_counter()
            make = random_vectors if variant == "random" else clustered_vectors
            both = make(n + n_queries, rng)
            x, queries = np.ascontiguousarray(both[:n]), np.ascontiguousarray(both[n:])
            del both
            row = {"n": n, "dim": DIM, "variant": variant}
            row["faiss_flat"], exact = bench_exact(x, queries)
            _, truth = exact.search(queries, K)
            nn = None
            if variant == "random" and n <= sklearn_max:
                row["sklearn_brute"] = bench_sklearn(x, queries)
                nn = NearestNeighbors(n_neighbors=K, metric="cosine", algorithm="brute").fit(x)
            if variant == "random":
                row["exact_by_threads"] = compare_exact(x, queries, exact, nn, compare_threads)
                faiss.omp_set_num_threads(threads)
                first = row["exact_by_threads"][str(compare_threads[0])]
                row["numpy_exact"] = {name: case["numpy"] for name, case in first.items()}
                row["numpy_exact"]["threads"] = compare_threads[0]
            if n <= (hnsw_max if variant == "clustered" else min(hnsw_max, hnsw_random_max)):
                row["faiss_hnsw"] = bench_hnsw(x, queries, truth, m, ef_construction,
                                               ef_searches)
            row["wall_s"] = time.perf_counter() - t0
            results.append(row)
            flat = row["faiss_flat"]
            hnsw = row.get("faiss_hnsw", {}).get("ef_search", {})
            print(f"n={n:>7} {variant:9} flat 1q {flat['single_query']['median_ms']:7.2f} ms "
                  f"(x{flat['single_query_vs_bandwidth_limit']:.2f} of matrix read), "
                  f"64q {flat['batch_64']['median_ms']:7.2f} ms"
                  + "".join(f" | {t} thr {case}: " + ", ".join(
                      f"{meth} {v['median_ms']:.2f}" for meth, v in timing.items())
                      for t, cases in row.get("exact_by_threads", {}).items()
                      for case, timing in cases.items())
                  + "".join(f" | hnsw ef{ef} 1q {v['single_query']['median_ms']:.3f} ms "
                            f"R@5 {v['recall_at_5']:.3f}" for ef, v in hnsw.items())
                  + f"  [{row['wall_s']:.0f} s]", flush=True)
            del x, queries, exact
    return {"results": results}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 50_000, 200_000])
    parser.add_argument("--hnsw-max", type=int, default=50_000,
                        help="largest catalog to build an HNSW graph for (build is the cost)")
    parser.add_argument("--hnsw-random-max", type=int, default=10_000,
                        help="largest random (unclustered) catalog for HNSW: its graph is slow "
                        "to build and its recall poor, 10k shows the trend")
    parser.add_argument("--sklearn-max", type=int, default=200_000)
    parser.add_argument("--m", type=int, default=32, help="HNSW neighbours per node")
    parser.add_argument("--ef-construction", type=int, default=80)
    parser.add_argument("--ef-search", type=int, nargs="+", default=[16, 64, 128])
    parser.add_argument("--queries", type=int, default=200, help="queries for recall")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="FAISS (OpenMP) and BLAS threads. 1 by default: on a shared "
                        "machine spinning OpenMP threads make multi-threaded timings erratic")
    parser.add_argument("--compare-threads", type=int, nargs="+", default=[1, 2],
                        help="thread counts of the numpy / FAISS flat / sklearn comparison")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    load_before = os.getloadavg()
    t0 = time.perf_counter()
    faiss.omp_set_num_threads(args.threads)
    with threadpool_limits(limits=args.threads):
        report = run(args.sizes, args.hnsw_max, args.hnsw_random_max, args.sklearn_max,
                     args.m, args.ef_construction, args.ef_search, args.queries, args.seed,
                     args.threads, args.compare_threads)
    report.update({
        "benchmark": "index",
        "k": K,
        "batch": BATCH,
        "batches": BATCHES,
        "machine": {  # the CPU, versions and settings are in `provenance`
            "threads": args.threads,
            "threadpools": threadpool_info(),  # numpy's BLAS and its CPU detection
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
        },
        "total_s": time.perf_counter() - t0,
        "notes": [
            "latencies are wall-clock medians; k=5; vectors are unit-norm float32, dim 512; "
            "FAISS and BLAS limited to `threads` threads",
            "single_query_vs_bandwidth_limit = best exact single-query time / best time of "
            "one BLAS matrix-vector product over the same matrix (1.0 = bandwidth bound)",
            "exact_by_threads: numpy (helpers.index.exact_top_k), FAISS IndexFlatIP and "
            "sklearn brute force timed in alternation, same queries, per thread count; "
            "numpy_exact repeats the first thread count's numpy timings",
            "HNSW recall on 'random' vectors is a worst case; 'clustered' is closer to real "
            "embeddings",
            "a load average above cpu_count means other processes shared the cores",
        ],
    })
    report = write_result(args.out, report, vars(args))
    print(f"wrote {args.out} in {report['total_s']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
