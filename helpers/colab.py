"""Notebook set-up: where the work goes, Google Drive on Colab, and what hardware is here.

Colab forgets its disk when it disconnects. With ``use_drive=True`` the downloads, feature
caches, runs and indexes live on Google Drive, so a notebook restarted after a disconnect finds
them and resumes instead of starting over.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any


def in_colab() -> bool:
    """Whether this code runs in Google Colab."""
    try:
        import google.colab  # type: ignore[import-not-found]  # noqa: F401
    except ImportError:
        return False
    return True


def work_dir(path: str | os.PathLike, use_drive: bool = False,
             drive_root: str = "/content/drive/MyDrive/ai-music") -> Path:
    """The folder a notebook writes to, created if needed.

    Parameters
    ----------
    path : str or path-like
        The folder when Drive is not used (relative paths are relative to the notebook).
    use_drive : bool
        On Colab, mount Google Drive and use `drive_root` instead (ignored elsewhere).
    drive_root : str
        Folder on the mounted Drive.

    Returns
    -------
    Path
    """
    if use_drive and in_colab():
        from google.colab import drive  # type: ignore[import-not-found]

        drive.mount("/content/drive")
        path = drive_root
    out = Path(path).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    return out


def hardware() -> dict[str, Any]:
    """What this machine offers: CPU cores, the GPU if any, and the torch build."""
    import torch

    info: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                            "cpu_count": os.cpu_count(), "colab": in_colab()}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = props.name
        info["gpu_memory_gb"] = round(props.total_memory / 2**30, 1)
        info["bf16"] = torch.cuda.is_bf16_supported()
    else:
        info["gpu"] = None
    return info
