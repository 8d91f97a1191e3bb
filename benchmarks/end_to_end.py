"""Latency of `helpers.pipeline.Analyzer.analyze` for one 30 s song, by stage.

Two parts, both written to ``benchmarks/results/end_to_end.json``:

1. **The demo pipeline as shipped** (the `tiny` classifier of ``python -m helpers demo`` and
   its human index with the ``features`` embedder): cold (models loaded, first call) and warm
   (median of repeats) latency of ``analyze`` on a 30 s file, broken down into decode, front
   end, classifier, embedding and search.
2. **The OpenL3 query hop.** OpenL3 costs about 10 GFLOP per 1 s frame, so on a CPU its hop
   sets the budget. For hops 0.1 to 1.0 s this times the real mel256/music/512 architecture
   (random weights: speed does not depend on them) on a 30 s clip, and measures how far each
   hop's track vector (mean of frames, L2-normalised) moves from the hop-0.1 s vector, as
   cosine similarity. With random weights that agreement is a fidelity measure of the
   pooling, not of retrieval quality; the quality study on real weights belongs on Colab.
   The chosen hop is the smallest whose embedding fits the 3 s budget left after the other
   stages. Random weights give frames that differ little, so the cosine agreement is an
   optimistic bound; the real-weights study of hop vs. retrieval quality belongs on Colab.

The demo is made by `helpers.pipeline.run_demo` into ``benchmarks/_work/end_to_end/demo``
and reused by later runs only while its fingerprint (the `run_demo` arguments) matches; the
results file records the settings of the run and index actually measured. ``--demo-dir``
measures another demo folder, which must have been made here with the same settings (this
script never deletes a folder it was given). Run from the repository root::

    python -m benchmarks.end_to_end
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from benchmarks.provenance import prepare, write_result

RESULTS = Path(__file__).resolve().parent / "results" / "end_to_end.json"
DEMO = Path(__file__).resolve().parent / "_work" / "end_to_end" / "demo"
#: `run_demo`'s arguments: the demo's fingerprint.
DEMO_SETTINGS = {"seed": 0, "k": 5, "n_queries": 3}
BUDGET_S = 3.0  # the whole analysis of one song on this 2-core machine
HOPS = (0.1, 0.5, 1.0, 2.0, 5.0)


def _song(path: Path, seconds: float = 30.0, seed: int = 0) -> Path:
    """A 30 s stereo 44.1 kHz test song made from the demo generator."""
    from helpers.synth import STYLES, SynthConfig, render_clip

    config = SynthConfig(duration=seconds, sample_rate=44_100)
    y = render_clip(STYLES[2], seed, config)
    sf.write(path, np.stack([y, y], axis=1), 44_100)
    return path


def demo(demo_dir: Path, owned: bool) -> dict:
    """The demo folder to measure, made (or, if `owned`, remade) unless its stamp matches."""
    from helpers.pipeline import run_demo

    return prepare(demo_dir, DEMO_SETTINGS,
                   lambda: run_demo(demo_dir, progress=False, **DEMO_SETTINGS), rebuild=owned)


def pipeline_latency(demo_dir: Path, song: Path, repeats: int) -> dict:
    """Cold and warm latency of Analyzer.analyze, per stage, and what was measured."""
    from helpers.pipeline import Analyzer

    t0 = time.perf_counter()
    analyzer = Analyzer(demo_dir / "run", demo_dir / "index", k=5, always_recommend=True)
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    analyzer.analyze(song)
    cold = {"load_models_s": load_s, "first_call_s": time.perf_counter() - t0,
            "stages_s": dict(analyzer.timings)}
    totals, stages = [], []
    for _ in range(repeats):
        analyzer.timings.clear()
        t0 = time.perf_counter()
        analyzer.analyze(song)
        totals.append(time.perf_counter() - t0)
        stages.append(dict(analyzer.timings))
    warm_stages = {k: statistics.median(s[k] for s in stages) for k in stages[0]}
    info = analyzer.run_info
    return {"embedder": analyzer.index.embedder_config.get("name"),
            "classifier_params": info.get("n_parameters"),
            # The settings of the run and index actually measured, read from their folders.
            "measured": {"run": {k: info.get(k) for k in ("preset", "frontend", "train_config")},
                         "index_embedder": analyzer.index.embedder_config},
            "cold": cold, "warm_total_s": statistics.median(totals),
            "warm_stages_s": warm_stages, "repeats": repeats}


def openl3_hops(song: Path, repeats: int) -> dict:
    """Embedding time and hop-0.1 agreement of the mel256 OpenL3 track vector per hop."""
    from helpers.audio import read_audio
    from helpers.openl3 import OpenL3Model, get_audio_embedding

    torch.manual_seed(0)
    model = OpenL3Model(input_repr="mel256", embedding_size=512).eval()  # random weights
    y, sr = read_audio(song, max_seconds=30.0)
    rows, reference = [], None
    for hop in HOPS:
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            emb, _ = get_audio_embedding(y, sr, model, hop_size=hop, batch_size=64)
            times.append(time.perf_counter() - t0)
        vector = emb.mean(axis=0)
        vector /= np.linalg.norm(vector)
        reference = vector if reference is None else reference
        rows.append({"hop_s": hop, "frames": len(emb), "seconds": statistics.median(times),
                     "cosine_to_hop_0.1": float(vector @ reference)})
    return {"model": "mel256/music/512, random weights", "rows": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--demo-dir", type=Path, default=None,
                        help=f"a demo folder made by this script (default {DEMO}, remade when "
                        "its settings differ)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--openl3-repeats", type=int, default=1,
                        help="repeats per OpenL3 hop (hop 0.1 s takes minutes on a CPU)")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)

    demo_dir = args.demo_dir or DEMO
    demo_used = demo(demo_dir, owned=args.demo_dir is None)
    with tempfile.TemporaryDirectory() as tmp:
        song = _song(Path(tmp) / "song.wav")
        pipeline = pipeline_latency(demo_dir, song, args.repeats)
        hops = openl3_hops(song, args.openl3_repeats)
    others = sum(v for k, v in pipeline["warm_stages_s"].items() if k != "embedding")
    fitting = [r for r in hops["rows"] if others + r["seconds"] <= BUDGET_S]
    chosen = min(fitting, key=lambda r: r["hop_s"])["hop_s"] if fitting else None
    result = {
        "data": "a 30 s song from the synthetic demo generator (helpers.synth)",
        "machine": {"threads": torch.get_num_threads()},  # the rest is in `provenance`
        "demo": {"folder": str(demo_dir), **demo_used},
        "pipeline": pipeline,
        "warm_without_embedding_s": others,
        "openl3_hops": hops,
        "budget_s": BUDGET_S,
        "chosen_openl3_query_hop_s": chosen,
    }
    write_result(args.out, result, vars(args) | {"demo_dir": str(demo_dir),
                                                 "demo_settings": DEMO_SETTINGS})
    print(f"warm total {pipeline['warm_total_s']:.3f} s ({pipeline['embedder']} embedder); "
          f"without embedding {others:.3f} s; OpenL3 hop chosen: {chosen}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
