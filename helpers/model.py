"""SpecTTTra: the Spectro-Temporal Tokens Transformer that tells AI music from human music.

SONICS (Rahman et al., ICLR 2025) tokenises a mel spectrogram twice instead of into square
patches: *temporal* tokens (a short run of frames across every mel bin) and *spectral* tokens (a
narrow band of mel bins across every frame). A 30 s clip then costs ~190 + ~40 tokens rather
than ~470 ViT patches, so attention is cheap enough to see the whole clip at once, and each token
already spans the whole spectrum or the whole clip.

This module holds only the network (no file I/O): `ModelConfig` with the `PRESETS`, `SpecTTTra`
and the square-patch `ViTPatchBaseline` built from the same transformer blocks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

_NORM_EPS = 1e-6  # per-clip std floor: a constant clip normalises to zeros, not NaN
_SILENT_DB = 1e-3  # a window whose dB range is below this holds no audio (padding, silence)


@dataclass(frozen=True)
class ModelConfig:
    """Shape and size of a `SpecTTTra` (or `ViTPatchBaseline`) network.

    Parameters
    ----------
    n_mels : int
        Mel bins of the input, ``FrontEndConfig.n_mels`` (128).
    n_frames : int
        Frames of the model's window (938 for 30 s, 313 for 10 s). The spectral tokeniser
        mixes all frames, so the network is built for one window length; a longer clip is
        scored window by window (see `SpecTTTra.forward`). Training sets it from
        ``TrainConfig.crop_seconds``.
    t_clip : int
        Frames per temporal token (one token = ``n_mels x t_clip`` values). When `n_frames` is
        not a multiple of `t_clip`, the normalised spectrogram is padded at the end with zeros
        (the clip mean) to the next multiple, so no audio is dropped; see `frame_policy`.
    f_clip : int
        Mel bins per spectral token (one token = ``f_clip x n_frames`` values). Bins left over
        when `n_mels` is not a multiple are padded the same way.
    dim : int
        Token width of the transformer.
    depth : int
        Number of transformer blocks.
    heads : int
        Attention heads; `dim` must be divisible by it.
    mlp_ratio : float
        Hidden width of each block's MLP as a multiple of `dim`.
    dropout : float
        Dropout after the token embedding, in the MLP and after attention.
    attn_dropout : float
        Dropout on the attention weights.
    frame_policy : str
        ``"pad"`` (default) pads frames/bins up to whole tokens; ``"crop"`` drops the last
        incomplete token instead (the SONICS reference code's ``floor``).
    patch_size : int
        Square patch side for `ViTPatchBaseline` only (AST/ViT use 16).
    input_norm : str
        ``"clip"`` (default): each window to zero mean and unit variance over all its values
        (`normalize_per_clip`). ``"band"``: each mel band's own mean over the window removed
        first (`normalize_per_band`), so the long-term spectral envelope (timbre, mix, EQ)
        is gone and only how each band moves in time is left.
    """

    n_mels: int = 128
    n_frames: int = 938
    t_clip: int = 5
    f_clip: int = 3
    dim: int = 384
    depth: int = 12
    heads: int = 6
    mlp_ratio: float = 4.0
    dropout: float = 0.1
    attn_dropout: float = 0.0
    frame_policy: str = "pad"
    patch_size: int = 16
    input_norm: str = "clip"

    def __post_init__(self) -> None:
        if self.input_norm not in ("clip", "band"):
            raise ValueError(f"input_norm must be 'clip' or 'band', got {self.input_norm!r}")
        if self.dim % self.heads:
            raise ValueError(f"dim ({self.dim}) must be divisible by heads ({self.heads})")
        if self.frame_policy not in ("pad", "crop"):
            raise ValueError(f"frame_policy must be 'pad' or 'crop', got {self.frame_policy!r}")
        for name in ("n_mels", "n_frames", "t_clip", "f_clip", "dim", "depth", "heads",
                     "patch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.t_clip > self.n_frames or self.f_clip > self.n_mels:
            raise ValueError(
                f"token clips (t_clip={self.t_clip}, f_clip={self.f_clip}) larger than the "
                f"input ({self.n_mels} mels x {self.n_frames} frames)"
            )

    def _tokens(self, size: int, clip: int) -> int:
        return -(-size // clip) if self.frame_policy == "pad" else size // clip

    @property
    def n_temporal_tokens(self) -> int:
        """Temporal tokens per clip: ``ceil(n_frames / t_clip)`` (``floor`` when cropping)."""
        return self._tokens(self.n_frames, self.t_clip)

    @property
    def n_spectral_tokens(self) -> int:
        """Spectral tokens per clip: ``ceil(n_mels / f_clip)`` (``floor`` when cropping)."""
        return self._tokens(self.n_mels, self.f_clip)

    @property
    def n_tokens(self) -> int:
        """Sequence length the transformer sees."""
        return self.n_temporal_tokens + self.n_spectral_tokens

    @property
    def n_patch_tokens(self) -> int:
        """Sequence length of the `ViTPatchBaseline` with the same input."""
        return self._tokens(self.n_mels, self.patch_size) * self._tokens(
            self.n_frames, self.patch_size
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown model settings {sorted(unknown)}")
        return cls(**data)


# Presets carry the network's size; `n_mels`/`n_frames` are filled in from the front end by
# `model_config_for` (training does this), so one preset serves 10 s and 30 s clips.
PRESETS: dict[str, ModelConfig] = {
    # Fits the 2-core CPU demo: trains on the synthetic corpus in a couple of minutes.
    "tiny": ModelConfig(
        t_clip=4,  # 313 frames (10 s) -> 79 temporal tokens; short sequences keep CPU fast
        f_clip=4,  # 128 bins -> 32 spectral tokens
        dim=64,  # ~0.1 M parameters in the blocks: enough for the demo's artifacts
        depth=2,
        heads=4,  # 16-dim heads
        mlp_ratio=2.0,  # halves the MLP cost, which dominates at this width
        dropout=0.1,
    ),
    # SpecTTTra-beta as published in SONICS (Rahman et al., ICLR 2025; awsaf49/sonics,
    # configs/spectttra_f3t5-5s.yaml and -120s.yaml): 384-dim tokens, 12 blocks, 6 heads,
    # MLP ratio 2.67, attention dropout 0.1, token clips (f_clip, t_clip) = (3, 5) (the
    # configs f1t3 / f3t5 / f5t7 are alpha / beta / gamma). 17.2 M parameters on 10 s
    # windows (SONICS' 5 s beta: 17.0 M, counted from its code). Where `base` still differs
    # from that code, and why:
    # - dropout 0.1 after the attention projection and in the MLP (SONICS: 0.0 there, 0.1
    #   after the tokens only); one `dropout` field serves `tiny` and `base`;
    # - a final LayerNorm before mean pooling (SONICS pools the last block's output) and a
    #   bias on the qkv projection (SONICS: none); timm ViT defaults that train stably;
    # - frame_policy "pad" keeps the last partial token (SONICS floors; "crop" matches it);
    # - the front end is librosa's Slaney mel (SONICS: torchaudio's HTK mel, no filter norm);
    # - the recipe: `TrainConfig` defaults are tuned for small corpora on a CPU (batch 16,
    #   lr 1e-3, no mixup, 10 s random windows); SONICS trains 50 epochs at batch 128, lr
    #   8e-4 with 5 warm-up epochs, mixup alpha 2.5 (p 0.5), label smoothing 0.02, grad
    #   clip 5, on random 5 s or 120 s crops.
    "base": ModelConfig(
        t_clip=5,  # 313 frames (10 s) -> 63 temporal tokens (padded from 313 to 315)
        f_clip=3,  # 128 bins -> 43 spectral tokens (padded from 128 to 129)
        dim=384,
        depth=12,
        heads=6,
        mlp_ratio=2.67,
        dropout=0.1,
        attn_dropout=0.1,
    ),
}


def model_config_for(preset: str | ModelConfig, n_mels: int, n_frames: int) -> ModelConfig:
    """A preset (by name) or config sized for an input of ``(n_mels, n_frames)``.

    Token clips larger than the input are shrunk to fit (a very short clip still builds).
    """
    if isinstance(preset, str):
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
        preset = PRESETS[preset]
    return replace(
        preset,
        n_mels=n_mels,
        n_frames=n_frames,
        t_clip=min(preset.t_clip, n_frames),
        f_clip=min(preset.f_clip, n_mels),
    )


def normalize_per_clip(x: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit standard deviation over each clip's ``(n_mels, frames)`` values.

    This makes the model blind to the recording level: a dB offset (a gain) cancels.
    """
    mean = x.mean(dim=(-2, -1), keepdim=True)  # (batch, 1, 1)
    std = x.std(dim=(-2, -1), keepdim=True)  # (batch, 1, 1)
    return (x - mean) / (std + _NORM_EPS)


def normalize_per_band(x: torch.Tensor) -> torch.Tensor:
    """Each mel band minus its mean over the window, then unit variance over the window.

    What is left is each band's movement in time: a static spectral tilt, an EQ or an
    instrument's average timbre cancels, as a gain does in `normalize_per_clip`.
    """
    x = x - x.mean(dim=-1, keepdim=True)  # (batch, n_mels, frames)
    return x / (x.std(dim=(-2, -1), keepdim=True) + _NORM_EPS)


class Attention(nn.Module):
    """Multi-head self-attention through `F.scaled_dot_product_attention` (flash/SDPA kernels)."""

    def __init__(self, dim: int, heads: int, attn_dropout: float = 0.0, dropout: float = 0.0):
        super().__init__()
        self.heads = heads
        self.attn_dropout = attn_dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, n, dim = x.shape
        qkv = self.qkv(x).reshape(batch, n, 3, self.heads, dim // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (batch, heads, n, head_dim)
        p = self.attn_dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=p)  # (batch, heads, n, head_dim)
        out = out.transpose(1, 2).reshape(batch, n, dim)  # (batch, n, dim)
        return self.drop(self.proj(out))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(ln(x))`` then ``x + mlp(ln(x))``."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        hidden = int(config.dim * config.mlp_ratio)
        self.norm1 = nn.LayerNorm(config.dim)
        self.attn = Attention(config.dim, config.heads, config.attn_dropout, config.dropout)
        self.norm2 = nn.LayerNorm(config.dim)
        self.mlp = nn.Sequential(
            nn.Linear(config.dim, hidden),
            nn.GELU(),
            nn.Linear(hidden, config.dim),
            nn.Dropout(config.dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))  # (batch, n, dim)
        return x + self.mlp(self.norm2(x))  # (batch, n, dim)


class _Classifier(nn.Module):
    """Shared trunk: tokens → blocks → LayerNorm → mean pool → linear head (one logit)."""

    config: ModelConfig

    def _build_trunk(self, config: ModelConfig) -> None:
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.depth))
        self.norm = nn.LayerNorm(config.dim)
        self.head = nn.Linear(config.dim, 1)

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for p in self.parameters():
            if p.dim() == 3 and p.shape[0] == 1:  # positional embeddings (1, n, dim)
                nn.init.trunc_normal_(p, std=0.02)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _check_input(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4 and x.shape[1] == 1:  # (batch, 1, n_mels, frames) image layout
            x = x[:, 0]
        c = self.config
        if x.dim() != 3 or x.shape[1] != c.n_mels or x.shape[2] < c.n_frames:
            raise ValueError(
                f"expected a dB mel batch of shape (batch, {c.n_mels}, frames) with frames >= "
                f"{c.n_frames} (the window the model is built for, ModelConfig.n_frames), got "
                f"{tuple(x.shape)}"
            )
        return x.float()

    def _embed_window(self, x: torch.Tensor) -> torch.Tensor:
        """``(batch, n_mels, n_frames)`` dB mels → ``(batch, dim)`` pooled embeddings."""
        norm = normalize_per_band if self.config.input_norm == "band" else normalize_per_clip
        x = norm(x)  # (batch, n_mels, n_frames)
        tokens = self.drop(self.tokens(x))  # (batch, n_tokens, dim)
        for block in self.blocks:
            tokens = block(tokens)  # (batch, n_tokens, dim)
        return self.norm(tokens).mean(dim=1)  # (batch, dim)

    def _per_window(self, x: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]
                    ) -> torch.Tensor:
        """`fn` on every window of a clip longer than the model's window, weighted mean.

        A clip of exactly ``n_frames`` frames is one window. A longer one is cut into windows
        of ``n_frames`` with half-window hops, the last flush with the clip's end, so every
        frame is seen; windows with no dynamics at all (the front end's zero padding after a
        short file, digital silence) get weight 0 unless the whole clip is such.
        """
        x = self._check_input(x)  # (batch, n_mels, frames)
        starts = window_starts(x.shape[-1], self.config.n_frames)
        if len(starts) == 1:
            return fn(x)
        win = torch.stack([x[..., s: s + self.config.n_frames] for s in starts], 1)
        batch, n_win = win.shape[:2]  # win: (batch, n_win, n_mels, n_frames)
        out = fn(win.flatten(0, 1))  # (batch * n_win, ...)
        out = out.reshape(batch, n_win, *out.shape[1:])  # (batch, n_win, ...)
        live = (win.amax(dim=(2, 3)) - win.amin(dim=(2, 3)) > _SILENT_DB).float()
        live = torch.where(live.sum(1, keepdim=True) > 0, live, torch.ones_like(live))
        w = (live / live.sum(1, keepdim=True)).view(batch, n_win, *[1] * (out.dim() - 2))
        return (out * w).sum(1)  # (batch, ...)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled clip embedding.

        Parameters
        ----------
        x : torch.Tensor, shape (batch, n_mels, frames)
            dB mel spectrograms (any level: each window is normalised first), at least
            ``n_frames`` long; a longer clip is cut into windows (see `forward`).

        Returns
        -------
        torch.Tensor, shape (batch, dim)
            Mean over tokens of the final LayerNorm output (then over windows).
        """
        return self._per_window(x, self._embed_window)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logit of P(AI) for each clip.

        Parameters
        ----------
        x : torch.Tensor, shape (batch, n_mels, frames)
            At least ``ModelConfig.n_frames`` frames. A longer clip is scored as the mean
            logit of its windows (``n_frames`` long, half-window hops, silent windows left
            out): a model trained on random crops reads a whole 30 s clip this way.

        Returns
        -------
        torch.Tensor, shape (batch,)
            ``sigmoid(logit)`` is the (uncalibrated) probability that the clip is AI-generated.
        """
        return self._per_window(
            x, lambda w: self.head(self._embed_window(w)).squeeze(-1))  # (batch,)

    def count_parameters(self, trainable_only: bool = True) -> int:
        """Number of (trainable) parameters."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)


class SpecTTTra(_Classifier):
    """Spectro-temporal tokens transformer for AI-vs-human music detection.

    Each clip is normalised to zero mean and unit variance, then cut into temporal tokens
    (``t_clip`` frames x all ``n_mels`` bins: what the whole spectrum does over ~0.1 s, where
    vocoder and upsampling artifacts show as frame-level texture) and spectral tokens
    (``f_clip`` bins x all frames: how one band behaves over the whole clip, where band-limited
    generators leave an empty or smeared top octave). A GELU'd Conv1d with stride = kernel
    embeds each group; both token types get learned positional embeddings and a LayerNorm, are
    concatenated and go through pre-norm transformer blocks; the mean of the final tokens is the
    clip embedding and a linear head gives one logit.

    Parameters
    ----------
    config : ModelConfig
        Sizes; see `PRESETS` and `model_config_for`.

    Examples
    --------
    >>> model = SpecTTTra(model_config_for("tiny", n_mels=128, n_frames=313))
    >>> model(torch.randn(2, 128, 313)).shape
    torch.Size([2])
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        c = config
        self.pad_frames = c.n_temporal_tokens * c.t_clip  # frames after pad/crop
        self.pad_mels = c.n_spectral_tokens * c.f_clip  # mel bins after pad/crop
        # Bias-free like the SONICS tokeniser: the LayerNorm after it re-centres anyway.
        self.temporal_embed = nn.Conv1d(c.n_mels, c.dim, c.t_clip, stride=c.t_clip, bias=False)
        self.spectral_embed = nn.Conv1d(
            self.pad_frames, c.dim, c.f_clip, stride=c.f_clip, bias=False
        )
        self.temporal_pos = nn.Parameter(torch.zeros(1, c.n_temporal_tokens, c.dim))
        self.spectral_pos = nn.Parameter(torch.zeros(1, c.n_spectral_tokens, c.dim))
        self.temporal_norm = nn.LayerNorm(c.dim)
        self.spectral_norm = nn.LayerNorm(c.dim)
        self._build_trunk(c)
        self._init_weights()

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised mel ``(batch, n_mels, frames)`` → tokens ``(batch, n_tokens, dim)``."""
        xt = _fit(x, self.config.n_mels, self.pad_frames)  # (batch, n_mels, pad_frames)
        xs = _fit(x, self.pad_mels, self.pad_frames)  # (batch, pad_mels, pad_frames)
        # Temporal: channels = mel bins, sequence = frames; kernel t_clip, stride t_clip.
        t = F.gelu(self.temporal_embed(xt))  # (batch, dim, n_t)
        t = self.temporal_norm(t.transpose(1, 2) + self.temporal_pos)  # (batch, n_t, dim)
        # Spectral: channels = frames, sequence = mel bins; kernel f_clip, stride f_clip.
        s = F.gelu(self.spectral_embed(xs.transpose(1, 2)))  # (batch, dim, n_s)
        s = self.spectral_norm(s.transpose(1, 2) + self.spectral_pos)  # (batch, n_s, dim)
        return torch.cat([t, s], dim=1)  # (batch, n_t + n_s, dim)


class ViTPatchBaseline(_Classifier):
    """ViT/AST-style baseline: square ``patch_size`` patches, same blocks, pooling and head.

    Only the tokeniser differs from `SpecTTTra`, so a benchmark of the two isolates what the
    spectro-temporal tokenisation buys (``config.n_patch_tokens`` vs ``config.n_tokens``).

    Parameters
    ----------
    config : ModelConfig
        `t_clip`/`f_clip` are ignored; `patch_size` sets the patch side (16).
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        c = config
        p = c.patch_size
        self.n_rows = c._tokens(c.n_mels, p)  # patches along mel bins
        self.n_cols = c._tokens(c.n_frames, p)  # patches along frames
        self.patch_embed = nn.Conv2d(1, c.dim, p, stride=p)
        self.pos = nn.Parameter(torch.zeros(1, self.n_rows * self.n_cols, c.dim))
        self._build_trunk(c)
        self._init_weights()

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised mel ``(batch, n_mels, frames)`` → tokens ``(batch, n_patches, dim)``."""
        p = self.config.patch_size
        x = _fit(x, self.n_rows * p, self.n_cols * p)  # (batch, rows * p, cols * p)
        x = self.patch_embed(x.unsqueeze(1))  # (batch, dim, rows, cols)
        return x.flatten(2).transpose(1, 2) + self.pos  # (batch, rows * cols, dim)


def window_starts(n_frames: int, window: int) -> list[int]:
    """First frame of each window: half-window hops, the last flush with the end.

    Examples
    --------
    >>> window_starts(938, 313)
    [0, 156, 312, 468, 625]
    """
    if n_frames <= window:
        return [0]
    hop = max(1, window // 2)
    starts = list(range(0, n_frames - window + 1, hop))
    return starts if starts[-1] == n_frames - window else [*starts, n_frames - window]


def _fit(x: torch.Tensor, n_mels: int, n_frames: int) -> torch.Tensor:
    """Zero-pad (the normalised clip's mean) or crop the last two axes to the given size."""
    x = x[:, :n_mels, :n_frames]
    pad_f, pad_m = n_frames - x.shape[-1], n_mels - x.shape[-2]
    if pad_f or pad_m:
        x = F.pad(x, (0, pad_f, 0, pad_m))
    return x


def build_model(config: ModelConfig, kind: str = "spectttra") -> _Classifier:
    """Build ``"spectttra"`` (`SpecTTTra`) or ``"vit"`` (`ViTPatchBaseline`) from a config."""
    if kind == "spectttra":
        return SpecTTTra(config)
    if kind == "vit":
        return ViTPatchBaseline(config)
    raise ValueError(f"unknown model kind {kind!r}; choose 'spectttra' or 'vit'")
