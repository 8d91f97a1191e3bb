"""How coarse an OpenL3 query may be: the quality curve of the query hop, and its cost.

A query (`recommend`, `analyze`) embeds the 30 s excerpt of one file while the user waits;
the catalog was embedded offline at the catalog hop (0.5 s by default). This script measures,
on real recordings, what a longer *query* hop costs in agreement and what it saves in time,
so the default query hop is chosen from numbers, not guessed.

* **Data:** music tracks of the detection protocol's packages (`benchmarks.real_detection`,
  music folders only, tracks of at least 60 s): excerpt A (0-30 s) is the catalog, excerpt B
  (30-60 s) the query of the same track.
* **Network:** mel256 with *random* weights (the official weights cannot be downloaded here):
  the fixture's mel128 file, whose conv shapes are mel256's, as in the tests. Real weights
  may smooth or sharpen the curve; the timing does not depend on them.
* **Quality curve:** per query hop, the cosine between a track vector (mean of frames) and
  the same excerpt's vector at hop 0.1 s; and retrieval of the query's own track among the
  catalog (recall@1, recall@5) and the overlap of its top 5 with the hop-0.1 query's top 5.
  Computed in bfloat16 (drift to float32 about 5e-3, far below the hop effects) to keep
  the run short.
* **Cost:** the warm wall time of one query embedding (decode, resample, windows, network)
  on this machine, per hop and precision, median of `--repeats`.
* **Rule** (fixed before the first number): the default query hop is the smallest hop whose
  float32 query time is at most `QUERY_EMBED_BUDGET_S` (the 3 s `analyze` budget less the
  classifier and the search) *and* whose mean cosine to hop 0.1 is at least `MIN_COSINE`.
  float32 is the rule's precision because a CPU without bf16 units must fit too.

    python -m benchmarks.openl3_query_budget
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from benchmarks import real_detection as rd  # noqa: E402
from benchmarks.provenance import write_result  # noqa: E402
from helpers import openl3  # noqa: E402
from helpers.audio import read_audio  # noqa: E402
from helpers.embed import OpenL3Embedder  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results" / "openl3_query_budget.json"
FIXTURE = ROOT.parent / "shared" / "openl3_reference" / "mel128_music_random.h5"
HOPS = (0.1, 0.2, 0.5, 1.0, 1.5, 2.0, 3.0)
CATALOG_HOP = 0.5
QUERY_EMBED_BUDGET_S = 2.5
MIN_COSINE = 0.99
EXCERPT_S = 30.0


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def track_vector(model, y: np.ndarray, sr: int, hop: float) -> np.ndarray:
    """Mean of the frame embeddings at `hop` (bf16 conv stack), unit norm."""
    emb, _ = openl3.get_audio_embedding(y, sr, model, hop_size=hop, dtype="bf16")
    return _unit(emb.mean(axis=0))


def quality_curve(model, tracks) -> tuple[dict, list[str]]:
    catalog, queries, names = [], {h: [] for h in HOPS}, []
    for row in tracks.to_dict("records"):
        y, sr = read_audio(row["path"], max_seconds=2 * EXCERPT_S)
        if len(y) < 2 * EXCERPT_S * sr:
            continue
        a, b = y[: int(EXCERPT_S * sr)], y[int(EXCERPT_S * sr): int(2 * EXCERPT_S * sr)]
        catalog.append(track_vector(model, a, sr, CATALOG_HOP))
        for hop in HOPS:
            queries[hop].append(track_vector(model, b, sr, hop))
        names.append(row["track_id"])
        print(f"embedded {len(names)}/{len(tracks)} {row['track_id']}", flush=True)
    cat = np.stack(catalog)
    reference = np.stack(queries[0.1])
    ref_top5 = np.argsort(-reference @ cat.T, axis=1)[:, :5]
    curve = {}
    for hop in HOPS:
        vec = np.stack(queries[hop])
        cos = np.sum(vec * reference, axis=1)
        order = np.argsort(-vec @ cat.T, axis=1)
        own = np.arange(len(vec))[:, None]
        curve[str(hop)] = {
            "cosine_to_hop_0.1": {"mean": float(cos.mean()), "min": float(cos.min())},
            "recall_at_1": float(np.mean(order[:, 0] == own[:, 0])),
            "recall_at_5": float(np.mean((order[:, :5] == own).any(axis=1))),
            "top5_overlap_with_hop_0.1": float(np.mean(
                [len(set(o[:5]) & set(r)) / 5 for o, r in zip(order, ref_top5)])),
        }
        print(hop, curve[str(hop)], flush=True)
    return curve, names


def query_times(weights_dir: Path, path: str, repeats: int) -> dict:
    """Warm wall seconds of one query embedding per (precision, hop)."""
    out = {}
    for precision in ("fp32", "bf16"):
        for hop in HOPS:
            embedder = OpenL3Embedder(cache_dir=weights_dir, device="cpu", hop_size=CATALOG_HOP,
                                      query_hop_size=hop, precision=precision).for_queries()
            embedder.embed_file(path)  # warm: weights, packed convs, resampler JIT
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                embedder.embed_file(path)
                times.append(time.perf_counter() - start)
            out.setdefault(precision, {})[str(hop)] = {
                "median_s": round(statistics.median(times), 3),
                "times_s": [round(t, 3) for t in times]}
            print(precision, hop, out[precision][str(hop)], flush=True)
    return out


def choose(curve: dict, times: dict) -> dict:
    fits = [h for h in HOPS if times["fp32"][str(h)]["median_s"] <= QUERY_EMBED_BUDGET_S
            and curve[str(h)]["cosine_to_hop_0.1"]["mean"] >= MIN_COSINE]
    bf16 = [h for h in HOPS if times["bf16"][str(h)]["median_s"] <= QUERY_EMBED_BUDGET_S]
    return {"rule": f"smallest hop with fp32 query time <= {QUERY_EMBED_BUDGET_S} s and mean "
                    f"cosine to hop 0.1 >= {MIN_COSINE}",
            "query_hop_s": min(fits) if fits else None,
            "smallest_hop_in_budget_with_bf16": min(bf16) if bf16 else None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tracks", type=int, default=20, help="tracks in the quality curve")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if not FIXTURE.exists():
        print(f"skipped: the OpenL3 fixture is missing ({FIXTURE})")
        return 0
    torch.set_num_threads(2)
    tracks, _ = rd.human_tracks()
    # Spread over the packages (composers), every n-th track in a fixed order.
    tracks = tracks.sort_values("track_id").iloc[:: max(1, len(tracks) // args.tracks)]
    tracks = tracks.iloc[: args.tracks]
    with tempfile.TemporaryDirectory() as tmp:
        weights_dir = Path(tmp)
        shutil.copy(FIXTURE, openl3.weights_path("mel256", "music", weights_dir))
        model = openl3.load_audio_embedding_model("mel256", "music", 512, device="cpu",
                                                  cache_dir=weights_dir, download=False)
        curve, names = quality_curve(model, tracks)
        # One real file, its first 30 s decoded from the Ogg as `recommend` would.
        query = Path(tmp) / "query.wav"
        y, sr = read_audio(tracks.iloc[0]["path"], max_seconds=None)
        sf.write(query, y[: int(45 * sr)], sr)
        times = query_times(weights_dir, str(query), args.repeats)
        auto = openl3.resolve_precision(model).to_dict()
    report = {
        "benchmark": "openl3 query hop: quality curve on real music and query cost",
        "data": {"tracks": names, "excerpts": "catalog 0-30 s, query 30-60 s",
                 "source": "Debian game soundtracks, music folders (benchmarks.real_detection)"},
        "network": "mel256, random weights (the fixture's file), catalog hop "
                   f"{CATALOG_HOP} s; quality curve in bf16",
        "quality_curve": curve,
        "query_embed_wall_s": times,
        "auto_precision_with_these_weights": auto,
        "decision": choose(curve, times),
        "machine_threads": torch.get_num_threads(),
    }
    write_result(args.out, report, vars(args))
    print(report["decision"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
