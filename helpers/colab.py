"""Notebook set-up: where the work goes, Google Drive on Colab, Kaggle secrets, the hardware.

Colab forgets its disk when the runtime is reset. With ``use_drive=True`` the downloads
(kagglehub's cache and the OpenL3 weights), feature caches, runs, indexes and figures live on
Google Drive, so a notebook restarted after a reset finds them and resumes instead of starting
over.

The repository address
----------------------
On Colab the notebooks install this package from its git repository. The address is set in one
place per runtime: the ``HELPERS_REPO_URL`` environment variable (``REPO_URL_ENV``), e.g. a
first cell ``%env HELPERS_REPO_URL=https://github.com/OWNER/REPO.git``, or the notebook's
``REPO_URL`` parameter, which wins when it is not empty. Each notebook's first code cell reads
it (that cell runs before this package is importable, so it cannot live here) and stops with a
message naming both when neither is set. The README's Colab badges use the same
``OWNER/REPO``.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_URL_ENV = "HELPERS_REPO_URL"
DRIVE_ROOT = "/content/drive/MyDrive/ai-music"
# Read by kagglehub at each download (kagglehub.config.get_cache_folder); set it before the
# first download so archives land on Drive.
KAGGLEHUB_CACHE_ENV = "KAGGLEHUB_CACHE"
OPENL3_WEIGHTS_ENV = "HELPERS_OPENL3_DIR"  # helpers.openl3.WEIGHTS_ENV; not imported: torch
# Kaggle's current token flow first (what kagglehub >= 0.3 reads), then the legacy pair.
KAGGLE_TOKEN_SECRET = "KAGGLE_API_TOKEN"
KAGGLE_LEGACY_SECRETS = ("KAGGLE_USERNAME", "KAGGLE_KEY")


@dataclass(frozen=True)
class NotebookEnv:
    """What `setup_notebook` prepared.

    Attributes
    ----------
    work : Path
        Data, caches, runs, indexes (on Drive when asked for on Colab).
    figures : Path
        Where the notebooks save their PNGs (``work/figures`` unless given).
    hardware : dict
        `hardware()` at set-up time.
    exported : dict
        Environment variables this set-up set, name -> value (secrets' values hidden).
    """

    work: Path
    figures: Path
    hardware: dict[str, Any]
    exported: dict[str, str] = field(default_factory=dict)


def in_colab() -> bool:
    """Whether this code runs in Google Colab."""
    try:
        import google.colab  # type: ignore[import-not-found]  # noqa: F401
    except ImportError:
        return False
    return True


def work_dir(path: str | os.PathLike, use_drive: bool = False,
             drive_root: str = DRIVE_ROOT) -> Path:
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


def keep_downloads_in(work: str | os.PathLike,
                      env: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Point kagglehub's cache and the OpenL3 weights cache into `work`.

    Without this they stay in ``~/.cache`` on the Colab VM, so a runtime reset loses the
    download while the manifest on Drive still points at it. A variable the user already set
    is left alone.

    Parameters
    ----------
    work : str or path-like
        The work folder (on Drive).
    env : mutable mapping, optional
        The environment to change (default ``os.environ``).

    Returns
    -------
    dict
        The variables set, name -> folder.
    """
    env = os.environ if env is None else env
    wanted = {KAGGLEHUB_CACHE_ENV: Path(work) / "kagglehub",
              OPENL3_WEIGHTS_ENV: Path(work) / "openl3"}
    exported = {}
    for name, folder in wanted.items():
        if not env.get(name):
            folder.mkdir(parents=True, exist_ok=True)
            env[name] = exported[name] = str(folder)
    return exported


def _colab_secret(name: str) -> str | None:
    from google.colab import userdata  # type: ignore[import-not-found]

    return userdata.get(name)


def export_kaggle_secrets(env: MutableMapping[str, str] | None = None,
                          get_secret: Callable[[str], str | None] | None = None
                          ) -> list[str]:
    """Copy Kaggle credentials from Colab secrets into the environment.

    ``KAGGLE_API_TOKEN`` (Kaggle's current API token) is copied when set, else the legacy
    ``KAGGLE_USERNAME`` + ``KAGGLE_KEY`` pair. Nothing is read when the environment already
    has either, or outside Colab. Once in the environment, `helpers.sources` and kagglehub find
    them the same way as on a laptop (where ``~/.kaggle/access_token`` or
    ``~/.kaggle/kaggle.json`` also work).

    Parameters
    ----------
    env : mutable mapping, optional
        The environment to change (default ``os.environ``).
    get_secret : callable, optional
        ``name -> value or None``; default: Colab's ``userdata.get`` (on Colab only).

    Returns
    -------
    list of str
        The names exported (empty when none were found or the notebook may not read them).
    """
    env = os.environ if env is None else env
    if env.get(KAGGLE_TOKEN_SECRET) or all(env.get(n) for n in KAGGLE_LEGACY_SECRETS):
        return []
    if get_secret is None:
        if not in_colab():
            return []
        get_secret = _colab_secret

    def read(name: str) -> str:
        try:
            return (get_secret(name) or "").strip()
        except Exception:  # noqa: BLE001 - Colab raises its own types for "missing", "denied"
            return ""

    token = read(KAGGLE_TOKEN_SECRET)
    if token:
        env[KAGGLE_TOKEN_SECRET] = token
        return [KAGGLE_TOKEN_SECRET]
    values = [read(n) for n in KAGGLE_LEGACY_SECRETS]
    if all(values):
        env.update(zip(KAGGLE_LEGACY_SECRETS, values))
        return list(KAGGLE_LEGACY_SECRETS)
    return []


def setup_notebook(work: str | os.PathLike, use_drive: bool = False,
                   figures: str | os.PathLike | None = None,
                   drive_root: str = DRIVE_ROOT) -> NotebookEnv:
    """Set up a notebook: its work folder, its figures folder and (on Drive) the download caches.

    Parameters
    ----------
    work : str or path-like
        The work folder (``WORK_DIR``); git-ignored ``../work`` by default in the notebooks.
    use_drive : bool
        On Colab: mount Drive, use `drive_root` as the work folder and keep kagglehub's
        cache and the OpenL3 weights there too (`keep_downloads_in`).
    figures : str or path-like, optional
        Where figures go; default ``<work>/figures``, so the tracked ``figures/`` folder of the
        repository is never touched by a notebook.
    drive_root : str
        Folder on the mounted Drive.

    Returns
    -------
    NotebookEnv
    """
    folder = work_dir(work, use_drive=use_drive, drive_root=drive_root)
    exported = keep_downloads_in(folder) if use_drive and in_colab() else {}
    fig_dir = Path(figures) if figures is not None else folder / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    print(f"work folder: {folder.resolve()}\nfigures:     {fig_dir.resolve()}")
    for name, value in exported.items():
        print(f"{name}={value}")
    return NotebookEnv(folder, fig_dir, hardware(), exported)


def hardware() -> dict[str, Any]:
    """What this machine offers: CPU cores, the GPU if any, and the torch build."""
    import torch  # lazy: the CLI imports this module and torch takes seconds to load

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
