"""Classify, then recommend: the product users run.

`Analyzer` loads a classifier run (Model 1) and a human-track index (Model 2) once and answers,
for each song: its calibrated P(AI), the decision at the run's threshold, and, when the song
looks AI-made, the top-K most similar human tracks. Each file is decoded once; the classifier
and the embedder both work from that audio.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from helpers.audio import AudioError, mel_db, prepare_clip, read_audio
from helpers.config import FrontEndConfig
from helpers.datasets import load_manifest
from helpers.embed import default_embedder
from helpers.evaluate import evaluate
from helpers.index import CatalogIndex, build_index
from helpers.io import read_json, write_json
from helpers.retrieval import ai_query_precision, leave_one_out
from helpers.run import load_run, predict_proba
from helpers.synth import SynthConfig, make_corpus
from helpers.train import TrainConfig, train

log = logging.getLogger(__name__)

Audio = str | os.PathLike | tuple[np.ndarray, int]


class Analyzer:
    """Score songs with a classifier run and recommend human tracks from an index.

    Parameters
    ----------
    run : str or path-like
        A finished classifier run folder (`helpers.train.train`).
    index : str or path-like
        An index folder (`helpers.index.build_index`).
    k : int
        Recommendations per AI-looking song.
    threshold : float, optional
        Decision threshold on the calibrated P(AI); default the run's validation choice.
    always_recommend : bool
        Recommend for human-looking songs too.
    device : str, optional
        Torch device for the classifier; default CPU.
    embedder_overrides : dict, optional
        Runtime arguments for the index's embedder (``device``, ``weights``, ``run_dir``).
    """

    def __init__(
        self,
        run: str | os.PathLike,
        index: str | os.PathLike,
        k: int = 5,
        threshold: float | None = None,
        always_recommend: bool = False,
        device: str | None = None,
        embedder_overrides: dict[str, Any] | None = None,
    ) -> None:
        self.model, self.run_info = load_run(run, device=device)
        self.frontend = FrontEndConfig.from_dict(self.run_info["frontend"])
        self.index = CatalogIndex.load(index)
        self.embedder = self.index.embedder(**(embedder_overrides or {}))
        self.k = k
        self.threshold = float(self.run_info["threshold"] if threshold is None else threshold)
        self.always_recommend = always_recommend
        self.timings: dict[str, float] = {}

    def _tick(self, stage: str, t0: float) -> float:
        now = time.perf_counter()
        self.timings[stage] = self.timings.get(stage, 0.0) + now - t0
        return now

    def score_audio(self, y: np.ndarray, sr: int, name: str | os.PathLike = "<audio>") -> float:
        """Calibrated P(AI) of the first ``duration`` seconds of decoded audio."""
        t0 = time.perf_counter()
        mel = mel_db(prepare_clip(y, sr, self.frontend, name=name), self.frontend)
        t0 = self._tick("front_end", t0)
        p = float(predict_proba(self.model, self.run_info, mel[None])[0])
        self._tick("classifier", t0)
        return p

    def score_windows(self, y: np.ndarray, sr: int, name: str | os.PathLike = "<audio>",
                      hop_seconds: float | None = None) -> dict[str, Any]:
        """P(AI) of sliding windows over a whole song.

        Windows are ``duration`` seconds long with a hop of half that (default); the last
        one ends at the song's end so no part is left unscored. Windows the front end cannot
        use (silent, e.g. a pause between tracks, or damaged) are skipped, counted and
        logged; the song is an error only when no window is usable.

        Returns
        -------
        dict
            ``starts`` (s) and ``p_ai`` of the scored windows, ``max``, ``mean``,
            ``most_ai_segment`` ([start, end] in s of the window with the highest P(AI)),
            ``n_windows`` (all windows) and ``n_skipped`` (windows left out).

        Raises
        ------
        AudioError
            Not one window is usable (the message gives the first window's reason).
        """
        width = int(self.frontend.duration * sr)
        hop = int((hop_seconds or self.frontend.duration / 2) * sr)
        starts = list(range(0, max(len(y) - width, 0) + 1, hop))
        if len(y) > width and starts[-1] + width < len(y):
            starts.append(len(y) - width)
        mels, used, problems = [], [], []
        for s in starts:
            try:
                mels.append(mel_db(prepare_clip(y[s: s + width], sr, self.frontend, name=name),
                                   self.frontend))
                used.append(s)
            except AudioError as err:
                problems.append(err)
        if not used:
            raise AudioError(name, f"no usable window: all {len(starts)} windows were "
                             f"skipped (first: {problems[0].problem})")
        if problems:
            log.info("%s: skipped %d of %d windows (silent or unusable)", name, len(problems),
                     len(starts))
        p = predict_proba(self.model, self.run_info, np.stack(mels))
        best = int(np.argmax(p))
        seconds = [s / sr for s in used]
        return {"starts": seconds, "p_ai": p.tolist(), "max": float(p.max()),
                "mean": float(p.mean()),
                "most_ai_segment": [seconds[best], seconds[best] + self.frontend.duration],
                "n_windows": len(starts), "n_skipped": len(problems)}

    def analyze(self, audio: Audio, windows: bool = False) -> dict[str, Any]:
        """Analyse one song (a path or ``(samples, sr)``); see `analyze`."""
        name = os.fspath(audio) if not isinstance(audio, tuple) else "<audio>"
        t0 = time.perf_counter()
        if isinstance(audio, tuple):
            y, sr = np.asarray(audio[0], dtype=np.float32), int(audio[1])
            if y.ndim == 2:
                y = y.mean(axis=1)
        else:
            # The embedder reads as much as the classifier or more; decode once for both.
            seconds = None if windows else max(self.frontend.duration,
                                               getattr(self.embedder, "max_seconds", 0) or 0)
            y, sr = read_audio(audio, max_seconds=seconds)
        self._tick("decode", t0)
        result: dict[str, Any] = {"input": name}
        if windows:
            result["windows"] = self.score_windows(y, sr, name=name)
            result["p_ai"] = result["windows"]["max"]
        else:
            result["p_ai"] = self.score_audio(y, sr, name=name)
        result["threshold"] = self.threshold
        result["is_ai"] = bool(result["p_ai"] >= self.threshold)
        result["verdict"] = "looks AI-generated" if result["is_ai"] else "looks human-made"
        result["recommendations"] = []
        if result["is_ai"] or self.always_recommend:
            t0 = time.perf_counter()
            vector = self.embedder.embed_audio(y, sr)
            t0 = self._tick("embedding", t0)
            hits = self.index.search(vector[None], k=self.k,
                                     exclude_paths=[None if isinstance(audio, tuple) else
                                                    os.path.abspath(name)])[0]
            self._tick("search", t0)
            result["recommendations"] = [
                {key: (round(float(v), 4) if key == "similarity" else
                       int(v) if key == "rank" else str(v))
                 for key, v in row.items()}
                for row in hits.to_dict("records")
            ]
        return result

    def analyze_many(self, inputs: Sequence[Audio], windows: bool = False) -> list[dict]:
        """Analyse many songs; an unreadable file gives an ``error`` entry, the rest go on."""
        results = []
        for audio in inputs:
            try:
                results.append(self.analyze(audio, windows=windows))
            except AudioError as err:
                log.warning("%s", err)
                results.append({"input": os.fspath(audio) if not isinstance(audio, tuple)
                                else "<audio>", "error": str(err)})
        return results


def analyze(path_or_audio: Audio, run: str | os.PathLike, index: str | os.PathLike,
            k: int = 5, threshold: float | None = None, always_recommend: bool = False,
            windows: bool = False) -> dict[str, Any]:
    """P(AI) of one song and, if it looks AI-made, the top-K similar human tracks.

    Parameters
    ----------
    path_or_audio : path or (np.ndarray, int)
        An audio file, or decoded audio ``(samples[, channels]), sr``.
    run, index : str or path-like
        Classifier run folder and index folder.
    k : int
        Number of recommendations.
    threshold : float, optional
        Default: the run's validation-chosen threshold.
    always_recommend : bool
        Recommend even when the song looks human.
    windows : bool
        Score sliding windows over the whole song (P(AI) is then their maximum) instead of the
        first ``duration`` seconds.

    Returns
    -------
    dict
        ``input``, ``p_ai`` (calibrated), ``threshold``, ``is_ai``, ``verdict``,
        ``recommendations`` (list of rank, track_id, similarity, title, artist, genre, path)
        and, with `windows`, ``windows``.

    Examples
    --------
    >>> analyze("song.mp3", run="runs/tiny", index="runs/index", k=5)  # doctest: +SKIP
    """
    analyzer = Analyzer(run, index, k=k, threshold=threshold, always_recommend=always_recommend)
    return analyzer.analyze(path_or_audio, windows=windows)


def analyze_many(paths: Sequence[Audio], run: str | os.PathLike, index: str | os.PathLike,
                 k: int = 5, threshold: float | None = None, always_recommend: bool = False,
                 windows: bool = False) -> list[dict[str, Any]]:
    """`analyze` for many songs with the models loaded once; bad files get an ``error``."""
    analyzer = Analyzer(run, index, k=k, threshold=threshold, always_recommend=always_recommend)
    return analyzer.analyze_many(paths, windows=windows)


def format_results(results: Sequence[dict[str, Any]]) -> str:
    """A readable text table of `analyze` results, one block per song."""
    lines = []
    for r in results:
        lines.append(f"{r['input']}")
        if "error" in r:
            lines.append(f"  error: {r['error']}")
            continue
        lines.append(f"  P(AI) = {r['p_ai']:.3f}  (threshold {r['threshold']:.3f}): "
                     f"{r['verdict']}")
        if "windows" in r:
            w = r["windows"]
            skipped = (f" ({w['n_skipped']} of {w['n_windows']} windows skipped: silent or "
                       "unusable)" if w.get("n_skipped") else "")
            lines.append(f"  windows: max {w['max']:.3f}, mean {w['mean']:.3f}, most AI-like "
                         f"{w['most_ai_segment'][0]:.0f}-{w['most_ai_segment'][1]:.0f} s"
                         + skipped)
        if r["recommendations"]:
            lines.append("  similar human tracks:")
            lines.append(f"    {'#':>2}  {'similarity':>10}  {'artist':<22} {'genre':<12} title")
            for rec in r["recommendations"]:
                lines.append(f"    {rec['rank']:>2}  {rec['similarity']:>10.3f}  "
                             f"{rec['artist'][:22]:<22} {rec['genre'][:12]:<12} {rec['title']}")
        elif not r["is_ai"]:
            lines.append("  looks human: no recommendations (use --always-recommend)")
    return "\n".join(lines)


def run_demo(out_dir: str | os.PathLike = "demo_out", seed: int = 0, k: int = 5,
             n_queries: int = 3, progress: bool = True) -> dict[str, Any]:
    """The whole pipeline on the synthetic demo corpus, offline; finished stages are reused.

    Stages: write the corpus; train the ``tiny`` classifier; evaluate it on the test split;
    build the human-track index from the train/val human clips (OpenL3 when its weights are
    cached, else the ``features`` embedder, saying so); analyse held-out AI and human clips;
    write ``metrics.json``, ``recommendations.json`` and the figures.

    Parameters
    ----------
    out_dir : str or path-like
    seed : int
        Seed of the corpus and of training.
    k : int
        Recommendations per AI-looking clip.
    n_queries : int
        Held-out clips analysed per label.
    progress : bool

    Returns
    -------
    dict
        The summary also written to ``out_dir/metrics.json``.
    """
    out = Path(out_dir)
    t_start = time.perf_counter()
    synth = SynthConfig(seed=seed)
    print(f"[1/5] demo corpus -> {out / 'corpus'}")
    manifest = load_manifest(make_corpus(out / "corpus", synth, progress=progress))
    run_dir = out / "run"
    print(f"[2/5] training the tiny classifier -> {run_dir}")
    _demo_train(manifest, out, synth, seed, progress)
    print("[3/5] evaluating on the test split")
    metrics = _demo_evaluate(manifest, out, progress)
    index_dir = out / "index"
    catalog = manifest[(manifest["label"] == "human") & (manifest["split"] != "test")]
    print(f"[4/5] human-track index of {len(catalog)} clips -> {index_dir}")
    if (index_dir / "meta.json").exists():
        index = CatalogIndex.load(index_dir)
    else:
        embedder = default_embedder()
        print(f"      embedder: {embedder.name}")
        index = build_index(catalog, index_dir, embedder, label="human", progress=progress)
    print("[5/5] classify, then recommend, for held-out clips")
    test = manifest[manifest["split"] == "test"]
    results = _demo_queries(test, run_dir, index_dir, k, n_queries)
    print(format_results(results))
    write_json(out / "recommendations.json", results)

    summary = {
        "data": "synthetic demo corpus (helpers.synth), not SONICS/GTZAN",
        "corpus": synth.to_dict(),
        "classifier_test": {key: metrics.get(key) for key in (
            "n", "roc_auc", "pr_auc", "accuracy", "f1", "sensitivity", "specificity",
            "threshold", "fpr_threshold", "ece", "temperature")},
        "retrieval": _demo_retrieval(index, test[test["label"] == "ai"], k),
        "seconds": round(time.perf_counter() - t_start, 1),
    }
    write_json(out / "metrics.json", summary)
    print(f"\ndone in {summary['seconds']} s: test ROC-AUC "
          f"{summary['classifier_test']['roc_auc']}, figures in {run_dir / 'eval_test'}, "
          f"results in {out / 'metrics.json'} and {out / 'recommendations.json'}")
    return summary


def _demo_train(manifest: pd.DataFrame, out: Path, synth: SynthConfig, seed: int,
                progress: bool) -> None:
    """Train the demo's tiny classifier in ``out/run``, unless a finished run is there."""
    run_dir = out / "run"
    if (run_dir / "run.json").exists():
        print("      (finished run found, reused)")
        return
    train(manifest, run_dir, preset="tiny", train_config=TrainConfig(seed=seed),
          cache_dir=out / "cache", resume=(run_dir / "last.pt").exists(), progress=progress,
          frontend=FrontEndConfig(duration=synth.duration))


def _demo_evaluate(manifest: pd.DataFrame, out: Path, progress: bool) -> dict[str, Any]:
    """Test-split metrics of the demo run (read back when already computed)."""
    run_dir = out / "run"
    eval_dir = run_dir / "eval_test"
    if (eval_dir / "metrics.json").exists():
        return read_json(eval_dir / "metrics.json")
    return evaluate(run_dir, manifest, split="test", out_dir=eval_dir, cache_dir=out / "cache",
                    progress=progress)


def _demo_queries(test: pd.DataFrame, run_dir: Path, index_dir: Path, k: int,
                  n_queries: int) -> list[dict[str, Any]]:
    """`Analyzer` results for the first held-out AI and human clips, with their truth."""
    queries = [*test[test["label"] == "ai"]["path"].head(n_queries),
               *test[test["label"] == "human"]["path"].head(n_queries)]
    results = Analyzer(run_dir, index_dir, k=k).analyze_many(queries)
    truth = dict(zip(test["path"], test["label"], strict=True))
    genre = dict(zip(test["path"], test["genre"], strict=True))
    for r in results:
        r["true_label"], r["true_style"] = truth[r["input"]], genre[r["input"]]
    return results


def _demo_retrieval(index: CatalogIndex, ai_test: pd.DataFrame, k: int) -> dict[str, Any]:
    """Style consistency of the index: leave-one-out, and AI clips as queries."""
    return {
        "embedder": index.embedder_config.get("name"),
        "style_loo": {
            "all_neighbours": leave_one_out(index, k=k),
            "same_artist_excluded": leave_one_out(index, k=k, exclude_same_artist=True),
        },
        "ai_query_style_precision": ai_query_precision(index, index.embedder(), ai_test, k=k),
    }
