"""Training loop for Model 1 (the AI-vs-human classifier); `helpers.run` uses the result.

`train` turns a manifest into a self-describing run folder::

    run.json          everything needed to reuse the model: model/train/front-end configs,
                      temperature, thresholds, manifest fingerprint, parameter count, timings
    best.pt           weights with the best validation ROC-AUC (what `helpers.run.load_run` loads)
    last.pt           full training state after the latest epoch (what `resume=True` reads)
    history.csv       epoch, train_loss, val_loss, val_roc_auc, lr, seconds
    splits.csv        every clip's split as trained (including a carved validation split)
    val_predictions.csv   validation logits, used for calibration and thresholds

A checkpoint is written after every epoch through a temporary file and `os.replace`, and holds
the model, optimizer, scheduler, early-stopping state and every random state (python, numpy,
torch, CUDA, the data-order generator and the augmentation generators). Resuming therefore
ends with the same weights as a run that was never interrupted (``tests/test_train.py``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import GroupShuffleSplit, StratifiedGroupKFold
from tqdm.auto import tqdm

from helpers.audio import default_device
from helpers.config import FrontEndConfig
from helpers.io import atomic_path, read_json, write_csv, write_json
from helpers.metrics import (
    binary_metrics,
    choose_threshold_max_f1,
    fit_temperature,
    sigmoid,
    threshold_for_fpr,
)
from helpers.model import ModelConfig, build_model, model_config_for
from helpers.run import load_checkpoint

log = logging.getLogger(__name__)

RUN_FORMAT = 1


@dataclass(frozen=True)
class TrainConfig:
    """How a classifier is trained. Saved in ``run.json`` and in every checkpoint.

    Parameters
    ----------
    epochs : int
        Maximum epochs (early stopping may end sooner).
    batch_size : int
    lr : float
        Peak AdamW learning rate, reached after warm-up, then cosine decay to 0.
    weight_decay : float
        AdamW decoupled weight decay (not applied to biases, norms, positional embeddings).
    warmup_frac : float
        Share of all optimizer steps spent in linear warm-up.
    grad_clip : float
        Maximum global gradient norm; 0 disables clipping.
    label_smoothing : float
        Targets become ``y * (1 - s) + s / 2``.
    mixup_alpha : float
        Beta(alpha, alpha) mixup of spectrograms and targets; 0 turns it off.
    time_mask, n_time_masks : int
        SpecAugment: up to `n_time_masks` masks, each up to `time_mask` frames wide.
    freq_mask, n_freq_masks : int
        SpecAugment: up to `n_freq_masks` masks, each up to `freq_mask` mel bins high. Masked
        cells get the clip's mean dB, i.e. zero after the model's per-clip normalisation.
    time_roll : bool
        Rotate each clip by a random number of frames (circularly). Spectral tokens weigh every
        frame separately, so on small corpora they memorise where things happen in the training
        clips; rolling makes them read the band's behaviour, not its timeline.
    random_gain_db : float
        Random spectral tilt: adds a ramp from ``-g`` to ``+g`` dB across the mel bins with
        ``g ~ U(-random_gain_db, random_gain_db)`` per clip (an EQ/mastering difference). A flat
        gain would be a no-op: the model normalises every clip to zero mean and unit variance,
        and the front end clips to ``top_db`` below each clip's own maximum, so a constant dB
        offset cancels exactly. 0 turns it off.
    patience : int
        Stop after this many epochs without a better validation ROC-AUC; 0 disables.
    val_fraction : float
        Share of training tracks carved out as validation when the manifest has no ``val``
        rows (grouped by ``track_id``, stratified by label).
    class_balance : str
        ``"pos_weight"`` weighs the AI term of the loss by ``n_human / n_ai``; ``"sampler"``
        draws batches with a class-balanced sampler; ``"none"``.
    target_fpr : float
        False-positive rate on human validation clips for the second threshold in ``run.json``.
    seed : int
    num_workers : int
        DataLoader worker processes (0 reads in the training process; augmentation always
        runs in the training process, so results do not depend on this).
    cpu_threads : int
        Torch intra-op threads while training on a CPU (restored afterwards). 0 = auto: one
        thread for models under 1 M parameters (their small matrix products lose more to
        thread synchronisation than they gain; 3x faster for ``tiny`` on a 2-core box), else
        torch's default.
    amp : str
        ``"auto"`` uses bfloat16 autocast on CUDA GPUs that support it, else full precision;
        ``"bf16"`` forces it on CUDA; ``"off"``.
    device : str
        ``"auto"`` (CUDA, then MPS, then CPU) or a torch device string.
    """

    epochs: int = 40
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_frac: float = 0.1
    grad_clip: float = 1.0
    label_smoothing: float = 0.0
    mixup_alpha: float = 0.0
    time_mask: int = 24
    n_time_masks: int = 2
    freq_mask: int = 12
    n_freq_masks: int = 2
    time_roll: bool = True
    random_gain_db: float = 3.0
    patience: int = 10
    val_fraction: float = 0.15
    class_balance: str = "pos_weight"
    target_fpr: float = 0.05
    seed: int = 0
    num_workers: int = 0
    cpu_threads: int = 0
    amp: str = "auto"
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.class_balance not in ("pos_weight", "sampler", "none"):
            raise ValueError(f"class_balance must be pos_weight|sampler|none, got "
                             f"{self.class_balance!r}")
        if self.amp not in ("auto", "bf16", "off"):
            raise ValueError(f"amp must be auto|bf16|off, got {self.amp!r}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be >= 1")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown train settings {sorted(unknown)}")
        return cls(**data)


# ------------------------------------------------------------------------------------------
# Splits
# ------------------------------------------------------------------------------------------


def carve_val_split(
    frame: pd.DataFrame, val_fraction: float = 0.15, seed: int = 0
) -> pd.DataFrame:
    """Move a stratified, track-grouped share of ``train`` rows to ``val``.

    Excerpts of one song (same ``track_id``) land on the same side, so validation never sees a
    song the model trained on. Manifests that already have ``val`` rows are returned as is.

    Parameters
    ----------
    frame : pd.DataFrame
        A manifest with ``label``, ``split`` and ``track_id``.
    val_fraction : float
    seed : int

    Returns
    -------
    pd.DataFrame
        A copy with some ``train`` rows relabelled ``val``.

    Raises
    ------
    ValueError
        Fewer than two training tracks per class, so no validation split can be carved.
    """
    frame = frame.copy()
    if (frame["split"] == "val").any():
        return frame
    train_idx = np.flatnonzero(frame["split"].to_numpy() == "train")
    train = frame.iloc[train_idx]
    groups = train["track_id"].where(train["track_id"] != "", train["path"]).to_numpy()
    y = (train["label"] == "ai").to_numpy(int)
    tracks_per_class = train.assign(g=groups).groupby("label")["g"].nunique()
    if len(tracks_per_class) < 2 or tracks_per_class.min() < 2:
        raise ValueError(
            "cannot carve a validation split: need at least 2 training tracks of each label, "
            f"got {tracks_per_class.to_dict()}; add val rows to the manifest"
        )
    n_splits = max(2, int(round(1.0 / val_fraction)))
    if tracks_per_class.min() >= n_splits:
        splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        _, val_pos = next(splitter.split(np.zeros(len(y)), y, groups))
    else:  # too few tracks to stratify by folds: grouped random split per label instead
        val_pos = []
        for label_value in (0, 1):
            pos = np.flatnonzero(y == label_value)
            gss = GroupShuffleSplit(n_splits=1, test_size=val_fraction, random_state=seed)
            _, v = next(gss.split(pos, groups=groups[pos]))
            val_pos.extend(pos[v])
        val_pos = np.asarray(sorted(val_pos))
    frame.iloc[train_idx[val_pos], frame.columns.get_loc("split")] = "val"
    return frame


# ------------------------------------------------------------------------------------------
# Augmentation (on the batch, in the training process, from dedicated generators)
# ------------------------------------------------------------------------------------------


def augment(
    x: torch.Tensor, config: TrainConfig, generator: torch.Generator
) -> torch.Tensor:
    """SpecAugment masks and a random spectral tilt on a dB mel batch.

    Parameters
    ----------
    x : torch.Tensor, shape (batch, n_mels, frames)
        dB mel spectrograms (on the CPU, where `generator` lives).
    config : TrainConfig
    generator : torch.Generator
        Source of all randomness here (saved in checkpoints).

    Returns
    -------
    torch.Tensor, shape (batch, n_mels, frames)
    """
    x = x.clone()
    batch, n_mels, n_frames = x.shape
    if config.time_roll:
        shift = torch.randint(0, n_frames, (batch, 1, 1), generator=generator)
        idx = (torch.arange(n_frames).view(1, 1, n_frames) + shift) % n_frames
        x = torch.gather(x, 2, idx.expand(batch, n_mels, n_frames))  # (batch, n_mels, frames)
    if config.random_gain_db > 0:
        g = (torch.rand(batch, 1, 1, generator=generator) * 2 - 1) * config.random_gain_db
        ramp = torch.linspace(-1.0, 1.0, n_mels).view(1, n_mels, 1)
        x = x + g * ramp  # (batch, n_mels, frames)
    fill = x.mean(dim=(1, 2))  # (batch,) the clip mean: zero after per-clip normalisation
    for masks, width, axis, size in (
        (config.n_time_masks, config.time_mask, 2, n_frames),
        (config.n_freq_masks, config.freq_mask, 1, n_mels),
    ):
        if masks <= 0 or width <= 0:
            continue
        w = torch.randint(0, min(width, size) + 1, (batch, masks), generator=generator)
        start = (torch.rand(batch, masks, generator=generator) * (size - w + 1)).long()
        pos = torch.arange(size).view(1, 1, size)
        hit = ((pos >= start[..., None]) & (pos < (start + w)[..., None])).any(dim=1)
        hit = hit[:, None, :] if axis == 2 else hit[:, :, None]  # broadcast over other axis
        x = torch.where(hit, fill.view(batch, 1, 1), x)
    return x


# ------------------------------------------------------------------------------------------
# Random state
# ------------------------------------------------------------------------------------------


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    # The legacy global numpy state is seeded and saved too: third-party code may draw from it.
    np.random.seed(seed % 2**32)  # noqa: NPY002
    torch.manual_seed(seed)


def _rng_state(generators: dict[str, torch.Generator], mixup: np.random.Generator) -> dict:
    name, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002
    state = {
        "python": random.getstate(),
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss),
                  float(cached)],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "mixup": json.dumps(mixup.bit_generator.state),
    }
    state.update({f"gen_{k}": g.get_state() for k, g in generators.items()})
    return state


def _set_rng_state(
    state: dict, generators: dict[str, torch.Generator], mixup: np.random.Generator
) -> None:
    random.setstate(_as_tuple(state["python"]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state(  # noqa: NPY002
        (name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    mixup.bit_generator.state = json.loads(state["mixup"])
    for k, g in generators.items():
        g.set_state(state[f"gen_{k}"])


def _as_tuple(value: Any) -> Any:
    return tuple(_as_tuple(v) for v in value) if isinstance(value, list | tuple) else value


# ------------------------------------------------------------------------------------------
# Checkpoints
# ------------------------------------------------------------------------------------------


def _save_checkpoint(obj: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


# ------------------------------------------------------------------------------------------
# Training
# ------------------------------------------------------------------------------------------


def _resolve_device(name: str) -> torch.device:
    return default_device() if name == "auto" else torch.device(name)


def _autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    if device.type == "cuda" and amp in ("auto", "bf16"):
        if amp == "bf16" or torch.cuda.is_bf16_supported():
            return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        # Matrices/kernels decay; biases, norms and positional embeddings do not.
        (no_decay if p.dim() < 2 or name.endswith("_pos") or name == "pos" else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def _lr_lambda(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    def f(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return f


@torch.no_grad()
def _predict_logits(
    model: torch.nn.Module, loader: torch.utils.data.DataLoader, device: torch.device,
    amp: str = "off",
) -> tuple[np.ndarray, np.ndarray]:
    model.eval()
    logits, labels = [], []
    for x, y in loader:
        with _autocast(device, amp):
            out = model(x.to(device, non_blocking=True))
        logits.append(out.float().cpu())
        labels.append(y)
    if not logits:
        return np.zeros(0, np.float32), np.zeros(0, np.float32)
    return torch.cat(logits).numpy(), torch.cat(labels).numpy()


def _val_scores(logits: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    if logits.size == 0:
        return float("nan"), float("nan")
    loss = float(F.binary_cross_entropy_with_logits(
        torch.from_numpy(logits).double(), torch.from_numpy(y).double()))
    auc = float(roc_auc_score(y, logits)) if len(np.unique(y)) == 2 else float("nan")
    return loss, auc


def _prepare_manifest(manifest: str | os.PathLike | pd.DataFrame) -> pd.DataFrame:
    from helpers.datasets import load_manifest

    return load_manifest(manifest)


def train(
    manifest: str | os.PathLike | pd.DataFrame,
    out_dir: str | os.PathLike,
    preset: str | ModelConfig = "tiny",
    train_config: TrainConfig | None = None,
    cache_dir: str | os.PathLike | None = None,
    resume: bool = False,
    progress: bool = True,
    frontend: FrontEndConfig | None = None,
    model_kind: str = "spectttra",
    stop_after_epochs: int | None = None,
) -> Path:
    """Train the AI-vs-human classifier and write a self-describing run folder.

    Parameters
    ----------
    manifest : str, path-like or DataFrame
        Anything `helpers.datasets.load_manifest` accepts. ``train`` rows train, ``val`` rows
        validate (carved from ``train`` by track when absent, see `carve_val_split`); ``test``
        rows are never read here.
    out_dir : str or path-like
        The run folder (created). It must not hold a run already unless `resume` is set.
    preset : str or ModelConfig
        ``"tiny"`` (CPU demo) or ``"base"`` (SpecTTTra-sized), or a config; its `n_mels` and
        `n_frames` are set from the front end.
    train_config : TrainConfig, optional
        Defaults to ``TrainConfig()``. On resume the saved one is used.
    cache_dir : str or path-like, optional
        Feature cache (default ``out_dir/cache``); missing clips are preprocessed into it.
    resume : bool
        Continue from ``out_dir/last.pt``: the final weights equal those of an uninterrupted
        run with the same settings. A finished run is left as it is.
    progress : bool
        Show tqdm bars (loss and clips/s per batch).
    frontend : FrontEndConfig, optional
        How audio becomes a mel. Default: the cache's ``frontend.json`` when the cache exists,
        else ``FrontEndConfig()``.
    model_kind : str
        ``"spectttra"`` or ``"vit"`` (the square-patch baseline).
    stop_after_epochs : int, optional
        Return after this many epochs in this call, leaving the run resumable (for time-sliced
        sessions such as Colab, and for the resume test). Calibration is done only when the
        run finishes.

    Returns
    -------
    Path
        The run folder.

    Raises
    ------
    FileExistsError
        `out_dir` holds a run and `resume` is False.
    ValueError
        No training clips, or a single label, or no validation split can be made.

    Examples
    --------
    >>> run = train("demo/manifest.csv", "runs/tiny", preset="tiny")  # doctest: +SKIP
    >>> model, info = load_run(run)  # doctest: +SKIP
    """
    threads = torch.get_num_threads()
    try:
        return _train(manifest, out_dir, preset, train_config, cache_dir, resume, progress,
                      frontend, model_kind, stop_after_epochs)
    finally:
        torch.set_num_threads(threads)


def _train(
    manifest: str | os.PathLike | pd.DataFrame,
    out_dir: str | os.PathLike,
    preset: str | ModelConfig,
    train_config: TrainConfig | None,
    cache_dir: str | os.PathLike | None,
    resume: bool,
    progress: bool,
    frontend: FrontEndConfig | None,
    model_kind: str,
    stop_after_epochs: int | None,
) -> Path:
    from helpers.cache import CacheDataset, preprocess
    from helpers.datasets import manifest_fingerprint

    t_start = time.perf_counter()
    run_dir = Path(out_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    last_path, best_path = run_dir / "last.pt", run_dir / "best.pt"
    checkpoint = None
    if resume and last_path.exists():
        checkpoint = load_checkpoint(last_path)
        if checkpoint.get("finished") and (run_dir / "run.json").exists():
            log.info("%s: run already finished; nothing to resume", run_dir)
            return run_dir
    elif last_path.exists() or (run_dir / "run.json").exists():
        raise FileExistsError(f"{run_dir} already holds a run; pass resume=True to continue it "
                              "or choose another folder")

    cache_dir = Path(cache_dir) if cache_dir is not None else run_dir / "cache"
    if checkpoint is not None:
        train_config = TrainConfig.from_dict(checkpoint["train_config"])
        frontend = FrontEndConfig.from_dict(checkpoint["frontend"])
        model_config = ModelConfig.from_dict(checkpoint["model_config"])
        model_kind = checkpoint["model_kind"]
        preset_name = checkpoint["preset"]
    else:
        train_config = train_config or TrainConfig()
        if frontend is None:
            saved = cache_dir / "frontend.json"
            frontend = (FrontEndConfig.from_dict(read_json(saved)) if saved.exists()
                        else FrontEndConfig())
        model_config = model_config_for(preset, frontend.n_mels, frontend.n_frames)
        preset_name = preset if isinstance(preset, str) else "custom"
    cfg = train_config

    # --- data -------------------------------------------------------------------------------
    frame = _prepare_manifest(manifest)
    fingerprint = manifest_fingerprint(frame)  # of the manifest as given, before carving val
    if not (frame["split"] == "train").any():  # say so before carving val fails on it
        raise ValueError(f"the manifest has no train rows (rows per split: "
                         f"{frame['split'].value_counts().to_dict()}); mark some split=train")
    if checkpoint is not None and (run_dir / "splits.csv").exists():
        splits = pd.read_csv(run_dir / "splits.csv", dtype=str, keep_default_na=False)
        frame = frame.drop(columns="split").merge(splits[["path", "split"]], on="path",
                                                  how="inner")
    else:
        frame = carve_val_split(frame, cfg.val_fraction, cfg.seed)
        write_csv(run_dir / "splits.csv", frame[["path", "track_id", "label", "split"]])
    fit_rows = frame[frame["split"].isin(["train", "val"])]
    if (fit_rows["split"] == "train").sum() == 0:
        raise ValueError("the manifest has no train rows")
    t0 = time.perf_counter()
    prep = preprocess(fit_rows, cache_dir, config=frontend, progress=progress)
    preprocess_s = time.perf_counter() - t0
    train_ds = CacheDataset(cache_dir, fit_rows[fit_rows["split"] == "train"])
    val_ds = CacheDataset(cache_dir, fit_rows[fit_rows["split"] == "val"])
    n_ai = int(train_ds.labels.sum())
    n_human = len(train_ds) - n_ai
    if n_ai == 0 or n_human == 0:
        hint = (f"; {len(train_ds.dropped)} unreadable clip(s) were left out, see "
                f"{Path(cache_dir) / 'failures.csv'}" if train_ds.dropped else "")
        raise ValueError(f"training needs both labels; got {n_ai} ai and {n_human} human "
                         f"clips{hint}")

    # --- model, optimiser, generators ---------------------------------------------------------
    device = _resolve_device(cfg.device)
    _seed_everything(cfg.seed)
    model = build_model(model_config, model_kind).to(device)
    if device.type == "cpu" and (cfg.cpu_threads > 0 or model.count_parameters() < 1_000_000):
        torch.set_num_threads(cfg.cpu_threads or 1)
    optimizer = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr,
                                  betas=(0.9, 0.999))
    drop_last = len(train_ds) > cfg.batch_size
    steps_per_epoch = (len(train_ds) // cfg.batch_size if drop_last
                       else math.ceil(len(train_ds) / cfg.batch_size))
    total_steps = steps_per_epoch * cfg.epochs
    warmup_steps = max(1, int(round(cfg.warmup_frac * total_steps)))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(total_steps, warmup_steps))
    generators = {
        "data": torch.Generator().manual_seed(cfg.seed + 1),
        "augment": torch.Generator().manual_seed(cfg.seed + 2),
    }
    mixup_rng = np.random.default_rng(cfg.seed + 3)
    if cfg.class_balance == "sampler":
        weights = np.where(train_ds.labels > 0.5, 0.5 / n_ai, 0.5 / n_human)
        sampler = torch.utils.data.WeightedRandomSampler(
            torch.as_tensor(weights, dtype=torch.double), num_samples=len(train_ds),
            replacement=True, generator=generators["data"])
        loader_kw = {"sampler": sampler}
    else:
        loader_kw = {"shuffle": True, "generator": generators["data"]}
    train_loader = torch.utils.data.DataLoader(
        train_ds, batch_size=cfg.batch_size, drop_last=drop_last, num_workers=cfg.num_workers,
        pin_memory=device.type == "cuda", persistent_workers=cfg.num_workers > 0, **loader_kw)
    val_loader = torch.utils.data.DataLoader(
        val_ds, batch_size=max(cfg.batch_size, 64), shuffle=False, num_workers=cfg.num_workers)
    pos_weight = (torch.tensor(n_human / n_ai, device=device)
                  if cfg.class_balance == "pos_weight" else None)

    state = {"epoch": 0, "best_auc": -math.inf, "best_epoch": 0, "bad_epochs": 0,
             "history": [], "train_seconds": 0.0, "stopped_early": False}
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        state.update({k: checkpoint[k] for k in state})
        _set_rng_state(checkpoint["rng"], generators, mixup_rng)
        log.info("resuming %s after epoch %d", run_dir, state["epoch"])
        del checkpoint

    common = {
        "model_config": model_config.to_dict(), "train_config": cfg.to_dict(),
        "frontend": frontend.to_dict(), "model_kind": model_kind, "preset": preset_name,
    }
    epochs_this_call = 0
    while (state["epoch"] < cfg.epochs and not state["stopped_early"]
           and (stop_after_epochs is None or epochs_this_call < stop_after_epochs)):
        epoch = state["epoch"] + 1
        t_epoch = time.perf_counter()
        model.train()
        total_loss, seen = 0.0, 0
        bar = tqdm(train_loader, desc=f"epoch {epoch}/{cfg.epochs}", disable=not progress,
                   leave=False, dynamic_ncols=True)
        for x, y in bar:
            x = augment(x, cfg, generators["augment"])  # (batch, n_mels, frames)
            target = y * (1 - cfg.label_smoothing) + 0.5 * cfg.label_smoothing  # (batch,)
            if cfg.mixup_alpha > 0:
                lam = float(mixup_rng.beta(cfg.mixup_alpha, cfg.mixup_alpha))
                perm = torch.randperm(len(x), generator=generators["augment"])
                x = lam * x + (1 - lam) * x[perm]
                target = lam * target + (1 - lam) * target[perm]
            x, target = x.to(device, non_blocking=True), target.to(device, non_blocking=True)
            with _autocast(device, cfg.amp):
                logits = model(x)  # (batch,)
            loss = F.binary_cross_entropy_with_logits(logits.float(), target,
                                                      pos_weight=pos_weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            total_loss += loss.item() * len(x)
            seen += len(x)
            rate = seen / max(time.perf_counter() - t_epoch, 1e-9)
            bar.set_postfix(loss=f"{total_loss / seen:.4f}", clips_s=f"{rate:.1f}")
        bar.close()
        val_logits, val_y = _predict_logits(model, val_loader, device, cfg.amp)
        val_loss, val_auc = _val_scores(val_logits, val_y)
        seconds = time.perf_counter() - t_epoch
        state["train_seconds"] += seconds
        state["epoch"] = epoch
        state["history"].append({
            "epoch": epoch, "train_loss": total_loss / max(seen, 1), "val_loss": val_loss,
            "val_roc_auc": val_auc, "lr": optimizer.param_groups[0]["lr"],
            "seconds": round(seconds, 3), "clips_per_second": round(seen / seconds, 2),
        })
        score = val_auc if not math.isnan(val_auc) else -val_loss
        improved = score > state["best_auc"] + 1e-6 or state["best_epoch"] == 0
        if improved:
            state.update(best_auc=score, best_epoch=epoch, bad_epochs=0)
            _save_checkpoint({"model": model.state_dict(), "epoch": epoch, **common}, best_path)
        else:
            state["bad_epochs"] += 1
            if cfg.patience and state["bad_epochs"] >= cfg.patience:
                state["stopped_early"] = True
        if progress:
            tqdm.write(f"epoch {epoch}: train_loss {total_loss / max(seen, 1):.4f}  val_loss "
                       f"{val_loss:.4f}  val_roc_auc {val_auc:.4f}  ({seconds:.1f} s)")
        finished = state["epoch"] >= cfg.epochs or state["stopped_early"]
        _save_checkpoint({
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "rng": _rng_state(generators, mixup_rng),
            "finished": finished, **state, **common,
        }, last_path)
        write_csv(run_dir / "history.csv", pd.DataFrame(state["history"]))
        epochs_this_call += 1

    if not (state["epoch"] >= cfg.epochs or state["stopped_early"]):
        return run_dir  # interrupted on purpose; `resume=True` continues

    # --- calibration and thresholds on the validation split (best weights) -----------------
    best = load_checkpoint(best_path, device)
    model.load_state_dict(best["model"])
    val_logits, val_y = _predict_logits(model, val_loader, device, cfg.amp)
    temperature = fit_temperature(val_logits, val_y)
    p_val = sigmoid(val_logits / temperature)
    t_f1 = choose_threshold_max_f1(val_y, p_val)
    t_fpr = threshold_for_fpr(val_y, p_val, cfg.target_fpr)
    val_frame = val_ds.frame[["path", "track_id", "label"]].assign(
        logit=val_logits, p_ai=p_val)
    write_csv(run_dir / "val_predictions.csv", val_frame)
    info = {
        "format": RUN_FORMAT,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),  # noqa: UP017
        **common,
        "checkpoint": best_path.name,
        "temperature": temperature,
        "threshold": t_f1,
        "thresholds": {"max_f1": t_f1, "fpr": t_fpr, "target_fpr": cfg.target_fpr,
                       "default": "max_f1"},
        "val_metrics": {"at_threshold": binary_metrics(val_y, p_val, t_f1),
                        "at_fpr_threshold": binary_metrics(val_y, p_val, t_fpr)},
        "best_epoch": state["best_epoch"],
        "epochs_run": state["epoch"],
        "stopped_early": state["stopped_early"],
        "manifest_fingerprint": fingerprint,
        "n_clips": {"train": len(train_ds), "val": len(val_ds), "train_ai": n_ai,
                    "train_human": n_human},
        "dropped": train_ds.dropped + val_ds.dropped,
        "n_parameters": model.count_parameters(),
        "n_tokens": model_config.n_tokens if model_kind == "spectttra"
        else model_config.n_patch_tokens,
        "device": str(device),
        "torch": torch.__version__,
        "cache_dir": str(cache_dir.resolve()),
        "timings": {"preprocess_s": round(preprocess_s, 3), "preprocess": prep,
                    "train_s": round(state["train_seconds"], 3),
                    "this_call_s": round(time.perf_counter() - t_start, 3)},
    }
    write_json(run_dir / "run.json", info)
    return run_dir
