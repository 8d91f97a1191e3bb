"""Notebook set-up: work and figures folders, Drive on Colab, Kaggle secrets into the environment.

Colab is faked with a `google.colab` module in `sys.modules`; kagglehub itself is real, so the
variable names are checked against what kagglehub reads.
"""

from __future__ import annotations

import os
import sys
import types

import pytest

from helpers import colab


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    # A home without ~/.kaggle, so only what a test sets can be found.
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for name in ("KAGGLEHUB_CACHE", "HELPERS_OPENL3_DIR", "KAGGLE_API_TOKEN", "KAGGLE_USERNAME",
                 "KAGGLE_KEY", "KAGGLE_CONFIG_DIR"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.fixture
def fake_colab(clean_env, tmp_path):
    """A `google.colab` whose `drive.mount` records calls and whose secrets are a dict."""
    mounts: list[str] = []
    secrets: dict[str, str] = {}

    def get(name):
        if name not in secrets:
            raise KeyError(name)  # Colab raises SecretNotFoundError
        return secrets[name]

    mod = types.ModuleType("google.colab")
    mod.drive = types.SimpleNamespace(mount=mounts.append)
    mod.userdata = types.SimpleNamespace(get=get)
    try:  # the real `google` namespace package (protobuf, which kagglehub needs) stays
        import google
    except ImportError:
        google = types.ModuleType("google")
        clean_env.setitem(sys.modules, "google", google)
    clean_env.setattr(google, "colab", mod, raising=False)
    clean_env.setitem(sys.modules, "google.colab", mod)
    return types.SimpleNamespace(mounts=mounts, secrets=secrets, drive_root=tmp_path / "drive")


def test_figures_go_under_the_work_folder_by_default(clean_env, tmp_path):
    nb = colab.setup_notebook(tmp_path / "work")
    assert nb.figures == tmp_path / "work" / "figures"
    assert nb.figures.is_dir()
    assert nb.exported == {}
    assert "torch" in nb.hardware


def test_figures_folder_can_be_chosen(clean_env, tmp_path):
    nb = colab.setup_notebook(tmp_path / "work", figures=tmp_path / "elsewhere")
    assert nb.figures == tmp_path / "elsewhere" and nb.figures.is_dir()


def test_drive_holds_work_and_kagglehub_cache_on_colab(fake_colab):
    from kagglehub.config import get_cache_folder

    nb = colab.setup_notebook("ignored", use_drive=True, drive_root=str(fake_colab.drive_root))
    assert fake_colab.mounts == ["/content/drive"]
    assert nb.work == fake_colab.drive_root
    # kagglehub's own lookup, so a wrong variable name fails here.
    assert get_cache_folder() == str(fake_colab.drive_root / "kagglehub")
    assert colab.OPENL3_WEIGHTS_ENV == "HELPERS_OPENL3_DIR"
    assert set(nb.exported) == {"KAGGLEHUB_CACHE", "HELPERS_OPENL3_DIR"}


def test_openl3_weights_follow_the_work_folder_on_drive(fake_colab):
    from helpers.openl3 import weights_cache_dir

    colab.setup_notebook("ignored", use_drive=True, drive_root=str(fake_colab.drive_root))
    assert weights_cache_dir() == fake_colab.drive_root / "openl3"


def test_a_cache_folder_the_user_set_is_kept(fake_colab, tmp_path):
    env = {"KAGGLEHUB_CACHE": str(tmp_path / "mine")}
    exported = colab.keep_downloads_in(tmp_path / "work", env=env)
    assert env["KAGGLEHUB_CACHE"] == str(tmp_path / "mine")
    assert env["HELPERS_OPENL3_DIR"] == str(tmp_path / "work" / "openl3")
    assert list(exported) == ["HELPERS_OPENL3_DIR"]


def test_downloads_stay_put_without_drive(fake_colab, tmp_path):
    colab.setup_notebook(tmp_path / "work", use_drive=False)
    assert fake_colab.mounts == []
    assert "KAGGLEHUB_CACHE" not in os.environ


def test_use_drive_is_ignored_off_colab(clean_env, tmp_path):
    nb = colab.setup_notebook(tmp_path / "work", use_drive=True,
                              drive_root=str(tmp_path / "drive"))
    assert nb.work == tmp_path / "work"
    assert "KAGGLEHUB_CACHE" not in os.environ


def test_current_kaggle_token_secret_reaches_kagglehub(fake_colab):
    from kagglehub.config import get_kaggle_credentials

    fake_colab.secrets.update(KAGGLE_API_TOKEN=" KGAT_abc \n", KAGGLE_USERNAME="u",
                              KAGGLE_KEY="k")
    assert colab.export_kaggle_secrets() == ["KAGGLE_API_TOKEN"]
    creds = get_kaggle_credentials()
    assert creds is not None and creds.api_key == "KGAT_abc"


def test_legacy_kaggle_secrets_reach_kagglehub(fake_colab):
    from kagglehub.config import get_kaggle_credentials

    fake_colab.secrets.update(KAGGLE_USERNAME="someone", KAGGLE_KEY="k123")
    assert colab.export_kaggle_secrets() == ["KAGGLE_USERNAME", "KAGGLE_KEY"]
    creds = get_kaggle_credentials()
    assert (creds.username, creds.key) == ("someone", "k123")


def test_half_a_legacy_pair_exports_nothing():
    env: dict[str, str] = {}
    assert colab.export_kaggle_secrets(env, {"KAGGLE_USERNAME": "u"}.get) == []
    assert env == {}


def test_credentials_already_in_the_environment_win():
    asked: list[str] = []

    def secret(name):
        asked.append(name)
        return "from-secret"

    env = {"KAGGLE_API_TOKEN": "from-env"}
    assert colab.export_kaggle_secrets(env, secret) == []
    assert env == {"KAGGLE_API_TOKEN": "from-env"} and asked == []
    env = {"KAGGLE_USERNAME": "u", "KAGGLE_KEY": "k"}
    assert colab.export_kaggle_secrets(env, secret) == []
    assert env == {"KAGGLE_USERNAME": "u", "KAGGLE_KEY": "k"} and asked == []


def test_secrets_the_notebook_may_not_read_are_skipped():
    def denied(name):
        raise PermissionError("notebook access not granted")

    env: dict[str, str] = {}
    assert colab.export_kaggle_secrets(env, denied) == []
    assert env == {}


def test_no_secrets_read_off_colab(clean_env):
    assert colab.export_kaggle_secrets() == []
    assert "KAGGLE_API_TOKEN" not in os.environ
