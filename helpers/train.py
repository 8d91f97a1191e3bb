"""Training loop for Model 1 (the AI-vs-human classifier); `helpers.run` uses the result.

`train` turns a manifest into a self-describing run folder::

    run.json          everything needed to reuse the model: model/train/front-end configs,
                      temperature, thresholds, manifest fingerprint, parameter count, timings,
                      and which of its numbers are optimistic (chosen on validation)
    best.pt           weights of the best validation epoch (what `helpers.run.load_run` loads)
    last.pt           full training state after the latest epoch (what `resume=True` reads)
    history.csv       epoch, train_loss, val_loss, val_roc_auc, lr, seconds
    splits.csv        every clip's split as trained (including a carved validation split)
    ood_reference.npy audio descriptors of the training clips, for `helpers.ood.OODCheck`
    val_predictions.csv   validation logits, used for calibration and thresholds

It reads top to bottom as `_train` does: prepare (configs, splits, feature cache) -> build
(model, optimiser, loaders, generators) -> fit (epochs, early stopping, checkpoints) ->
calibrate (temperature and thresholds on validation) -> record what it was trained on (the
kind of data, and its clips' descriptors for the out-of-distribution check) -> write
(``run.json``).

A checkpoint is written after every epoch through `helpers.io.atomic_path`, and holds the
model, optimizer, scheduler, early-stopping state and every random state (python, numpy,
torch, CUDA, the data-order generator and the augmentation generators). Resuming therefore
ends with the same weights as a run that was never interrupted (``tests/test_train.py``), and
it is refused when the manifest or the training settings differ from the run's own.
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
from dataclasses import asdict, dataclass, fields, replace
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
from helpers.cache import CacheDataset, preprocess
from helpers.config import FrontEndConfig
from helpers.datasets import load_manifest, manifest_fingerprint
from helpers.io import atomic_path, read_json, write_csv, write_json
from helpers.metrics import (
    binary_metrics,
    choose_threshold_max_f1,
    fit_temperature,
    sigmoid,
    threshold_for_fpr,
)
from helpers.model import ModelConfig, build_model, model_config_for
from helpers.ood import OODCheck, file_descriptors
from helpers.run import (
    SPLITS_FILE,
    describe_training_data,
    load_checkpoint,
    manifest_changes,
    read_splits,
)

log = logging.getLogger(__name__)

RUN_FORMAT = 1

#: `TrainConfig` fields a resumed run may change (see its Notes).
RESUME_MAY_CHANGE = frozenset({"num_workers", "cpu_threads", "device"})

#: Early stopping's tolerance: ROC-AUCs (and losses) closer than this count as equal.
_TIE = 1e-6


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
    crop_seconds : float
        Train on random windows of this many seconds of each clip; 0 (or at least the front
        end's ``duration``) trains on whole clips. The model is built for this window, and
        validation, calibration, `evaluate` and the CLI score a longer clip as the mean logit
        of its half-overlapping windows (`helpers.model.window_starts`). With little data
        this is what helps most: a 30 s clip holds several distinct 10 s windows, and a fresh
        draw each epoch keeps the model from memorising one fixed clip per track.
    crops_per_clip : int
        Random windows drawn from every training clip per epoch (each epoch then has
        ``crops_per_clip`` times as many steps). 1 when the whole clip is the window.
    patience : int
        Stop after this many epochs without a better validation epoch; 0 disables. An epoch
        is better with a higher validation ROC-AUC, or an equal one (within 1e-6) and a lower
        validation loss: ROC-AUC saturates at 1.0 on easy data, and the loss still tells the
        epochs apart.
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

    Notes
    -----
    A resumed run keeps its settings: `train` refuses to resume with other values, except for
    `RESUME_MAY_CHANGE` (where and how fast it runs, not what it learns: ``num_workers`` does
    not change a single bit, ``device`` and ``cpu_threads`` only the rounding of float sums).
    ``epochs`` is not among them: the cosine schedule decays to 0 over all epochs, so more
    epochs would be a different run, not a longer one.
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
    crop_seconds: float = 10.0
    crops_per_clip: int = 3
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
        if self.crop_seconds < 0 or self.crops_per_clip < 1:
            raise ValueError(f"crop_seconds must be >= 0 and crops_per_clip >= 1, got "
                             f"{self.crop_seconds} and {self.crops_per_clip}")

    def window_frames(self, frontend: FrontEndConfig) -> int:
        """Frames of the training window on `frontend` (its whole clip without cropping)."""
        if self.crop_seconds <= 0 or self.crop_seconds >= frontend.duration:
            return frontend.n_frames
        return 1 + int(round(self.crop_seconds * frontend.sample_rate)) // frontend.hop_length

    def draws_per_clip(self, frontend: FrontEndConfig) -> int:
        """Training draws of each clip per epoch."""
        return self.crops_per_clip if self.window_frames(frontend) < frontend.n_frames else 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown train settings {sorted(unknown)}")
        # Runs saved before random crops existed trained on whole clips: keep them as they were.
        data = {"crop_seconds": 0.0, "crops_per_clip": 1, **data}
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


def mixup(
    x: torch.Tensor, target: torch.Tensor, alpha: float, rng: np.random.Generator,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mix every clip with another of the batch: ``lam * a + (1 - lam) * b``, targets alike.

    Parameters
    ----------
    x : torch.Tensor, shape (batch, n_mels, frames)
    target : torch.Tensor, shape (batch,)
        Soft targets in [0, 1].
    alpha : float
        ``lam ~ Beta(alpha, alpha)``, one per batch; 0 returns the inputs unchanged.
    rng : np.random.Generator
        Draws `lam`.
    generator : torch.Generator
        Draws the partner of each clip (a permutation of the batch).

    Returns
    -------
    x : torch.Tensor, shape (batch, n_mels, frames)
    target : torch.Tensor, shape (batch,)
    """
    if alpha <= 0:
        return x, target
    lam = float(rng.beta(alpha, alpha))
    perm = torch.randperm(len(x), generator=generator)
    return lam * x + (1 - lam) * x[perm], lam * target + (1 - lam) * target[perm]


def random_crop(x: torch.Tensor, frames: int, generator: torch.Generator) -> torch.Tensor:
    """One random window of `frames` frames from every clip of a batch.

    Parameters
    ----------
    x : torch.Tensor, shape (batch, n_mels, clip_frames)
    frames : int
        Window length; a batch no longer than this comes back unchanged.
    generator : torch.Generator
        Draws each clip's start, uniformly over all positions.

    Returns
    -------
    torch.Tensor, shape (batch, n_mels, frames)
    """
    batch, n_mels, n_frames = x.shape
    if n_frames <= frames:
        return x
    start = torch.randint(0, n_frames - frames + 1, (batch, 1, 1), generator=generator)
    idx = start + torch.arange(frames).view(1, 1, frames)  # (batch, 1, frames)
    return torch.gather(x, 2, idx.expand(batch, n_mels, frames))  # (batch, n_mels, frames)


def prepare_batch(
    x: torch.Tensor, y: torch.Tensor, config: TrainConfig, generator: torch.Generator,
    mixup_rng: np.random.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """What one optimizer step sees: augmented mels and smoothed, mixed targets.

    Parameters
    ----------
    x : torch.Tensor, shape (batch, n_mels, frames)
        dB mels as the loader gives them.
    y : torch.Tensor, shape (batch,)
        1.0 for AI, 0.0 for human.
    config : TrainConfig
        `augment` settings, ``label_smoothing`` (targets ``y * (1 - s) + s / 2``) and
        ``mixup_alpha``.
    generator : torch.Generator
        The augmentation generator (masks, tilt, roll and the mixup partners).
    mixup_rng : np.random.Generator

    Returns
    -------
    x : torch.Tensor, shape (batch, n_mels, frames)
    target : torch.Tensor, shape (batch,)
    """
    x = augment(x, config, generator)  # (batch, n_mels, frames)
    target = y * (1 - config.label_smoothing) + 0.5 * config.label_smoothing  # (batch,)
    return mixup(x, target, config.mixup_alpha, mixup_rng, generator)


def make_train_loader(
    dataset: torch.utils.data.Dataset, labels: np.ndarray, config: TrainConfig,
    generator: torch.Generator, pin_memory: bool = False, draws_per_clip: int = 1,
) -> torch.utils.data.DataLoader:
    """Shuffled training batches; class-balanced draws when ``class_balance="sampler"``.

    Parameters
    ----------
    dataset : torch.utils.data.Dataset
    labels : np.ndarray, shape (len(dataset),)
        1 for AI, 0 for human; both must occur.
    config : TrainConfig
    generator : torch.Generator
        The data-order generator (saved in checkpoints).
    pin_memory : bool
    draws_per_clip : int
        Draws of each clip per epoch (`TrainConfig.draws_per_clip`: one random window each).

    Returns
    -------
    torch.utils.data.DataLoader
        ``len(dataset) * draws_per_clip`` draws per epoch. With the sampler each draw is AI
        with probability 1/2, with replacement; otherwise every clip `draws_per_clip` times.
        The last partial batch is dropped when there is more than one batch.
    """
    draws = len(labels) * draws_per_clip
    if config.class_balance == "sampler":
        n_ai = int((labels > 0.5).sum())
        weights = np.where(labels > 0.5, 0.5 / n_ai, 0.5 / (len(labels) - n_ai))
        sampler: torch.utils.data.Sampler = torch.utils.data.WeightedRandomSampler(
            torch.as_tensor(weights, dtype=torch.double), num_samples=draws,
            replacement=True, generator=generator)
    else:  # without replacement: each clip `draws_per_clip` times, in shuffled passes
        sampler = torch.utils.data.RandomSampler(dataset, num_samples=draws,
                                                 generator=generator)
    return torch.utils.data.DataLoader(
        dataset, batch_size=config.batch_size, drop_last=draws > config.batch_size,
        sampler=sampler,
        num_workers=config.num_workers, pin_memory=pin_memory,
        persistent_workers=config.num_workers > 0)


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
# Small pieces of the loop
# ------------------------------------------------------------------------------------------


def _save_checkpoint(obj: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


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


def _update_best(state: dict[str, Any], val_auc: float, val_loss: float, patience: int) -> bool:
    """Early stopping: True when this epoch is the best so far (see `TrainConfig.patience`)."""
    auc = -math.inf if math.isnan(val_auc) else val_auc  # one class in val: the loss decides
    better = (auc > state["best_auc"] + _TIE
              or (auc >= state["best_auc"] - _TIE and val_loss < state["best_loss"] - _TIE))
    if better or state["best_epoch"] == 0:
        state.update(best_auc=auc, best_loss=val_loss, best_epoch=state["epoch"], bad_epochs=0)
        return True
    state["bad_epochs"] += 1
    state["stopped_early"] = bool(patience) and state["bad_epochs"] >= patience
    return False


def config_changes(old: Any, new: Any) -> dict[str, tuple[Any, Any]]:
    """Fields that differ between two configs of one dataclass: ``{name: (old, new)}``."""
    a, b = old.to_dict(), new.to_dict()
    return {k: (a[k], b[k]) for k in a if a[k] != b[k]}


# ------------------------------------------------------------------------------------------
# Training: prepare -> build -> fit -> calibrate -> write
# ------------------------------------------------------------------------------------------


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
        `n_frames` are set from the front end. On resume the saved one is used.
    train_config : TrainConfig, optional
        Defaults to ``TrainConfig()``. On resume None keeps the saved one; a config that
        differs from it (outside `RESUME_MAY_CHANGE`) is refused.
    cache_dir : str or path-like, optional
        Feature cache (default ``out_dir/cache``); missing clips are preprocessed into it.
    resume : bool
        Continue from ``out_dir/last.pt``: the final weights equal those of an uninterrupted
        run with the same settings. A finished run is left as it is.
    progress : bool
        Show tqdm bars (loss and clips/s per batch).
    frontend : FrontEndConfig, optional
        How audio becomes a mel. Default: the cache's ``frontend.json`` when the cache exists,
        else ``FrontEndConfig()``. On resume None keeps the saved one; another is refused.
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
        No training clips, or a single label, or no validation split can be made; or, on
        resume, a manifest with rows added, removed or changed since the run began, or other
        settings (the message names each field, old -> new).

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
    t_start = time.perf_counter()
    run_dir = Path(out_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = _open_run(run_dir, resume)
    prep = _prepare(manifest, run_dir, cache_dir, checkpoint, preset, train_config, frontend,
                    model_kind, progress)
    if prep is None:
        log.info("%s: run already finished; nothing to resume", run_dir)
        return run_dir
    trainer = _build(prep, checkpoint)
    del checkpoint
    if not _fit(trainer, prep, stop_after_epochs, progress):
        return run_dir  # interrupted on purpose; `resume=True` continues
    calibration = _calibrate(trainer, prep)
    _write(prep, trainer, calibration, t_start, _fit_ood(prep))
    return run_dir


def _open_run(run_dir: Path, resume: bool) -> dict[str, Any] | None:
    """The checkpoint to resume from, None for a fresh run; refuse to overwrite a run."""
    last_path = run_dir / "last.pt"
    if resume and last_path.exists():
        return load_checkpoint(last_path)
    if last_path.exists() or (run_dir / "run.json").exists():
        raise FileExistsError(f"{run_dir} already holds a run; pass resume=True to continue it "
                              "or choose another folder")
    return None


@dataclass
class _Prepared:
    """What `_prepare` settles before training: settings, splits and the cached features."""

    run_dir: Path
    cache_dir: Path
    config: TrainConfig
    frontend: FrontEndConfig
    model_config: ModelConfig
    model_kind: str
    preset: str
    fingerprint: str
    train_ds: CacheDataset
    val_ds: CacheDataset
    preprocess: dict[str, Any]
    preprocess_s: float
    training_data: dict[str, Any]

    def settings(self) -> dict[str, Any]:
        """Saved in every checkpoint and in ``run.json``: enough to rebuild the run."""
        return {"model_config": self.model_config.to_dict(),
                "train_config": self.config.to_dict(), "frontend": self.frontend.to_dict(),
                "model_kind": self.model_kind, "preset": self.preset}


def _prepare(
    manifest: str | os.PathLike | pd.DataFrame, run_dir: Path,
    cache_dir: str | os.PathLike | None, checkpoint: dict[str, Any] | None,
    preset: str | ModelConfig, train_config: TrainConfig | None,
    frontend: FrontEndConfig | None, model_kind: str, progress: bool,
) -> _Prepared | None:
    """Settle the settings, the splits (checked against the run's on resume) and the cache.

    Returns None, once the call is found to agree with the run, when the run is finished.
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else run_dir / "cache"
    if checkpoint is not None:
        config, frontend = _resume_settings(run_dir, checkpoint, train_config, frontend)
        model_config = ModelConfig.from_dict(checkpoint["model_config"])
        model_kind, preset_name = checkpoint["model_kind"], checkpoint["preset"]
    else:
        config = train_config or TrainConfig()
        if frontend is None:
            saved = cache_dir / "frontend.json"
            frontend = (FrontEndConfig.from_dict(read_json(saved)) if saved.exists()
                        else FrontEndConfig())
        model_config = model_config_for(preset, frontend.n_mels, config.window_frames(frontend))
        preset_name = preset if isinstance(preset, str) else "custom"

    frame = load_manifest(manifest)
    fingerprint = manifest_fingerprint(frame)  # of the manifest as given, before carving val
    frame = _splits(frame, run_dir, config, resuming=checkpoint is not None)
    if checkpoint is not None and checkpoint.get("finished") and (run_dir / "run.json").exists():
        return None
    fit_rows = frame[frame["split"].isin(["train", "val"])]
    t0 = time.perf_counter()
    report = preprocess(fit_rows, cache_dir, config=frontend, progress=progress)
    preprocess_s = time.perf_counter() - t0
    train_ds = CacheDataset(cache_dir, fit_rows[fit_rows["split"] == "train"])
    val_ds = CacheDataset(cache_dir, fit_rows[fit_rows["split"] == "val"])
    n_ai = int(train_ds.labels.sum())
    if n_ai == 0 or n_ai == len(train_ds):
        hint = (f"; {len(train_ds.dropped)} unreadable clip(s) were left out, see "
                f"{cache_dir / 'failures.csv'}" if train_ds.dropped else "")
        raise ValueError(f"training needs both labels; got {n_ai} ai and "
                         f"{len(train_ds) - n_ai} human clips{hint}")
    training_data = describe_training_data(frame, manifest, n_clips=len(fit_rows))
    return _Prepared(run_dir, cache_dir, config, frontend, model_config, model_kind,
                     preset_name, fingerprint, train_ds, val_ds, report, preprocess_s,
                     training_data)


def _resume_settings(
    run_dir: Path, checkpoint: dict[str, Any], train_config: TrainConfig | None,
    frontend: FrontEndConfig | None,
) -> tuple[TrainConfig, FrontEndConfig]:
    """The run's own settings; refuse a call that asks for others."""
    saved = TrainConfig.from_dict(checkpoint["train_config"])
    saved_frontend = FrontEndConfig.from_dict(checkpoint["frontend"])
    changes = {f"train_config.{k}": v for k, v in config_changes(saved, train_config or saved)
               .items() if k not in RESUME_MAY_CHANGE}
    changes.update({f"frontend.{k}": v for k, v in
                    config_changes(saved_frontend, frontend or saved_frontend).items()})
    if changes:
        listed = "; ".join(f"{name} {old!r} -> {new!r}" for name, (old, new) in changes.items())
        raise ValueError(f"cannot resume {run_dir}: this call's settings differ from the run's "
                         f"({listed}). Pass the run's own settings (None keeps them) or train "
                         "into a new folder.")
    if train_config is not None:  # where and how fast it runs: this call decides
        saved = replace(saved, **{k: getattr(train_config, k) for k in RESUME_MAY_CHANGE})
    return saved, saved_frontend


def _splits(frame: pd.DataFrame, run_dir: Path, config: TrainConfig,
            resuming: bool) -> pd.DataFrame:
    """The manifest with the splits as trained: carved and saved, or read back on resume."""
    if not (frame["split"] == "train").any():  # say so before carving val fails on it
        raise ValueError(f"the manifest has no train rows (rows per split: "
                         f"{frame['split'].value_counts().to_dict()}); mark some split=train")
    saved = read_splits(run_dir) if resuming else None
    if saved is not None:
        changes = manifest_changes(saved, frame)
        if any(changes.values()):
            raise ValueError(
                f"cannot resume {run_dir}: the manifest is not the one it trained on "
                f"({changes['added']} row(s) added, {changes['removed']} removed, "
                f"{changes['changed']} with another label or split). Resume with that "
                "manifest, or train into a new folder.")
        return frame.drop(columns="split").merge(saved[["path", "split"]], on="path",
                                                  how="inner")
    carved = carve_val_split(frame, config.val_fraction, config.seed)
    write_csv(run_dir / SPLITS_FILE, carved[["path", "track_id", "label", "split"]].assign(
        manifest_split=frame["split"].to_numpy()))
    return carved


@dataclass
class _Trainer:
    """The moving parts `_fit` drives; `state` is the early-stopping and history record."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    generators: dict[str, torch.Generator]
    mixup_rng: np.random.Generator
    train_loader: torch.utils.data.DataLoader
    val_loader: torch.utils.data.DataLoader
    pos_weight: torch.Tensor | None
    device: torch.device
    state: dict[str, Any]


def _build(prep: _Prepared, checkpoint: dict[str, Any] | None) -> _Trainer:
    """Model, optimiser, schedule, loaders and generators; restored from `checkpoint` if any."""
    cfg = prep.config
    device = _resolve_device(cfg.device)
    _seed_everything(cfg.seed)
    model = build_model(prep.model_config, prep.model_kind).to(device)
    if device.type == "cpu" and (cfg.cpu_threads > 0 or model.count_parameters() < 1_000_000):
        torch.set_num_threads(cfg.cpu_threads or 1)
    optimizer = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr,
                                  betas=(0.9, 0.999))
    generators = {
        "data": torch.Generator().manual_seed(cfg.seed + 1),
        "augment": torch.Generator().manual_seed(cfg.seed + 2),
    }
    mixup_rng = np.random.default_rng(cfg.seed + 3)
    labels = prep.train_ds.labels
    train_loader = make_train_loader(prep.train_ds, labels, cfg, generators["data"],
                                     pin_memory=device.type == "cuda",
                                     draws_per_clip=cfg.draws_per_clip(prep.frontend))
    val_loader = torch.utils.data.DataLoader(
        prep.val_ds, batch_size=max(cfg.batch_size, 64), shuffle=False,
        num_workers=cfg.num_workers)
    total_steps = len(train_loader) * cfg.epochs
    warmup_steps = max(1, int(round(cfg.warmup_frac * total_steps)))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(total_steps, warmup_steps))
    n_ai = float(labels.sum())
    pos_weight = (torch.tensor((len(labels) - n_ai) / n_ai, device=device)
                  if cfg.class_balance == "pos_weight" else None)
    state = {"epoch": 0, "best_auc": -math.inf, "best_loss": math.inf, "best_epoch": 0,
             "bad_epochs": 0, "history": [], "train_seconds": 0.0, "stopped_early": False}
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        state.update({k: checkpoint[k] for k in state if k in checkpoint})
        _set_rng_state(checkpoint["rng"], generators, mixup_rng)
        log.info("resuming %s after epoch %d", prep.run_dir, state["epoch"])
    return _Trainer(model, optimizer, scheduler, generators, mixup_rng, train_loader,
                    val_loader, pos_weight, device, state)


def _finished(state: dict[str, Any], config: TrainConfig) -> bool:
    return state["epoch"] >= config.epochs or state["stopped_early"]


def _fit(t: _Trainer, prep: _Prepared, stop_after_epochs: int | None, progress: bool) -> bool:
    """Train epoch by epoch, checkpointing each; True once the run is finished."""
    cfg, state = prep.config, t.state
    epochs_this_call = 0
    while not _finished(state, cfg) and (stop_after_epochs is None
                                         or epochs_this_call < stop_after_epochs):
        t_epoch = time.perf_counter()
        epoch = state["epoch"] + 1
        train_loss, seen = _train_epoch(t, cfg, epoch, progress)
        val_loss, val_auc = _val_scores(*_predict_logits(t.model, t.val_loader, t.device,
                                                         cfg.amp))
        seconds = time.perf_counter() - t_epoch
        state["train_seconds"] += seconds
        state["epoch"] = epoch
        state["history"].append({
            "epoch": epoch, "train_loss": train_loss, "val_loss": val_loss,
            "val_roc_auc": val_auc, "lr": t.optimizer.param_groups[0]["lr"],
            "seconds": round(seconds, 3), "clips_per_second": round(seen / seconds, 2),
        })
        if _update_best(state, val_auc, val_loss, cfg.patience):
            _save_checkpoint({"model": t.model.state_dict(), "epoch": epoch, **prep.settings()},
                             prep.run_dir / "best.pt")
        if progress:
            tqdm.write(f"epoch {epoch}: train_loss {train_loss:.4f}  val_loss {val_loss:.4f}  "
                       f"val_roc_auc {val_auc:.4f}  ({seconds:.1f} s)")
        _save_checkpoint({
            "model": t.model.state_dict(), "optimizer": t.optimizer.state_dict(),
            "scheduler": t.scheduler.state_dict(), "rng": _rng_state(t.generators, t.mixup_rng),
            "finished": _finished(state, cfg), **state, **prep.settings(),
        }, prep.run_dir / "last.pt")
        write_csv(prep.run_dir / "history.csv", pd.DataFrame(state["history"]))
        epochs_this_call += 1
    return _finished(state, cfg)


def _train_epoch(t: _Trainer, cfg: TrainConfig, epoch: int, progress: bool) -> tuple[float, int]:
    """One pass over the training batches: (mean training loss, clips seen)."""
    t.model.train()
    total_loss, seen, t0 = 0.0, 0, time.perf_counter()
    bar = tqdm(t.train_loader, desc=f"epoch {epoch}/{cfg.epochs}", disable=not progress,
               leave=False, dynamic_ncols=True)
    window = t.model.config.n_frames
    for x, y in bar:
        x = random_crop(x, window, t.generators["augment"])  # (batch, n_mels, window)
        x, target = prepare_batch(x, y, cfg, t.generators["augment"], t.mixup_rng)
        x, target = x.to(t.device, non_blocking=True), target.to(t.device, non_blocking=True)
        with _autocast(t.device, cfg.amp):
            logits = t.model(x)  # (batch,)
        loss = F.binary_cross_entropy_with_logits(logits.float(), target,
                                                  pos_weight=t.pos_weight)
        t.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(t.model.parameters(), cfg.grad_clip)
        t.optimizer.step()
        t.scheduler.step()
        total_loss += loss.item() * len(x)
        seen += len(x)
        rate = seen / max(time.perf_counter() - t0, 1e-9)
        bar.set_postfix(loss=f"{total_loss / seen:.4f}", clips_s=f"{rate:.1f}")
    bar.close()
    return total_loss / max(seen, 1), seen


@dataclass
class Calibration:
    """Validation logits of the best epoch and what is fitted on them (`calibrate`)."""

    logits: np.ndarray
    y: np.ndarray
    temperature: float
    p: np.ndarray
    threshold: float
    fpr_threshold: float


def calibrate(logits: np.ndarray, y: np.ndarray, target_fpr: float) -> Calibration:
    """Temperature, max-F1 threshold and FPR threshold from validation logits alone.

    Parameters
    ----------
    logits : np.ndarray, shape (n,)
        Validation logits (a run keeps them in ``val_predictions.csv``).
    y : np.ndarray, shape (n,)
        1 for AI, 0 for human.
    target_fpr : float
        FPR on human clips the second threshold allows (`TrainConfig.target_fpr`).
    """
    logits, y = np.asarray(logits, float), np.asarray(y, float)
    temperature = fit_temperature(logits, y)
    p = sigmoid(logits / temperature)
    return Calibration(logits, y, temperature, p, choose_threshold_max_f1(y, p),
                       threshold_for_fpr(y, p, target_fpr))


def _calibrate(t: _Trainer, prep: _Prepared) -> Calibration:
    """Best weights back in; temperature and both thresholds fitted on validation only."""
    t.model.load_state_dict(load_checkpoint(prep.run_dir / "best.pt", t.device)["model"])
    logits, y = _predict_logits(t.model, t.val_loader, t.device, prep.config.amp)
    return calibrate(logits, y, prep.config.target_fpr)


def _fit_ood(prep: _Prepared) -> dict[str, Any] | None:
    """Descriptors of the training clips and the distance threshold on validation, for
    `helpers.ood.OODCheck`; None without validation clips."""
    if len(prep.val_ds) == 0:
        return None
    cap = 1024  # the check fits on a sample; reading every clip of a large corpus is slow
    rng = np.random.default_rng(prep.config.seed)
    paths = []
    for ds in (prep.train_ds, prep.val_ds):
        rows = ds.frame["path"].to_numpy()
        paths.append(rows if len(rows) <= cap else rows[np.sort(rng.choice(len(rows), cap,
                                                                           replace=False))])
    seconds = prep.frontend.duration
    train_desc, val_desc = (file_descriptors(p, seconds) for p in paths)
    if len(train_desc) < 2 or len(val_desc) == 0:
        log.warning("no out-of-distribution check: too few readable clips")
        return None
    check, info = OODCheck.fit(train_desc, val_desc, seconds=seconds, seed=prep.config.seed)
    check.save(prep.run_dir)
    return info


def _write(prep: _Prepared, t: _Trainer, cal: Calibration, t_start: float,
           ood: dict[str, Any] | None) -> None:
    """``val_predictions.csv`` and ``run.json``."""
    write_csv(prep.run_dir / "val_predictions.csv", prep.val_ds.frame[
        ["path", "track_id", "label"]].assign(logit=cal.logits, p_ai=cal.p))
    state, c = t.state, prep.model_config
    best = state["history"][state["best_epoch"] - 1]
    n_ai = int(prep.train_ds.labels.sum())
    write_json(prep.run_dir / "run.json", {
        "format": RUN_FORMAT,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),  # noqa: UP017
        **prep.settings(),
        "checkpoint": "best.pt",
        "temperature": cal.temperature,
        "threshold": cal.threshold,
        "thresholds": {"max_f1": cal.threshold, "fpr": cal.fpr_threshold,
                       "target_fpr": prep.config.target_fpr, "default": "max_f1"},
        "val_roc_auc": best["val_roc_auc"],
        "val_loss": best["val_loss"],
        "val_metrics": {"at_threshold": binary_metrics(cal.y, cal.p, cal.threshold),
                        "at_fpr_threshold": binary_metrics(cal.y, cal.p, cal.fpr_threshold)},
        "optimistic": {
            "values": ["best_epoch", "val_roc_auc", "val_loss", "val_metrics", "temperature",
                       "threshold", "thresholds"],
            "why": "chosen on the same validation clips (the epoch, the temperature and both "
                   "thresholds), so validation numbers flatter the model; `evaluate` on the "
                   "test split gives unbiased ones.",
        },
        "best_epoch": state["best_epoch"],
        "epochs_run": state["epoch"],
        "stopped_early": state["stopped_early"],
        "manifest_fingerprint": prep.fingerprint,
        "training_data": prep.training_data,
        "ood": ood,
        "n_clips": {"train": len(prep.train_ds), "val": len(prep.val_ds), "train_ai": n_ai,
                    "train_human": len(prep.train_ds) - n_ai},
        "dropped": prep.train_ds.dropped + prep.val_ds.dropped,
        "n_parameters": t.model.count_parameters(),
        "n_tokens": c.n_tokens if prep.model_kind == "spectttra" else c.n_patch_tokens,
        "device": str(t.device),
        "torch": torch.__version__,
        "cache_dir": str(prep.cache_dir.resolve()),
        "timings": {"preprocess_s": round(prep.preprocess_s, 3), "preprocess": prep.preprocess,
                    "train_s": round(state["train_seconds"], 3),
                    "this_call_s": round(time.perf_counter() - t_start, 3)},
    })
