"""A trained run: loading it, calibrated predictions, scoring files, the rows it trained on.

The run folders here are written by hand (a fresh tiny model, a chosen temperature), so each
test knows exactly what `helpers.run` should give without training anything.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import tone

from helpers.audio import AudioError, load_clip, mel_db
from helpers.config import FrontEndConfig
from helpers.io import write_csv, write_json
from helpers.metrics import sigmoid
from helpers.model import build_model, model_config_for
from helpers.run import (
    describe_training_data,
    inference_threads,
    load_run,
    manifest_changes,
    predict_logits,
    predict_proba,
    read_splits,
    score_files,
    split_rows,
    training_data,
)

FRONT = FrontEndConfig(duration=2.0)
TEMPERATURE = 2.5

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A finished run folder as `train` leaves it, with a fresh tiny model and T = 2.5."""
    folder = tmp_path_factory.mktemp("run")
    config = model_config_for("tiny", FRONT.n_mels, FRONT.n_frames)
    torch.manual_seed(0)
    model = build_model(config)
    torch.save({"model": model.state_dict(), "epoch": 1}, folder / "best.pt")
    write_json(folder / "run.json", {"model_config": config.to_dict(), "model_kind": "spectttra",
                                     "frontend": FRONT.to_dict(), "checkpoint": "best.pt",
                                     "temperature": TEMPERATURE, "threshold": 0.5})
    return folder


def _mels(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, FRONT.n_mels, FRONT.n_frames, generator=g) * 12 - 45


def test_load_run_restores_the_saved_weights_in_eval_mode(run_dir):
    model, info = load_run(run_dir)
    saved = torch.load(run_dir / "best.pt", weights_only=True)["model"]
    assert not model.training and info["temperature"] == TEMPERATURE
    for key, value in model.state_dict().items():
        assert torch.equal(value, saved[key]), key


def test_predict_proba_is_sigmoid_of_logit_over_the_runs_temperature(run_dir):
    model, info = load_run(run_dir)
    mels = _mels(5)
    with torch.no_grad():
        logits = model(mels).double().numpy()
    assert np.abs(logits).max() > 0.01  # a temperature of 2.5 visibly changes these
    p = predict_proba(model, info, mels, batch_size=2)
    np.testing.assert_allclose(p, sigmoid(logits / TEMPERATURE), rtol=1e-5)
    assert not np.allclose(p, sigmoid(logits), rtol=1e-4)
    np.testing.assert_allclose(predict_logits(model, mels, batch_size=2), logits, rtol=1e-5)
    assert predict_proba(model, info, mels[0].numpy()).shape == (1,)  # one (n_mels, frames)


def test_score_files_uses_the_runs_front_end_and_marks_unreadable_files(run_dir, write_audio):
    paths = [write_audio(f"c{i}.wav", tone(2.5, 22_050, 300.0 + 200 * i, seed=i), 22_050)
             for i in range(3)]
    model, info = load_run(run_dir)
    expected = predict_proba(model, info, np.stack([mel_db(load_clip(p, FRONT), FRONT)
                                                    for p in paths]))
    scores = score_files(run_dir, [paths[0], "/nonexistent.wav", *paths[1:]], batch_size=2,
                         on_error="nan")
    assert np.isnan(scores[1])
    np.testing.assert_allclose(scores[[0, 2, 3]], expected, rtol=1e-5)
    with pytest.raises(AudioError):
        score_files(run_dir, ["/nonexistent.wav"])


def test_an_unfinished_run_says_how_to_finish_it(tmp_path):
    (tmp_path / "last.pt").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"resume=True"):
        load_run(tmp_path)


# --- the rows a run trained on -----------------------------------------------------------------


def _manifest() -> pd.DataFrame:
    rows = [{"path": f"/m/{s}{i}.wav", "label": ("ai", "human")[i % 2], "split": s,
             "track_id": f"{s}{i}"} for s in ("train", "test") for i in range(6)]
    return pd.DataFrame(rows)


def _carved_splits(frame: pd.DataFrame, run: Path) -> pd.DataFrame:
    """splits.csv as `train` writes it: train rows 0 and 1 carved out as validation."""
    carved = frame.assign(manifest_split=frame["split"])
    carved.loc[[0, 1], "split"] = "val"
    write_csv(run / "splits.csv", carved)
    return carved


def test_split_rows_follows_the_validation_split_carved_at_training_time(tmp_path):
    frame = _manifest()
    _carved_splits(frame, tmp_path)
    assert split_rows(frame, "val", tmp_path)["path"].tolist() == ["/m/train0.wav",
                                                                   "/m/train1.wav"]
    assert len(split_rows(frame, "train", tmp_path)) == 4
    assert split_rows(frame, "test", tmp_path)["path"].tolist() == frame["path"][6:].tolist()
    assert len(split_rows(frame, "all", tmp_path)) == 12
    with pytest.raises(ValueError, match=r"no 'val' rows"):
        split_rows(frame, "val")  # no run folder: the manifest has no validation rows
    own_val = frame.assign(split=["val"] * 3 + ["train"] * 3 + ["test"] * 6)
    assert len(split_rows(own_val, "val", tmp_path)) == 3  # the manifest's own val rows win


def test_manifest_changes_counts_added_removed_and_changed_rows(tmp_path):
    frame = _manifest()
    saved = _carved_splits(frame, tmp_path)
    assert read_splits(tmp_path).equals(saved)
    assert manifest_changes(saved, frame) == {"added": 0, "removed": 0, "changed": 0}
    new = frame.drop(index=[3, 4])
    new = pd.concat([new, frame.iloc[[0]].assign(path="/m/new.wav")], ignore_index=True)
    new.loc[new["path"] == "/m/test0.wav", "label"] = "human"  # was ai
    new.loc[new["path"] == "/m/train0.wav", "split"] = "test"  # carved val, manifest train
    assert manifest_changes(saved, new) == {"added": 1, "removed": 2, "changed": 2}
    # a run written before manifest_split was recorded: a carved val row is not a change
    legacy = saved.drop(columns="manifest_split")
    assert manifest_changes(legacy, frame) == {"added": 0, "removed": 0, "changed": 0}
    assert manifest_changes(legacy, new)["changed"] == 2
    assert read_splits(tmp_path / "nowhere") is None


# --- what a run trained on --------------------------------------------------------------------


def _demo_like_corpus(root: Path) -> pd.DataFrame:
    """A folder laid out as `helpers.synth.make_corpus` writes it (without the audio)."""
    write_json(root / "corpus.json", {"generator_version": 1, "config": {}})
    rows = [{"path": str(root / "audio" / label / "pop" / f"{label}{i}.wav"), "label": label,
             "split": "train", "source": "synth"} for label in ("ai", "human") for i in range(2)]
    frame = pd.DataFrame(rows)
    write_csv(root / "manifest.csv", frame)
    return frame


def test_describe_training_data_tells_demo_sonics_and_custom_apart(tmp_path):
    demo = _demo_like_corpus(tmp_path / "demo")
    as_file = describe_training_data(demo, tmp_path / "demo")
    assert as_file["kind"] == "synthetic-demo"
    assert as_file["corpus_root"] == str((tmp_path / "demo").resolve())
    assert as_file["manifest"] == str((tmp_path / "demo" / "manifest.csv").resolve())
    as_frame = describe_training_data(demo, demo, n_clips=3)  # demo: run_demo passes a frame
    assert (as_frame["kind"], as_frame["corpus_root"], as_frame["manifest"],
            as_frame["n_clips"]) == ("synthetic-demo", as_file["corpus_root"], None, 3)
    sonics = demo.assign(source=["sonics-suno", "sonics-udio", "gtzan", "gtzan"],
                         path=[f"/d/{i}.mp3" for i in range(4)])
    assert describe_training_data(sonics)["kind"] == "sonics"
    assert describe_training_data(sonics)["sources"] == {"gtzan": 2, "sonics-suno": 1,
                                                         "sonics-udio": 1}
    custom = describe_training_data(sonics.assign(source=""))
    assert (custom["kind"], custom["corpus_root"], custom["n_clips"]) == ("custom", None, 4)


def test_training_data_of_a_run_from_before_it_was_recorded(tmp_path):
    demo = _demo_like_corpus(tmp_path / "demo")
    old_run = tmp_path / "old_run"
    write_csv(old_run / "splits.csv", demo.assign(split=["train", "val", "train", "test"]))
    found = training_data(old_run, {})
    assert (found["kind"], found["n_clips"]) == ("synthetic-demo", 3)
    assert found["corpus_root"] == str((tmp_path / "demo").resolve())
    write_csv(old_run / "splits.csv", demo.assign(path=[f"/d/{i}.wav" for i in range(4)]))
    assert training_data(old_run, {})["kind"] == "unknown"
    recorded = {"kind": "custom", "manifest": None}
    assert training_data(old_run, {"training_data": recorded}) is recorded


def test_a_small_model_scores_on_one_thread_and_restores_the_setting(monkeypatch):
    seen = []
    small = build_model(model_config_for("tiny", 128, 63))
    real_forward = small.forward

    def spy(x):
        seen.append(torch.get_num_threads())
        return real_forward(x)

    monkeypatch.setattr(small, "forward", spy)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        predict_logits(small, np.zeros((3, 128, 63), np.float32), batch_size=2)
        assert seen == [1, 1] and torch.get_num_threads() == 2
        big = torch.nn.Linear(1100, 1000)  # 1.1 M parameters: keeps the threads it has
        with inference_threads(big):
            assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
