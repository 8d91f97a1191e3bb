"""Classify, then recommend: the product users run.

`Analyzer` loads a human-track index (Model 2) and, optionally, a classifier run (Model 1)
once and answers, for each song: without a run, its top-K most similar human tracks; with a
run, its calibrated P(AI), the decision at the run's threshold, and, when the song looks
AI-made, the top-K tracks. A run only judges music like its training data: a demo-trained run
judges no real song, and a song out of the run's distribution is "cannot judge", never "AI".
Each file is decoded once; the classifier and the embedder both work from that audio.
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
from helpers.ood import OODCheck
from helpers.retrieval import ai_query_precision, leave_one_out
from helpers.run import load_run, predict_proba, training_data
from helpers.synth import SynthConfig, make_corpus
from helpers.train import TrainConfig, train

log = logging.getLogger(__name__)

Audio = str | os.PathLike | tuple[np.ndarray, int]

#: The verdicts users read (``verdict`` in each result).
VERDICT_AI = "looks AI-generated"
VERDICT_HUMAN = "looks human-made"
VERDICT_DEMO = "demo model: cannot judge real music"
VERDICT_OOD = "cannot judge: unlike the clips the classifier trained on"
VERDICT_NO_RUN = "not classified (no classifier run)"

#: How `Analyzer.score_windows` combines the windows' P(AI) into the song's. Not the maximum:
#: the run's threshold was chosen on single clips, and the maximum of n windows crosses it far
#: more often than one clip does (a human song's false-positive rate grows with its length).
#: The median is a typical window, distributed like a single clip for a song made one way
#: throughout, and a few odd windows (an intro, a break) cannot decide it. The maximum stays
#: in the output, with the most AI-like segment, for songs that are AI-made only in part.
WINDOW_AGGREGATE = "median"


class Analyzer:
    """Recommend human tracks from an index; with a classifier run, score P(AI) first.

    Without a run this is a similarity search: every song gets its top-K human tracks. With a
    run, each song gets its calibrated P(AI) and a verdict, and recommendations when it looks
    AI-made (or always, with `always_recommend`, or when the classifier cannot judge it).

    The classifier cannot judge a song unlike its training data: a run trained on the
    synthetic demo corpus judges no file outside that corpus (one warning per `Analyzer`), and
    a run with an out-of-distribution check (`helpers.ood.OODCheck`) judges no song whose
    audio descriptors lie beyond the check's threshold. ``is_ai`` is then None and the
    verdict says so.

    Parameters
    ----------
    run : str or path-like, optional
        A finished classifier run folder (`helpers.train.train`); None recommends only.
    index : str or path-like
        An index folder (`helpers.index.build_index`). Required.
    k : int
        Recommendations per song.
    threshold : float, optional
        Decision threshold on the calibrated P(AI); default the run's validation choice.
    always_recommend : bool
        Recommend for human-looking songs too.
    device : str, optional
        Torch device for the classifier; default CPU.
    embedder_overrides : dict, optional
        Runtime arguments for the index's embedder (``device``, ``weights``, ``run_dir``).

    Raises
    ------
    ValueError
        No index, or a `threshold` without a run.
    """

    def __init__(
        self,
        run: str | os.PathLike | None = None,
        index: str | os.PathLike | None = None,
        k: int = 5,
        threshold: float | None = None,
        always_recommend: bool = False,
        device: str | None = None,
        embedder_overrides: dict[str, Any] | None = None,
    ) -> None:
        if index is None:
            raise ValueError("an index folder is needed (build one with `python -m helpers "
                             "index` or helpers.index.build_index)")
        if run is None and threshold is not None:
            raise ValueError("a P(AI) threshold needs a classifier run (--run)")
        self.run_dir = None if run is None else Path(run)
        self.model, self.run_info, self.frontend, self.ood = None, None, None, None
        self.trained_on: dict[str, Any] | None = None
        self.threshold: float | None = None
        if run is not None:
            self.model, self.run_info = load_run(run, device=device)
            self.frontend = FrontEndConfig.from_dict(self.run_info["frontend"])
            self.threshold = float(self.run_info["threshold"] if threshold is None
                                   else threshold)
            self.ood = OODCheck.load(run, self.run_info)
            self.trained_on = training_data(run, self.run_info)
        self.index = CatalogIndex.load(index)
        self.embedder = self.index.embedder(**(embedder_overrides or {})).for_queries()
        self.k = k
        self.always_recommend = always_recommend
        self.timings: dict[str, float] = {}
        self._warned_demo = False

    def _tick(self, stage: str, t0: float) -> float:
        now = time.perf_counter()
        self.timings[stage] = self.timings.get(stage, 0.0) + now - t0
        return now

    def _require_run(self) -> None:
        if self.model is None:
            raise ValueError("scoring P(AI) needs a classifier run; this Analyzer has none")

    def _clip_mels(self, y: np.ndarray, sr: int, name: str | os.PathLike) -> np.ndarray:
        """dB mel of the first ``duration`` seconds, ``(1, n_mels, frames)``."""
        t0 = time.perf_counter()
        mel = mel_db(prepare_clip(y, sr, self.frontend, name=name), self.frontend)
        self._tick("front_end", t0)
        return mel[None]

    def _p_ai(self, mels: np.ndarray) -> np.ndarray:
        """Calibrated P(AI) ``(n,)`` of dB mels ``(n, n_mels, frames)``."""
        t0 = time.perf_counter()
        p = predict_proba(self.model, self.run_info, mels)
        self._tick("classifier", t0)
        return p

    def _ood_distances(self, clips: Sequence[np.ndarray], sr: int) -> list[float] | None:
        """`helpers.ood.OODCheck` distance of each clip; None when the run has no check."""
        if self.ood is None:
            return None
        t0 = time.perf_counter()
        distances = [self.ood.audio_distance(clip, sr) for clip in clips]
        self._tick("ood", t0)
        return distances

    def score_audio(self, y: np.ndarray, sr: int, name: str | os.PathLike = "<audio>") -> float:
        """Calibrated P(AI) of the first ``duration`` seconds of decoded audio."""
        self._require_run()
        return float(self._p_ai(self._clip_mels(y, sr, name))[0])

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
            ``starts`` (s) and ``p_ai`` of the scored windows; ``aggregate`` (how the song's
            P(AI) is made: `WINDOW_AGGREGATE`) and ``p_song`` (that value); ``max``,
            ``median``, ``mean``; ``most_ai_segment`` ([start, end] in s of the window with
            the highest P(AI)); ``n_windows`` (all windows) and ``n_skipped`` (left out);
            ``ood_distance`` per window (the run's `helpers.ood.OODCheck`; None without one).

        Raises
        ------
        AudioError
            Not one window is usable (the message gives the first window's reason).
        """
        self._require_run()
        width = int(self.frontend.duration * sr)
        hop = int((hop_seconds or self.frontend.duration / 2) * sr)
        starts = list(range(0, max(len(y) - width, 0) + 1, hop))
        if len(y) > width and starts[-1] + width < len(y):
            starts.append(len(y) - width)
        mels, used, problems = [], [], []
        t0 = time.perf_counter()
        for s in starts:
            try:
                mels.append(mel_db(prepare_clip(y[s: s + width], sr, self.frontend, name=name),
                                   self.frontend))
                used.append(s)
            except AudioError as err:
                problems.append(err)
        self._tick("front_end", t0)
        if not used:
            raise AudioError(name, f"no usable window: all {len(starts)} windows were "
                             f"skipped (first: {problems[0].problem})")
        if problems:
            log.info("%s: skipped %d of %d windows (silent or unusable)", name, len(problems),
                     len(starts))
        p = self._p_ai(np.stack(mels))
        distance = self._ood_distances([y[s: s + width] for s in used], sr)
        best = int(np.argmax(p))
        seconds = [s / sr for s in used]
        return {"starts": seconds, "p_ai": p.tolist(), "aggregate": WINDOW_AGGREGATE,
                "p_song": float(np.median(p)), "max": float(p.max()),
                "median": float(np.median(p)), "mean": float(p.mean()),
                "most_ai_segment": [seconds[best], seconds[best] + self.frontend.duration],
                "n_windows": len(starts), "n_skipped": len(problems),
                "ood_distance": distance}

    def _decode(self, audio: Audio, windows: bool) -> tuple[str, np.ndarray, int]:
        """The input's name and its decoded mono samples (as much as both models need)."""
        name = os.fspath(audio) if not isinstance(audio, tuple) else "<audio>"
        t0 = time.perf_counter()
        if isinstance(audio, tuple):
            y, sr = np.asarray(audio[0], dtype=np.float32), int(audio[1])
            if y.ndim == 2:
                y = y.mean(axis=1)
        else:
            # The embedder reads as much as the classifier or more; decode once for both.
            policy_seconds = self.embedder.policy.read_seconds  # None: the policy needs it all
            needed = [policy_seconds or 0]
            if self.frontend is not None:
                needed.append(self.frontend.duration)
            whole = windows or policy_seconds is None
            y, sr = read_audio(audio, max_seconds=None if whole else max(needed))
        self._tick("decode", t0)
        return name, y, sr

    def _in_demo_corpus(self, audio: Audio) -> bool:
        """Whether `audio` is a file inside the demo corpus the run trained on."""
        root = (self.trained_on or {}).get("corpus_root")
        if root is None or isinstance(audio, tuple):
            return False
        return Path(os.path.realpath(audio)).is_relative_to(os.path.realpath(root))

    def _warn_demo_once(self) -> None:
        """Say once per Analyzer (so once per command) why demo verdicts are withheld."""
        if not self._warned_demo:
            self._warned_demo = True
            log.warning("the classifier run %s was trained only on the synthetic demo corpus "
                        "(%s): its P(AI) means nothing for any other audio, so such files are "
                        "not judged. Train on real data (e.g. SONICS) to judge real music, or "
                        "leave the run out to only recommend.", self.run_dir,
                        self.trained_on.get("corpus_root"))

    def classify(self, audio: Audio, y: np.ndarray, sr: int, windows: bool = False
                 ) -> dict[str, Any]:
        """P(AI), the OOD check and the verdict of one decoded song (see `analyze`)."""
        self._require_run()
        name = os.fspath(audio) if not isinstance(audio, tuple) else "<audio>"
        out: dict[str, Any] = {}
        if windows:
            w = out["windows"] = self.score_windows(y, sr, name=name)
            p = w["p_song"]
            distance = None if w["ood_distance"] is None else float(np.median(
                w["ood_distance"]))
        else:
            p = float(self._p_ai(self._clip_mels(y, sr, name))[0])
            distance = None if self.ood is None else self._ood_distances([y], sr)[0]
        ood = None if distance is None else {"distance": distance,
                                             "threshold": self.ood.threshold,
                                             "out_of_distribution": distance > self.ood.threshold}
        demo_outside = (self.trained_on["kind"] == "synthetic-demo"
                        and not self._in_demo_corpus(audio))
        if demo_outside:
            self._warn_demo_once()
        if demo_outside or (ood is not None and ood["out_of_distribution"]):
            is_ai, verdict = None, VERDICT_DEMO if demo_outside else VERDICT_OOD
        else:
            is_ai = p >= self.threshold
            verdict = VERDICT_AI if is_ai else VERDICT_HUMAN
        return {"p_ai": p, "threshold": self.threshold, "is_ai": is_ai, "verdict": verdict,
                "trained_on": self.trained_on["kind"], "ood": ood, **out}

    def recommend(self, audio: Audio, y: np.ndarray, sr: int,
                  windows: bool = False) -> list[dict[str, Any]]:
        """The top-K human tracks for one decoded song (never the song itself).

        The song is embedded under the index's audio policy: its catalog excerpt, or with
        `windows` the mean of its windows' vectors (`helpers.embed.Embedder.embed_windows`).
        """
        t0 = time.perf_counter()
        vector = (self.embedder.embed_windows(y, sr)[0] if windows
                  else self.embedder.embed_audio(y, sr))
        t0 = self._tick("embedding", t0)
        hits = self.index.search(vector[None], k=self.k,
                                 exclude_paths=[None if isinstance(audio, tuple) else
                                                os.path.abspath(audio)])[0]
        self._tick("search", t0)
        return [{key: (round(float(v), 4) if key == "similarity" else
                       int(v) if key == "rank" else str(v))
                 for key, v in row.items()}
                for row in hits.to_dict("records")]

    def analyze(self, audio: Audio, windows: bool = False) -> dict[str, Any]:
        """Analyse one song (a path or ``(samples, sr)``); see `analyze`."""
        if windows:
            self._require_run()
        name, y, sr = self._decode(audio, windows)
        result: dict[str, Any] = {"input": name}
        if self.model is None:
            result.update(p_ai=None, threshold=None, is_ai=None, verdict=VERDICT_NO_RUN)
        else:
            result.update(self.classify(audio, y, sr, windows=windows))
        # Only a confident "human" withholds recommendations: without a run, or when the
        # classifier cannot judge, the similarity search is still what the user asked for.
        wanted = result["is_ai"] is not False or self.always_recommend
        result["recommendations"] = (self.recommend(audio, y, sr, windows=windows) if wanted
                                     else [])
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


def analyze(path_or_audio: Audio, run: str | os.PathLike | None = None,
            index: str | os.PathLike | None = None, k: int = 5,
            threshold: float | None = None, always_recommend: bool = False,
            windows: bool = False) -> dict[str, Any]:
    """The top-K similar human tracks of one song and, with a classifier run, its P(AI).

    Parameters
    ----------
    path_or_audio : path or (np.ndarray, int)
        An audio file, or decoded audio ``(samples[, channels]), sr``.
    run : str or path-like, optional
        Classifier run folder. None: no P(AI), recommendations only (similarity search).
    index : str or path-like
        Index folder (required).
    k : int
        Number of recommendations.
    threshold : float, optional
        Default: the run's validation-chosen threshold.
    always_recommend : bool
        Recommend even when the song looks human.
    windows : bool
        Score sliding windows over the whole song (P(AI) is then their median, see
        `WINDOW_AGGREGATE`) instead of the first ``duration`` seconds. Needs a run.

    Returns
    -------
    dict
        ``input``, ``p_ai`` (calibrated; None without a run), ``threshold``, ``is_ai`` (None
        without a run or when the classifier cannot judge the song), ``verdict``,
        ``recommendations`` (list of rank, track_id, similarity, title, artist, genre, path);
        with a run also ``trained_on`` (the kind of data it learned from) and ``ood``
        (``distance``, ``threshold``, ``out_of_distribution``; None for runs without the
        check); with `windows`, ``windows``.

    Examples
    --------
    >>> analyze("song.mp3", index="runs/index", k=5)  # doctest: +SKIP
    >>> analyze("song.mp3", run="runs/tiny", index="runs/index", k=5)  # doctest: +SKIP
    """
    analyzer = Analyzer(run, index, k=k, threshold=threshold, always_recommend=always_recommend)
    return analyzer.analyze(path_or_audio, windows=windows)


def analyze_many(paths: Sequence[Audio], run: str | os.PathLike | None = None,
                 index: str | os.PathLike | None = None, k: int = 5,
                 threshold: float | None = None, always_recommend: bool = False,
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
        lines.append(_verdict_line(r))
        if "windows" in r:
            w = r["windows"]
            skipped = (f" ({w['n_skipped']} of {w['n_windows']} windows skipped: silent or "
                       "unusable)" if w.get("n_skipped") else "")
            lines.append(f"  windows: P(AI) is the {w['aggregate']} of {len(w['p_ai'])} "
                         f"windows (max {w['max']:.3f}, mean {w['mean']:.3f}), most AI-like "
                         f"{w['most_ai_segment'][0]:.0f}-{w['most_ai_segment'][1]:.0f} s"
                         + skipped)
        if r["recommendations"]:
            lines.append("  similar human tracks:")
            lines.append(f"    {'#':>2}  {'similarity':>10}  {'artist':<22} {'genre':<12} title")
            for rec in r["recommendations"]:
                lines.append(f"    {rec['rank']:>2}  {rec['similarity']:>10.3f}  "
                             f"{rec['artist'][:22]:<22} {rec['genre'][:12]:<12} {rec['title']}")
        elif r["is_ai"] is False:
            lines.append("  looks human: no recommendations (use --always-recommend)")
    return "\n".join(lines)


def _verdict_line(r: dict[str, Any]) -> str:
    """The P(AI) line of one result; a P(AI) the run cannot vouch for is marked as such."""
    if r["p_ai"] is None:
        return f"  {r['verdict']}"
    ood = r.get("ood")
    unlike = (f"; {ood['distance']:.3f} from the training clips, limit {ood['threshold']:.3f}"
              if ood and ood["out_of_distribution"] else "")
    if r["is_ai"] is None:
        return f"  P(AI) = {r['p_ai']:.3f} (meaningless here): {r['verdict']}{unlike}"
    return f"  P(AI) = {r['p_ai']:.3f}  (threshold {r['threshold']:.3f}): {r['verdict']}"


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
