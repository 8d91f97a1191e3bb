"""A trained run: load it, predict P(AI), score audio files, find the rows it trained on.

A run folder is what `helpers.train.train` writes (``run.json``, ``best.pt``, ``splits.csv``,
...). Everything that *uses* a run lives here, so evaluation, the pipeline, the embedders and
the robustness checks depend on this small module rather than on the training loop.

A run also says what it was trained on (`describe_training_data`, `training_data`): a model
that has only heard the synthetic demo corpus cannot judge real music (`helpers.ood` checks
how far a clip lies from a run's training clips).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from helpers.audio import AudioError, load_clip, mel_db
from helpers.config import FrontEndConfig
from helpers.io import read_json
from helpers.metrics import sigmoid
from helpers.model import ModelConfig, build_model

log = logging.getLogger(__name__)

#: Every manifest row's split as trained (validation carved from ``train`` included).
SPLITS_FILE = "splits.csv"

#: What `helpers.synth.make_corpus` writes next to the demo corpus's manifest.
DEMO_CORPUS_FILE = "corpus.json"

#: ``training_data["kind"]`` values (``unknown``: a run written before it was recorded).
TRAINING_DATA_KINDS = ("synthetic-demo", "sonics", "custom", "unknown")


def load_checkpoint(path: Path, device: str | torch.device = "cpu") -> dict:
    """Read a checkpoint written by `helpers.train`, naming the file when it is damaged."""
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as err:  # noqa: BLE001 - a torn or foreign file: say which and what to do
        raise RuntimeError(f"{path}: unreadable checkpoint ({err}); delete it and retrain, or "
                           "resume from the other checkpoint") from err


def load_run(
    run_dir: str | os.PathLike, device: str | torch.device | None = None,
    checkpoint: str | None = None,
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Load a trained classifier and its ``run.json``.

    Parameters
    ----------
    run_dir : str or path-like
        A folder written by `train`.
    device : str or torch.device, optional
        Default CPU.
    checkpoint : str, optional
        File in the run folder; default the one ``run.json`` names (``best.pt``).

    Returns
    -------
    model : torch.nn.Module
        In eval mode; ``model(mel)`` gives logits ``(batch,)``, ``model.embed(mel)`` the
        pooled vector ``(batch, dim)``.
    run_info : dict
        The contents of ``run.json`` (``frontend``, ``temperature``, ``threshold``, ...).

    Raises
    ------
    FileNotFoundError
        No ``run.json``: the run never finished (resume it with ``train(..., resume=True)``).
    """
    run_dir = Path(run_dir)
    info_path = run_dir / "run.json"
    if not info_path.exists():
        hint = (" (last.pt exists: finish it with train(..., resume=True))"
                if (run_dir / "last.pt").exists() else "")
        raise FileNotFoundError(f"{info_path} not found: not a finished run folder{hint}")
    info = read_json(info_path)
    model = build_model(ModelConfig.from_dict(info["model_config"]), info.get("model_kind",
                                                                              "spectttra"))
    state = load_checkpoint(run_dir / (checkpoint or info.get("checkpoint", "best.pt")))
    model.load_state_dict(state["model"])
    model.to(device or "cpu").eval()
    return model, info


@torch.no_grad()
def predict_proba(
    model: torch.nn.Module, run_info: dict[str, Any], mel_batch: np.ndarray | torch.Tensor,
    batch_size: int = 64,
) -> np.ndarray:
    """Calibrated P(AI) for dB mel spectrograms.

    Parameters
    ----------
    model : torch.nn.Module
        From `load_run`.
    run_info : dict
        From `load_run` (its ``temperature`` is applied).
    mel_batch : array or tensor, shape (batch, n_mels, frames)
        dB mels on the run's front end (``run_info["frontend"]``).
    batch_size : int

    Returns
    -------
    np.ndarray, shape (batch,), float64
        ``sigmoid(logit / temperature)``.
    """
    logits = predict_logits(model, mel_batch, batch_size)
    return sigmoid(logits / float(run_info.get("temperature", 1.0)))


#: Below this many parameters a model runs on one CPU thread: its matrix products are too
#: small to gain from threads, and synchronising them costs more than they save (`tiny`, one
#: 30 s clip on 2 cores: 344 ms with 2 threads, 9.6 ms with 1,
#: ``benchmarks/results/classifier_cpu*.json``).
SMALL_MODEL_PARAMETERS = 1_000_000


@contextlib.contextmanager
def inference_threads(model: torch.nn.Module) -> Iterator[None]:
    """One torch thread for a small model on the CPU while the block runs (then restored)."""
    device = next(model.parameters()).device
    small = sum(p.numel() for p in model.parameters()) < SMALL_MODEL_PARAMETERS
    if device.type != "cpu" or not small or torch.get_num_threads() == 1:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@torch.no_grad()
def predict_logits(
    model: torch.nn.Module, mel_batch: np.ndarray | torch.Tensor, batch_size: int = 64
) -> np.ndarray:
    """Raw logits ``(batch,)`` for dB mels ``(batch, n_mels, frames)``; see `inference_threads`."""
    x = torch.as_tensor(np.asarray(mel_batch) if not torch.is_tensor(mel_batch) else mel_batch)
    if x.dim() == 2:
        x = x[None]
    device = next(model.parameters()).device
    model.eval()
    with inference_threads(model):
        out = [model(x[i: i + batch_size].to(device).float()).float().cpu()
               for i in range(0, len(x), batch_size)]
    return torch.cat(out).numpy().astype(np.float64) if out else np.zeros(0)


def score_files(
    run_dir: str | os.PathLike,
    paths: Sequence[str | os.PathLike],
    batch_size: int = 16,
    device: str | None = None,
    on_error: str = "raise",
    progress: bool = False,
    model_and_info: tuple[torch.nn.Module, dict[str, Any]] | None = None,
) -> np.ndarray:
    """Calibrated P(AI) for audio files, using the run's own front end.

    Parameters
    ----------
    run_dir : str or path-like
        A finished run folder.
    paths : sequence of paths
        Audio files (anything `helpers.audio.load_clip` reads).
    batch_size : int
    device : str, optional
        Default CPU.
    on_error : str
        ``"raise"`` re-raises `helpers.audio.AudioError` for an unreadable file; ``"nan"``
        gives NaN for it and goes on.
    progress : bool
    model_and_info : tuple, optional
        An already loaded ``load_run(run_dir)``, to score many batches without reloading.

    Returns
    -------
    np.ndarray, shape (len(paths),), float64
    """
    if on_error not in ("raise", "nan"):
        raise ValueError(f"on_error must be 'raise' or 'nan', got {on_error!r}")
    model, info = model_and_info or load_run(run_dir, device=device)
    frontend = FrontEndConfig.from_dict(info["frontend"])
    out = np.full(len(paths), np.nan)
    batch: list[np.ndarray] = []
    where: list[int] = []

    def flush() -> None:
        if batch:
            out[where] = predict_proba(model, info, np.stack(batch), batch_size)
            batch.clear()
            where.clear()

    for i, path in enumerate(tqdm(paths, desc="score", disable=not progress, unit="file")):
        try:
            batch.append(mel_db(load_clip(path, frontend), frontend))
            where.append(i)
        except AudioError:
            if on_error == "raise":
                raise
            log.warning("could not score %s", path, exc_info=True)
        if len(batch) >= batch_size:
            flush()
    flush()
    return out


# ------------------------------------------------------------------------------------------
# The rows a run trained on
# ------------------------------------------------------------------------------------------


def read_splits(run_dir: str | os.PathLike) -> pd.DataFrame | None:
    """A run's ``splits.csv`` (``path, track_id, label, split[, manifest_split]``), or None.

    ``split`` is the split as trained (carved validation rows say ``val``); ``manifest_split``
    is the split the manifest gave (runs written before it was recorded lack the column).
    """
    path = Path(run_dir) / SPLITS_FILE
    return pd.read_csv(path, dtype=str, keep_default_na=False) if path.exists() else None


def split_rows(
    frame: pd.DataFrame, split: str, run_dir: str | os.PathLike | None = None
) -> pd.DataFrame:
    """The rows of one split, as the run saw them.

    Parameters
    ----------
    frame : pd.DataFrame
        A loaded manifest (`helpers.datasets.load_manifest`).
    split : str
        ``"train"``, ``"val"``, ``"test"`` or ``"all"``.
    run_dir : str or path-like, optional
        A run folder. For ``"train"``/``"val"`` on a manifest without ``val`` rows, its
        ``splits.csv`` decides membership (the validation split carved at training time).

    Returns
    -------
    pd.DataFrame
        The rows, index reset.

    Raises
    ------
    ValueError
        The split has no rows.
    """
    if split in ("val", "train") and run_dir is not None and not (frame["split"] == "val").any():
        saved = read_splits(run_dir)
        if saved is not None:
            frame = frame.drop(columns="split").merge(saved[["path", "split"]], on="path",
                                                      how="inner")
    rows = frame if split == "all" else frame[frame["split"] == split]
    if rows.empty:
        raise ValueError(f"the manifest has no {split!r} rows (splits present: "
                         f"{sorted(frame['split'].unique())})")
    return rows.reset_index(drop=True)


def manifest_changes(saved: pd.DataFrame, frame: pd.DataFrame) -> dict[str, int]:
    """How a manifest differs from the one a run trained on.

    Parameters
    ----------
    saved : pd.DataFrame
        The run's `read_splits`.
    frame : pd.DataFrame
        A loaded manifest.

    Returns
    -------
    dict
        ``added`` and ``removed`` (paths only on one side) and ``changed`` (same path, other
        label or split) row counts; all zero when the manifest is the one trained on.
    """
    old_all, new_all = saved.set_index("path"), frame.set_index("path")
    both = old_all.index.intersection(new_all.index)
    old, new = old_all.loc[both], new_all.loc[both]
    if "manifest_split" in old:
        old_split = old["manifest_split"]
    else:  # an older run: a carved validation row may have been a train row in the manifest
        carved = (old["split"] == "val") & (new["split"] == "train")
        old_split = old["split"].mask(carved, "train")
    changed = (old["label"] != new["label"]) | (old_split != new["split"])
    return {"added": int(new_all.index.difference(old_all.index).size),
            "removed": int(old_all.index.difference(new_all.index).size),
            "changed": int(changed.sum())}


# ------------------------------------------------------------------------------------------
# What a run was trained on
# ------------------------------------------------------------------------------------------


def find_demo_corpus(paths: Sequence[str], manifest: Path | None = None) -> Path | None:
    """The demo corpus folder (holding `DEMO_CORPUS_FILE`) these files come from, if any.

    Looks next to the manifest, then in the folder all paths share and up to three folders
    above it (the corpus keeps its clips in ``audio/<label>/<style>/``).
    """
    candidates = [manifest.parent] if manifest is not None else []
    if len(paths):
        common = Path(os.path.commonpath([os.path.abspath(p) for p in paths]))
        candidates += [common, *list(common.parents)[:3]]
    return next((c for c in candidates if (c / DEMO_CORPUS_FILE).is_file()), None)


def describe_training_data(
    frame: pd.DataFrame, manifest: str | os.PathLike | pd.DataFrame | None = None,
    n_clips: int | None = None,
) -> dict[str, Any]:
    """What a manifest holds, as recorded in ``run.json["training_data"]``.

    Parameters
    ----------
    frame : pd.DataFrame
        The loaded manifest (`helpers.datasets.load_manifest`).
    manifest : str, path-like or DataFrame, optional
        What the manifest was loaded from (a DataFrame records no file).
    n_clips : int, optional
        Clips the model learned from (train + val); default every row.

    Returns
    -------
    dict
        ``kind``: ``"synthetic-demo"`` (a `helpers.synth` corpus: its `DEMO_CORPUS_FILE`
        is found, or every row's ``source`` is ``synth``), ``"sonics"`` (any ``source``
        starting with ``sonics``, as `helpers.sources` writes) or ``"custom"``; ``manifest``
        (absolute path or None), ``corpus_root`` (the demo corpus folder or None),
        ``n_clips`` and ``sources`` (rows per non-empty ``source`` value).
    """
    path = None
    if manifest is not None and not isinstance(manifest, pd.DataFrame):
        path = Path(manifest).expanduser().resolve()
        path = path / "manifest.csv" if path.is_dir() else path
    named = frame["source"][frame["source"] != ""] if "source" in frame else pd.Series()
    sources = named.value_counts().to_dict()
    root = find_demo_corpus(frame["path"].tolist(), path)
    if root is None and set(sources) == {"synth"}:
        root = Path(os.path.commonpath([os.path.abspath(p) for p in frame["path"]]))
    if root is not None:
        kind = "synthetic-demo"
    elif any(str(s).startswith("sonics") for s in sources):
        kind = "sonics"
    else:
        kind = "custom"
    return {"kind": kind, "manifest": str(path) if path else None,
            "corpus_root": str(root.resolve()) if root else None,
            "n_clips": int(len(frame) if n_clips is None else n_clips),
            "sources": {str(k): int(v) for k, v in sources.items()}}


def training_data(run_dir: str | os.PathLike, run_info: dict[str, Any]) -> dict[str, Any]:
    """What a run was trained on: ``run.json["training_data"]``, or worked out for older runs.

    A run written before it was recorded is recognised as demo-trained from the paths in its
    ``splits.csv`` (they lie in a demo corpus); otherwise its ``kind`` is ``"unknown"``.
    """
    if run_info.get("training_data"):
        return run_info["training_data"]
    saved = read_splits(run_dir)
    root = find_demo_corpus(saved["path"].tolist()) if saved is not None else None
    return {"kind": "synthetic-demo" if root else "unknown", "manifest": None,
            "corpus_root": str(root.resolve()) if root else None,
            "n_clips": None if saved is None else int(saved["split"].isin(["train", "val"])
                                                       .sum()),
            "sources": {}}
