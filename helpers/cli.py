"""Command line: ``python -m helpers <command> --help`` explains each stage.

Stages, in the order data flows::

    download    SONICS / GTZAN via kagglehub  -> manifest.csv
    synth       the built-in demo corpus      -> audio files + manifest.csv
    preprocess  manifest -> feature cache (mel spectrograms)
    train       manifest -> run folder (Model 1, the AI-vs-human classifier)
    evaluate    run + manifest -> metrics.json, predictions.csv, figures
    index       manifest (human songs) -> index folder (Model 2's catalog)
    weights     the official OpenL3 weights   -> local cache (for --embedder openl3)
    recommend   audio files + index [+ run] -> top-K similar human tracks [and P(AI)]
    demo        all of the above on the demo corpus, offline

Each command imports the stage it runs inside its function: those modules bring torch,
librosa, pandas or faiss (seconds), and ``--help`` should answer at once.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from helpers.config import FrontEndConfig

if TYPE_CHECKING:
    from helpers.train import TrainConfig

EPILOG = ("Data flows: download/synth (or twins of your own music) -> preprocess -> train -> "
          "evaluate; index -> recommend.")

#: Commands that run librosa's numba kernels in this process: numba's on-disk cache is checked
#: (and repaired) and the kernels compiled under a lock first, see `helpers.jit`.
_USES_KERNELS = ("index", "recommend", "demo", "twins")


def _add_frontend_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("front end (must match between preprocess, train and evaluate)")
    g.add_argument("--duration", type=float, default=None,
                   help="seconds read from the start of each file (default 30)")
    g.add_argument("--sample-rate", type=int, default=None, help="Hz (default 16000)")
    g.add_argument("--n-fft", type=int, default=None,
                   help="FFT and window length in samples (default 2048: 128 ms at 16 kHz)")
    g.add_argument("--hop-length", type=int, default=None,
                   help="samples between frames (default 512: 32 ms at 16 kHz). "
                        "--n-fft 1024 --hop-length 256 halves both, the finer time "
                        "resolution benchmarks/recipe_validation measured")
    g.add_argument("--codec", choices=["none", "mp3"], default=None,
                   help="confound control: pass every clip through the same MP3 round trip "
                        "so the classifier cannot tell sources apart by file format")
    g.add_argument("--codec-kbps", type=int, default=None,
                   help="bitrate of that round trip (default 24; keep it below the "
                        "bitrate of the lossiest source)")


def _frontend(args: argparse.Namespace) -> FrontEndConfig | None:
    overrides = {}
    if args.duration is not None:
        overrides["duration"] = args.duration
    if args.sample_rate is not None:
        overrides["sample_rate"] = args.sample_rate
    if args.codec is not None:
        overrides["codec"] = None if args.codec == "none" else args.codec
    if args.codec_kbps is not None:
        overrides["codec_bitrate_kbps"] = args.codec_kbps
    if args.n_fft is not None:
        overrides["n_fft"] = overrides["win_length"] = args.n_fft
    if args.hop_length is not None:
        overrides["hop_length"] = args.hop_length
    # No flags: let the stage choose (an existing cache's frontend.json, else the defaults).
    return FrontEndConfig(**overrides) if overrides else None


def cmd_download(args: argparse.Namespace) -> int:
    from helpers.sources import DiskSpaceError, download

    try:
        path = download(args.dataset, args.out, limit=args.limit, fetch_human=args.fetch_human,
                        seed=args.seed, cache_dir=args.cache_dir,
                        min_duration=args.min_duration,
                        drop_instrumental=args.drop_instrumental,
                        youtube_cookies=args.youtube_cookies)
    except DiskSpaceError as err:
        print(f"not downloading: {err}", file=sys.stderr)
        return 1
    print(f"manifest written: {path}")
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from helpers.synth import SynthConfig, make_corpus

    config = SynthConfig(n_per_style_per_label=args.per_style, seed=args.seed)
    manifest = make_corpus(args.out, config)
    print(f"demo corpus written: {manifest}")
    return 0


def cmd_preprocess(args: argparse.Namespace) -> int:
    from helpers.cache import preprocess
    from helpers.datasets import load_manifest

    manifest = load_manifest(args.manifest)
    report = preprocess(manifest, args.cache, _frontend(args), n_jobs=args.jobs,
                        chunk_size=args.chunk_size)
    print(json.dumps(report, indent=2))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from helpers.train import TrainConfig, train

    overrides = {}
    if args.epochs is not None:
        overrides["epochs"] = args.epochs
    if args.batch_size is not None:
        overrides["batch_size"] = args.batch_size
    if args.seed is not None:
        overrides["seed"] = args.seed
    if args.crop_seconds is not None:
        overrides["crop_seconds"] = args.crop_seconds
    if args.crops_per_clip is not None:
        overrides["crops_per_clip"] = args.crops_per_clip
    # On --resume without flags, keep the run's own settings (train refuses changed ones).
    config = None if args.resume and not overrides else TrainConfig(**overrides)
    manifest = args.manifest
    augment = args.augment
    if augment is None:  # the preset's default
        augment = DEFAULT_AUGMENT[args.preset]
        if args.resume and not (Path(args.out) / "augmented" / "manifest.csv").exists():
            augment = 0  # a run made without copies resumes as it was made
    if augment:
        manifest = _augmented(args, augment, config or TrainConfig())
    preset = args.preset
    if args.input_norm is not None:  # a resumed run keeps its own model settings anyway
        from helpers.model import PRESETS

        preset = replace(PRESETS[args.preset], input_norm=args.input_norm)
    run = train(manifest, args.out, preset=preset, train_config=config,
                cache_dir=args.cache, resume=args.resume, frontend=_frontend(args))
    print(f"run written: {run}")
    return 0


#: ``train --augment`` when not given, per preset: one copy for ``tiny`` (the recipe
#: `benchmarks.recipe_validation` adopted; measured in `benchmarks.recipe_protocol`), none for
#: ``base``, whose data (SONICS) is large enough that copies cost disk, not robustness.
DEFAULT_AUGMENT = {"tiny": 1, "base": 0}


def _augment_copies(text: str) -> int:
    """``--augment``: 0 up to one copy per perturbation of `TRAIN_AUGMENT`."""
    from helpers.perturb import TRAIN_AUGMENT

    try:
        n = int(text)
    except ValueError:
        n = -1
    if not 0 <= n <= len(TRAIN_AUGMENT):
        raise argparse.ArgumentTypeError(
            f"expected a whole number from 0 to {len(TRAIN_AUGMENT)} (copies per training "
            f"clip, each with a different perturbation), got {text!r}")
    return n


def _augmented(args: argparse.Namespace, copies: int, config: TrainConfig) -> Path:
    """``RUN/augmented/manifest.csv``: the manifest plus `copies` perturbed copies of each
    training clip (validation carved first, by track, so no copy of a validation song is
    trained on). Only the front end's clip (plus what a perturbation consumes) is copied.
    Copies already there are reused, so --resume does not redo them."""
    from helpers.datasets import load_manifest
    from helpers.perturb import EXTRA_SECONDS, TRAIN_AUGMENT, perturbed_manifest

    out = Path(args.out) / "augmented"
    if args.resume and (out / "manifest.csv").exists():
        return out / "manifest.csv"  # the run's own copies (drawn with the run's seed)
    manifest = load_manifest(args.manifest)  # a bad one is reported before anything else
    print(f"augment: {copies} perturbed cop{'y' if copies == 1 else 'ies'} per training "
          f"clip, drawn from {', '.join(TRAIN_AUGMENT)} (--augment 0: none)", file=sys.stderr)
    # the faster stretch reads 10 % more, the intro trim EXTRA_SECONDS more
    seconds = (args.duration or FrontEndConfig().duration) * 1.1 + EXTRA_SECONDS
    return perturbed_manifest(manifest, out, perturbations=list(TRAIN_AUGMENT),
                              copies=copies, seed=config.seed,
                              val_fraction=config.val_fraction, max_seconds=seconds)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from helpers.evaluate import evaluate

    metrics = evaluate(args.run, args.manifest, split=args.split, out_dir=args.out,
                       cache_dir=args.cache)
    keys = ("accuracy", "f1", "roc_auc", "pr_auc", "sensitivity", "specificity")
    print(json.dumps({k: metrics.get(k) for k in keys}, indent=2))
    return 0


def cmd_index(args: argparse.Namespace) -> int:
    from helpers.datasets import load_manifest
    from helpers.embed import default_embedder, make_embedder
    from helpers.index import build_index

    # a plain folder of audio is a catalog as it stands: its files take --label
    manifest = load_manifest(args.manifest, folder_label="ai" if args.label == "ai" else "human")
    # the audio policy: which seconds of each song (catalog and queries alike)
    policy = {"max_seconds": None if args.seconds == 0 else args.seconds,
              "position": args.excerpt}
    openl3_options = {"precision": args.precision}
    if args.query_hop is not None:
        openl3_options["query_hop_size"] = args.query_hop
    if args.embedder == "auto":
        embedder = default_embedder(**policy, openl3_options=openl3_options)
    elif args.embedder == "classifier":
        if not args.run:
            raise SystemExit("--embedder classifier needs --run RUN")
        embedder = make_embedder("classifier", run_dir=args.run)  # the run's own clip
    else:
        extra = openl3_options if args.embedder == "openl3" else {}
        embedder = make_embedder(args.embedder, **policy, **extra)
    label = None if args.label == "all" else args.label  # build_index: None keeps every row
    index_type = "hnsw" if args.hnsw else "flat" if args.flat else "auto"
    index = build_index(manifest, args.out, embedder, label=label, index_type=index_type,
                        checkpoint_every=args.checkpoint_every)
    search = ("exact search" if index.index_type == "flat"
              else f"HNSW, efSearch {index.ef_search}")
    print(f"index written: {args.out} ({len(index)} tracks, embedder {embedder.name}, audio: "
          f"{embedder.policy.describe()}, {search})")
    return 0


def cmd_weights(args: argparse.Namespace) -> int:
    from helpers.openl3 import fetch_weights, install_weights

    if args.source:
        got = install_weights(args.source, args.input_repr, args.content_type,
                              cache_dir=args.cache_dir, embedding_size=args.embedding_size)
    else:
        got = fetch_weights(args.input_repr, args.content_type, cache_dir=args.cache_dir)
    print(f"openl3 {args.input_repr}/{args.content_type} weights installed: {got.path}\n"
          f"  checked: {got.verified}")
    return 0


def cmd_recommend(args: argparse.Namespace) -> int:
    from helpers.audio import AudioError
    from helpers.pipeline import Analyzer, format_results

    if args.run is None and (args.windows or args.threshold is not None):
        raise ValueError("--windows and --threshold score P(AI): they need --run RUN")
    analyzer = Analyzer(args.run, args.index, k=args.k, threshold=args.threshold,
                        always_recommend=args.always_recommend)
    results = []
    for path in _audio_inputs(args.audio):
        # Not `analyze_many`: it also logs each bad file, and the results printed below
        # already say why each one failed; the message should appear once.
        try:
            results.append(analyzer.analyze(path, windows=args.windows))
        except AudioError as err:
            results.append({"input": path, "error": str(err)})
    print(json.dumps(results, indent=2) if args.json else format_results(results))
    n_failed = sum("error" in r for r in results)
    if n_failed:  # the others were analysed; a script still learns that some were not
        print(f"error: {n_failed} of {len(results)} file(s) could not be read (reasons "
              "above)", file=sys.stderr)
        return 1
    return 0


def _audio_inputs(paths: list[str]) -> list[str]:
    """The files to analyse: each path as given, a folder replaced by its audio files
    (recursively, sorted). A folder without audio stays, so its error is reported."""
    from helpers.datasets import list_audio

    out = []
    for path in paths:
        found = list_audio(path) if os.path.isdir(path) else []
        out.extend([str(p) for p in found] or [path])
    return out


def cmd_demo(args: argparse.Namespace) -> int:
    from helpers.pipeline import run_demo

    run_demo(args.out, seed=args.seed, k=args.k)
    return 0


def _add_download(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "download", help="download SONICS/GTZAN with kagglehub, write a manifest",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Download a dataset with kagglehub (credentials from Colab secrets,\n"
        "KAGGLE_USERNAME/KAGGLE_KEY, or ~/.kaggle/kaggle.json) and write OUT/manifest.csv.\n\n"
        "SONICS: fake_songs.csv comes first; the subset is chosen from it, the disk it needs\n"
        "is printed and checked, and only the chosen MP3s are fetched, one file each (all of\n"
        "SONICS is tens of GB). Files already in the cache are not fetched again, so running\n"
        "the same command after an interruption resumes. GTZAN comes whole (~1.2 GB, about\n"
        "2.6 GB while it is unpacked).\n\n"
        "Disk (SONICS MP3, upper bounds; plus GTZAN's 1.2 GB): --limit 100 takes ~210 SONICS\n"
        "songs, ~1 GB; with GTZAN as the human class, --limit 443 or more takes all of its\n"
        "930 clean clips and as many SONICS songs, ~6 GB. The estimate for the actual subset\n"
        "is printed, and checked against the free space, before the audio is downloaded.",
    )
    p.add_argument("--dataset", choices=["sonics", "gtzan", "sonics+gtzan"],
                   default="sonics+gtzan", help="sonics+gtzan: SONICS AI songs vs GTZAN human "
                   "songs (default; SONICS ships its human songs only as YouTube ids)")
    p.add_argument("--out", default="data", help="folder for manifest.csv (default: data)")
    p.add_argument("--limit", type=int, default=None,
                   help="at most N training clips per class, val/test per class in "
                   "proportion, classes equal in every split (the smaller class sets the "
                   "count; a warning names it). Default: everything (SONICS alone is tens "
                   "of GB, more than a free Colab disk)")
    p.add_argument("--cache-dir", default=None,
                   help="kagglehub's cache, where the audio lands (sets KAGGLEHUB_CACHE; "
                   "default ~/.cache/kagglehub). On Colab, a Google Drive folder keeps it "
                   "across sessions")
    p.add_argument("--min-duration", type=float, default=30.0,
                   help="leave out SONICS songs shorter than this many seconds (default 30, "
                   "SONICS' own filter; shorter songs get zero-padded, and the silence "
                   "becomes a label cue); 0 keeps all")
    p.add_argument("--drop-instrumental", action="store_true",
                   help="leave out SONICS songs flagged no_vocal, as SONICS' split code does "
                   "(off by default: GTZAN is partly instrumental, so dropping only AI "
                   "instrumentals would make vocals a label cue)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the subset (the same seed picks the same files)")
    p.add_argument("--fetch-human", action="store_true",
                   help="also fetch SONICS human songs from YouTube with yt-dlp (slow, "
                   "optional; needs ffmpeg and deno; blocked ids are retried on the next run)")
    p.add_argument("--youtube-cookies", default=None, metavar="FILE",
                   help="cookies.txt of a logged-in browser for yt-dlp, when YouTube asks "
                   "to sign in or confirm you are not a bot")
    p.set_defaults(func=cmd_download)


def _add_synth(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("synth", help="write the built-in synthetic demo corpus",
                       description="Write the demo corpus (6 styles, human and 'AI' clips with "
                       "Griffin-Lim and upsampling artifacts) as audio files plus manifest.csv.")
    p.add_argument("--out", default="data/demo", help="output folder (default: data/demo)")
    p.add_argument("--per-style", type=int, default=12,
                   help="clips per style and label (default 12: 144 clips)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_synth)


def _add_preprocess(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("preprocess", help="compute the feature cache (resumable, parallel)",
                       description="Compute the dB mel spectrogram of every file in a manifest "
                       "into a cache folder. Re-running resumes and tries unreadable files "
                       "again; those still unreadable are listed in CACHE/failures.csv and "
                       "skipped. A second preprocess on the same cache waits for the first.")
    p.add_argument("--manifest", required=True,
                   help="manifest CSV, or a folder with ai/ and human/ subfolders")
    p.add_argument("--cache", required=True, help="cache folder")
    p.add_argument("--jobs", type=int, default=None, help="worker processes (default: all cores)")
    p.add_argument("--chunk-size", type=int, default=32, help="clips per shard (default 32)")
    _add_frontend_args(p)
    p.set_defaults(func=cmd_preprocess)


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train Model 1, the AI-vs-human classifier",
                       description="Train the spectro-temporal transformer. Preprocesses into "
                       "a cache when needed; --resume continues an interrupted run.")
    p.add_argument("--manifest", required=True)
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--preset", default="tiny", choices=["tiny", "base"],
                   help="tiny: CPU-sized; base: SpecTTTra-sized, for a GPU")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--crop-seconds", type=float, default=None, metavar="S",
                   help="train on random S-second windows of each clip and score a clip as "
                        "the mean of its windows (default 10; 0 = whole clips)")
    p.add_argument("--crops-per-clip", type=int, default=None, metavar="N",
                   help="random windows per clip per epoch (default 3)")
    p.add_argument("--augment", type=_augment_copies, default=None, metavar="N",
                   help="before training, write N perturbed copies of each training clip's "
                        "first seconds (pitch +-1/2 semitones, MP3 128k, Opus 64k, noise at "
                        "20/30 dB; under RUN/augmented) and train on them too. Default: 1 "
                        "with --preset tiny (chosen on validation composers, "
                        "benchmarks/recipe_validation: more robust to MP3 and pitch shift), "
                        "0 with base (meant for SONICS-sized data, where the copies would "
                        "need as much disk again); 0 turns it off")
    p.add_argument("--input-norm", choices=["clip", "band"], default=None,
                   help="clip (default): each window to zero mean, unit variance; band: each "
                        "mel band's mean over the window removed first, so a composer's "
                        "average timbre and mix are not in the input (fewer false alarms on "
                        "unseen composers: benchmarks/recipe_validation), nor any static "
                        "spectral trace of a generator, such as upsampling images "
                        "(benchmarks/input_norm_synthetic)")
    p.add_argument("--cache", default=None, help="feature cache folder (default: RUN/cache)")
    p.add_argument("--resume", action="store_true", help="continue from RUN's last checkpoint")
    _add_frontend_args(p)
    p.set_defaults(func=cmd_train)


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="metrics, predictions and figures of a run",
                       description="Evaluate a run on a split: metrics.json, predictions.csv "
                       "and figures (ROC, PR, confusion, histograms, reliability).")
    p.add_argument("--run", required=True)
    p.add_argument("--manifest", required=True)
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--out", default=None, help="output folder (default: RUN/eval_<split>)")
    p.add_argument("--cache", default=None)
    p.set_defaults(func=cmd_evaluate)


def _add_index(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("index", help="build the human-track index (Model 2)",
                       description="Embed the human tracks of a manifest and store a cosine "
                       "index. Resumable; adding tracks to an index embeds only the new ones.")
    p.add_argument("--manifest", required=True,
                   help="manifest CSV, a folder with manifest.csv or ai/ and human/, or a "
                        "plain folder of audio files (all indexed, as human music)")
    p.add_argument("--out", required=True, help="index folder")
    p.add_argument("--embedder", default="auto", choices=["auto", "openl3", "features",
                                                          "classifier"],
                   help="auto: openl3 when its weights are cached, else features (classic "
                   "descriptors standardised and whitened on the catalog; no weights needed)")
    p.add_argument("--run", default=None, help="run folder, for --embedder classifier")
    p.add_argument("--label", default="human", choices=["human", "ai", "all"],
                   help="which clips go into the catalog (default: human)")
    kind = p.add_mutually_exclusive_group()
    kind.add_argument("--hnsw", action="store_true",
                      help="approximate HNSW search, efSearch tuned to recall@5 >= 0.95 "
                      "(default: exact search up to 100k tracks, HNSW above)")
    kind.add_argument("--flat", action="store_true", help="exact search at any size")
    p.add_argument("--seconds", type=float, default=30.0,
                   help="seconds of each song its vector describes, for the catalog and for "
                   "queries (default 30; 0: the whole song)")
    p.add_argument("--excerpt", choices=["start", "centre"], default="start",
                   help="where those seconds lie: from the start (default) or the centre")
    p.add_argument("--checkpoint-every", type=int, default=64,
                   help="files per checkpoint: a killed build redoes at most this many")
    p.add_argument("--query-hop", type=float, default=None,
                   help="openl3: seconds between the windows of a *query* (default 1.5: a 30 s "
                   "query in under 2 s on a 2-core CPU, see "
                   "benchmarks/results/openl3_query_budget.json); the catalog uses 0.5 s. "
                   "Stored in the index, so every query agrees")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="openl3: precision of the network (auto: bf16 where the CPU/GPU runs "
                   "it natively and it stays within 1e-2 of fp32 on a check clip)")
    p.set_defaults(func=cmd_index)


def _add_weights(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("weights", help="download or install the OpenL3 weights",
                       description="Download the official OpenL3 weights (.h5.gz from the "
                       "openl3 repository), verify them (git blob SHA-1, HDF5, layer layout) "
                       "and install them where --embedder openl3 finds them "
                       "($HELPERS_OPENL3_DIR or ~/.cache/helpers/openl3). Offline: download "
                       "the file elsewhere and install it with --from FILE.")
    p.add_argument("model", choices=["openl3"], help="which weights")
    p.add_argument("--from", dest="source", default=None, metavar="FILE",
                   help="install this .h5.gz or .h5 file instead of downloading")
    p.add_argument("--input-repr", default="mel256", choices=["mel256", "mel128", "linear"])
    p.add_argument("--content-type", default="music", choices=["music", "env"])
    p.add_argument("--embedding-size", type=int, default=512, choices=[512, 6144],
                   help="checked against the file's layout (both sizes share one file)")
    p.add_argument("--cache-dir", default=None,
                   help="install here instead of $HELPERS_OPENL3_DIR or ~/.cache/helpers/openl3")
    p.set_defaults(func=cmd_weights)


def _add_recommend(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("recommend", help="top-K similar human tracks (and P(AI)) for audio files",
                       description="Recommend the K most similar human tracks from the index "
                       "for each file. With --run, classify each file first and recommend when "
                       "it looks AI-made. A run judges only music like its training data: a "
                       "demo-trained run says 'cannot judge' for any file outside its corpus, "
                       "and any run does so for a file far from its training clips.")
    p.add_argument("audio", nargs="+",
                   help="audio files, or folders of them (searched recursively)")
    p.add_argument("--run", default=None,
                   help="classifier run folder (optional: without it, similarity search only)")
    p.add_argument("--index", required=True, help="index folder")
    p.add_argument("-k", type=int, default=5)
    p.add_argument("--threshold", type=float, default=None,
                   help="P(AI) decision threshold (default: the run's validation choice)")
    p.add_argument("--always-recommend", action="store_true",
                   help="recommend even for tracks that look human")
    p.add_argument("--windows", action="store_true",
                   help="score sliding windows (the run's clip length, half overlapping) over "
                   "the whole song, not just the start; the song's P(AI) is the median window")
    p.add_argument("--json", action="store_true", help="JSON output for scripts")
    p.set_defaults(func=cmd_recommend)


def cmd_twins(args: argparse.Namespace) -> int:
    from helpers.twins import TwinConfig, make_twins

    config = TwinConfig(families=tuple(args.family), design=args.design,
                        excerpt_seconds=args.seconds, seed=args.seed)
    path = make_twins(args.manifest, args.out, config, autoencoder=args.autoencoder,
                      n_jobs=args.jobs or os.cpu_count() or 1)
    print(f"manifest written: {path}\n"
          "These AI files are proxies made by this project, not the output of a music "
          "generator: a detector trained on them learns these families' traces only.")
    return 0


def _add_twins(sub: argparse._SubParsersAction) -> None:
    from helpers.twins import DESIGNS, FAMILIES

    p = sub.add_parser(
        "twins", help="make AI twins of your own human music (a corpus, offline)",
        description="Cut an excerpt of every human track in MANIFEST and make its AI twins "
        "with the project's artifact families (griffin_lim: mel inversion + Griffin-Lim + "
        "transposed-conv upsampling; autoencoder: a waveform autoencoder with a "
        "transposed-conv decoder, trained here on the train rows; opus_lowrate: an 8 kbps "
        "Opus/SILK vocoder round trip). Writes OUT/manifest.csv for train/evaluate; splits "
        "and track ids are kept, so a track never straddles splits. Re-running resumes.")
    p.add_argument("--manifest", required=True,
                   help="CSV of human tracks (path, label, split, track_id, ...), or a plain "
                        "folder of your music: every audio file in it (recursively) is human, "
                        "its split drawn from a hash of its path (70/15/15 train/val/test)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--family", nargs="+", default=list(FAMILIES), choices=FAMILIES,
                   help="artifact families (default: all)")
    p.add_argument("--design", default="paired", choices=DESIGNS,
                   help="paired: twin of the same excerpt; unpaired: of another excerpt of "
                        "the track (default paired)")
    p.add_argument("--seconds", type=float, default=30.0, help="excerpt length (default 30)")
    p.add_argument("--autoencoder", default=None, metavar="FILE",
                   help="a trained autoencoder to reuse (default: train one on the train rows)")
    p.add_argument("--jobs", type=int, default=None, help="worker processes (default: all cores)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_twins)


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the whole pipeline on the demo corpus, offline",
                       description="Build the demo corpus, train the tiny classifier, evaluate "
                       "it, build the human index and recommend for held-out clips. Re-running "
                       "reuses finished stages.")
    p.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-k", type=int, default=5)
    p.set_defaults(func=cmd_demo)


#: The stages, in the order data flows (and ``--help`` lists them).
_COMMANDS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (
    _add_download, _add_synth, _add_twins, _add_preprocess, _add_train, _add_evaluate,
    _add_weights, _add_index, _add_recommend, _add_demo)


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m helpers`` argument parser, one subcommand per stage."""
    parser = argparse.ArgumentParser(
        prog="python -m helpers",
        description="Tell AI-generated music from human music, then recommend similar human "
                    "tracks. Start with `python -m helpers demo` (offline, a few minutes).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in _COMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m helpers``; returns the exit status."""
    args = build_parser().parse_args(argv)
    # Our progress messages at INFO; other libraries only when they warn (faiss, for one,
    # logs several INFO lines about its CPU features on every import).
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("helpers").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    try:
        if args.command in _USES_KERNELS:
            from helpers import jit  # imports numpy and, in prepare(), librosa: seconds

            jit.prepare()
        return args.func(args)
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        # User errors are one clear line (AudioError and ManifestError are ValueErrors,
        # CacheError a RuntimeError); -v shows the traceback instead.
        if args.verbose:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
