"""How closely the PyTorch OpenL3 port reproduces the original Keras pipeline.

Runs the four checks of ``../shared/openl3_reference/README.md`` (random weights in the
official file layout, expected outputs of OpenL3 0.4.2 with TensorFlow) on all 31 frames and
writes the measured differences, next to the README's limits, to
``benchmarks/results/openl3_parity.json``. ``tests/test_openl3.py`` asserts the same limits;
this script records the numbers for the report::

    python -m benchmarks.openl3_parity
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from benchmarks.provenance import write_result
from helpers import openl3

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT.parent / "shared" / "openl3_reference"
RESULTS = ROOT / "benchmarks" / "results" / "openl3_parity.json"


def _rel_l2(got: np.ndarray, expected: np.ndarray) -> np.ndarray:
    return np.linalg.norm(got - expected, axis=1) / np.linalg.norm(expected, axis=1)


def measure(reference_dir: Path = REFERENCE) -> dict:
    """The four checks' differences, for the unfused and the default (BN-fused) model."""
    with np.load(reference_dir / "expected_mel128_tone_chirp.npz") as data:
        ref = {k: data[k] for k in data.files}
    audio, sr = sf.read(reference_dir / "tone_chirp_44k.wav")
    h5 = reference_dir / "mel128_music_random.h5"
    out: dict = {"fixture": "shared/openl3_reference (mel128/music/512, random weights)"}

    audio_48k = openl3.preprocess_audio(audio, sr)
    out["check1_audio_48k_max_abs"] = float(np.abs(audio_48k - ref["audio_48k"]).max())

    model = openl3.load_audio_embedding_model("mel128", "music", 512, weights=h5, fuse_bn=False)
    frames = openl3.frame_audio(audio_48k, hop_size=0.1, center=True)
    expected_logmel = ref["frontend_logmel"][..., 0]
    with torch.inference_mode():
        logmel = model.frontend(torch.from_numpy(frames.astype(np.float32))[:, None])[:, 0]
        conv = model.embed_logmel(torch.from_numpy(expected_logmel)[:, None]).numpy()
    diff = np.abs(logmel.numpy() - expected_logmel)
    out["check2_logmel_max_abs_db_above_-60"] = float(diff[expected_logmel > -60].max())
    out["check2_logmel_mean_abs_db"] = float(diff.mean())
    out["check3_conv_max_abs"] = float(np.abs(conv - ref["embedding"]).max())
    out["check3_conv_rel_l2_max"] = float(_rel_l2(conv, ref["embedding"]).max())
    for name, fuse in (("unfused", False), ("fused", True)):
        m = openl3.load_audio_embedding_model("mel128", "music", 512, weights=h5, fuse_bn=fuse)
        emb, _ = openl3.get_audio_embedding(audio, sr, m, hop_size=0.1, batch_size=32)
        # The layout the loader chose (channels-last on CPU) is part of what was checked.
        out[f"check4_{name}_channels_last"] = m.conv1_2.weight.is_contiguous(
            memory_format=torch.channels_last)
        out[f"check4_{name}_rel_l2_max"] = float(_rel_l2(emb, ref["embedding"]).max())
        out[f"check4_{name}_mean_abs"] = float(np.abs(emb - ref["embedding"]).mean())
    out["limits"] = {"check1_audio_48k_max_abs": 1e-6,
                     "check2_logmel_max_abs_db_above_-60": 0.05,
                     "check2_logmel_mean_abs_db": 0.01, "check3_conv_max_abs": 1e-3,
                     "check3_conv_rel_l2_max": 1e-5, "check4_rel_l2_max": 2e-2,
                     "check4_mean_abs": 5e-2}
    out["n_frames"] = len(frames)
    return out


def fixture_hashes(reference_dir: Path = REFERENCE) -> dict[str, str]:
    """SHA-256 of each fixture file: the numbers belong to these exact files."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(reference_dir.iterdir()) if p.is_file()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", type=Path, default=REFERENCE,
                        help="the openl3_reference fixture folder")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    result = measure(args.reference)
    config = {"reference_dir": str(args.reference), "fixture_sha256": fixture_hashes(
        args.reference), "model": "mel128/music/512", "hop_size": 0.1, "batch_size": 32}
    write_result(args.out, result, config)
    for key, value in result.items():
        if key.startswith("check") and not isinstance(value, bool):
            print(f"{key:40s} {value:.3g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
