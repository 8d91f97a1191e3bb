"""Bad input: every entry point names the bad file in one line; batch jobs skip it and finish.

The corpus comes from `bad_inputs.make_bad_corpus` (truncated/zero-byte/mislabelled files,
NaN/Inf, silence, a blip, odd rates and channels, a locked file, a non-UTF-8 name).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
import tracemalloc

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from bad_inputs import (
    EITHER,
    ERRORS,
    NON_UTF8_NAME,
    READABLE,
    make_bad_corpus,
    refuse_to_open,
    write_long_wav,
)
from conftest import tone

from helpers.audio import AudioError, load_clip
from helpers.cli import main
from helpers.config import FrontEndConfig
from helpers.datasets import ManifestError, load_manifest, write_manifest
from helpers.evaluate import evaluate
from helpers.index import index_files
from helpers.pipeline import analyze, analyze_many
from helpers.run import score_files
from helpers.train import TrainConfig, train

FRONT = FrontEndConfig(duration=2.0)
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
# Files the front end rejects here: the locked file only when permissions apply.
FAILING = set(ERRORS) | (set() if IS_ROOT else {"unreadable"})
TEST_SPLIT_BAD = ("nan", "zero_byte")  # bad files placed in the test split


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def bad(tmp_path_factory) -> dict:
    return make_bad_corpus(tmp_path_factory.mktemp("bad"))


@pytest.fixture(scope="module")
def project(tmp_path_factory, bad) -> dict:
    """Good clips plus the whole bad corpus in one manifest; a 1-epoch run; a features index."""
    root = tmp_path_factory.mktemp("project")
    rows = []
    rng = np.random.default_rng(0)
    for label in ("ai", "human"):
        for i in range(8):
            if label == "ai":
                y = tone(2.0, 16_000, 300.0 + 50 * i, seed=i)
            else:
                y = (0.2 * rng.standard_normal(32_000)).astype(np.float32)
            path = root / f"{label}{i}.wav"
            sf.write(path, y, 16_000)
            rows.append({"path": str(path), "label": label, "split": "test" if i >= 6 else
                         "train", "track_id": f"{label}{i}"})
    for j, (name, path) in enumerate(sorted(bad.items())):
        split = "test" if name in TEST_SPLIT_BAD else "train"
        rows.append({"path": str(path), "label": ("ai", "human")[j % 2], "split": split,
                     "track_id": f"bad_{name}"})
    frame = pd.DataFrame(rows)
    csv = write_manifest(frame[frame["path"] != str(bad["non_utf8_name"])],  # CSVs are UTF-8
                         root / "manifest.csv")
    run = train(frame, root / "run", preset="tiny", cache_dir=root / "cache", frontend=FRONT,
                train_config=TrainConfig(epochs=1, batch_size=8, device="cpu", patience=0),
                progress=False)
    code = main(["index", "--manifest", str(csv), "--out", str(root / "index"),
                 "--embedder", "features"])
    assert code == 0
    return {"root": root, "frame": frame, "csv": csv, "run": run, "index": root / "index",
            "label": dict(zip(frame["path"], frame["label"], strict=True))}


def _one_line_naming(text: str, path) -> None:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, text
    assert str(path) in lines[0], text


# --- the front end on each bad input --------------------------------------------------------


@pytest.mark.parametrize("name", READABLE)
def test_readable_oddities_give_a_full_clip(bad, name):
    clip = load_clip(bad[name], FRONT)
    assert clip.shape == (FRONT.n_samples,) and clip.dtype == np.float32
    assert np.isfinite(clip).all() and np.abs(clip).max() > 0.05


@pytest.mark.parametrize("name", sorted(ERRORS))
def test_broken_files_raise_one_line_naming_the_file(bad, name):
    with pytest.raises(AudioError) as info:
        load_clip(bad[name], FRONT)
    message = str(info.value)
    assert message.startswith(f"{bad[name]}: ")
    assert ERRORS[name] in message and "\n" not in message
    assert info.value.path == str(bad[name])


def test_an_mp3_named_wav_decodes_exactly_like_the_mp3(bad):
    np.testing.assert_array_equal(load_clip(bad["mp3_named_wav"], FRONT),
                                  load_clip(bad["mp3"], FRONT))


def test_truncated_mp3_gives_its_decodable_start_zero_padded(bad):
    assert "truncated_mp3" in EITHER
    clip = load_clip(bad["truncated_mp3"], FrontEndConfig(duration=3.0))
    full = load_clip(bad["mp3"], FrontEndConfig(duration=3.0))
    heard = np.flatnonzero(np.abs(clip) > 1e-4)
    # 40 % of the bytes hold roughly 40 % of the 3 s; the rest is the front end's padding
    assert 0.5 < len(clip[: heard[-1]]) / 16_000 < 2.0
    assert np.corrcoef(clip[:8_000], full[:8_000])[0, 1] > 0.99


def test_a_locked_file_is_a_permission_error(bad, monkeypatch):
    if IS_ROOT:  # root reads the mode-000 file: the OS's refusal is injected instead
        refuse_to_open(monkeypatch, bad["unreadable"])
    with pytest.raises(AudioError) as info:
        load_clip(bad["unreadable"], FRONT)
    assert str(info.value) == f"{bad['unreadable']}: permission denied (check file permissions)"


def test_non_utf8_file_names_are_read_and_named(bad, tmp_path, caplog):
    path = bad["non_utf8_name"]
    assert os.fsencode(path).endswith(b"caf\xe9.wav")
    np.testing.assert_allclose(load_clip(path, FrontEndConfig(duration=2.0, sample_rate=22_050)),
                               tone(2.0, 22_050, 660.0, seed=9), atol=1e-4)
    broken = tmp_path / NON_UTF8_NAME
    broken.write_bytes(b"not audio at all" * 10)
    with pytest.raises(AudioError, match="cannot decode") as info:
        load_clip(broken, FRONT)
    assert NON_UTF8_NAME in str(info.value)
    # Tables (cache, runs, index) are UTF-8 CSV: a manifest leaves such a file out, saying so.
    folder = tmp_path / "corpus"
    for label in ("ai", "human"):
        (folder / label).mkdir(parents=True)
        shutil.copy(bad["good"], folder / label / "ok.wav")
    shutil.copy(path, folder / "human" / NON_UTF8_NAME)
    with caplog.at_level(logging.WARNING):
        manifest = load_manifest(folder)
    assert sorted(manifest["track_id"]) == ["ai/ok", "human/ok"]
    assert "caf\\udce9.wav: file name is not valid UTF-8" in caplog.text


def test_a_two_hour_file_costs_30_seconds_of_time_and_memory(bad, tmp_path):
    long_wav = write_long_wav(tmp_path / "two_hours.wav")  # 57.6 M samples, ~115 MB
    try:
        assert long_wav.stat().st_size > 110e6
        load_clip(bad["good"])  # warm the libraries up on a small file
        # numpy reports its buffers to tracemalloc, so a decode of the whole file would show
        # (230 MB as float32; measured 230.4 MB for soundfile.read of it)
        tracemalloc.start()
        try:
            t0 = time.perf_counter()
            clip = load_clip(long_wav)  # the default front end: the first 30 s
            seconds = time.perf_counter() - t0
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    finally:
        long_wav.unlink()
    assert peak < 20e6, f"reading 30 s allocated {peak / 1e6:.0f} MB at peak"  # measured 2 MB
    assert seconds < 2.0  # measured 0.01 s
    assert len(clip) == 30 * 16_000 and np.abs(clip[-800:]).max() > 0.1  # 30 s, no padding


# --- batch jobs: skip, log, finish -----------------------------------------------------------


def test_training_leaves_out_unreadable_files_and_lists_them(project, bad):
    info = json.loads((project["run"] / "run.json").read_text())
    expected = {str(bad[n]) for n in FAILING if n not in TEST_SPLIT_BAD}
    assert set(info["dropped"]) == expected
    failures = pd.read_csv(project["root"] / "cache" / "failures.csv")
    assert set(failures["path"]) == expected
    for path, error in zip(failures["path"], failures["error"], strict=True):
        assert error.startswith(f"{path}: ")
    good_train = 12  # 6 per label; the readable oddities train too
    assert info["n_clips"]["train"] + info["n_clips"]["val"] == (
        good_train + len(READABLE) - 1 + len(EITHER) - len(FAILING & set(EITHER)))


def test_preprocess_cli_logs_failures_and_finishes(tmp_path, bad, capsys):
    rows = [{"path": str(bad[n]), "label": "ai", "split": "train"}
            for n in ("good", "text_named_wav", "silence", "sr_96k")]
    rows.append({"path": str(tmp_path / "never_downloaded.wav"), "label": "ai", "split": "train"})
    csv = write_manifest(pd.DataFrame(rows), tmp_path / "m.csv")
    code = main(["preprocess", "--manifest", str(csv), "--cache", str(tmp_path / "c"),
                 "--jobs", "1", "--duration", "2"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["n_clips"] == 5 and report["n_failed"] == 3
    failures = pd.read_csv(tmp_path / "c" / "failures.csv").set_index("path")["error"]
    assert set(failures.index) == {str(bad["text_named_wav"]), str(bad["silence"]),
                                   str(tmp_path / "never_downloaded.wav")}
    assert "file not found" in failures[str(tmp_path / "never_downloaded.wav")]


def test_evaluate_skips_unreadable_test_files(project, bad, tmp_path):
    metrics = evaluate(project["run"], project["frame"], split="test", out_dir=tmp_path / "ev",
                       figures=False, progress=False)
    assert metrics["n"] == 4  # the good test clips
    assert set(metrics["dropped"]) == {str(bad[n]) for n in TEST_SPLIT_BAD}
    assert len(pd.read_csv(tmp_path / "ev" / "predictions.csv")) == 4


def test_index_cli_skips_unreadable_files(project, bad):
    catalog = pd.read_csv(index_files(project["index"])["catalog"])
    failures = pd.read_csv(project["index"] / "failures.csv")
    humans = {p for p, lab in project["label"].items() if lab == "human"
              and p != str(bad["non_utf8_name"])}
    failed = {str(bad[n]) for n in FAILING} & humans
    assert failed, "the corpus should put some failing files in the human catalog"
    assert set(failures["path"]) == failed
    assert set(catalog["path"]) == humans - failed


def test_recommend_cli_reports_bad_files_and_answers_the_rest(project, bad, capsys):
    good = [str(bad["good"]), str(bad["six_channels"])]
    broken = [str(bad["zero_byte"]), str(bad["text_named_wav"])]
    code = main(["recommend", *good, *broken, "--run", str(project["run"]), "--index",
                 str(project["index"]), "--always-recommend", "-k", "2", "--json"])
    captured = capsys.readouterr()
    results = {r["input"]: r for r in json.loads(captured.out)}
    assert code == 1
    assert all(len(results[p]["recommendations"]) == 2 for p in good)
    assert all(results[p]["error"].startswith(f"{p}: ") for p in broken)
    assert captured.err == "error: 2 of 4 file(s) could not be read (reasons above)\n"
    # one bad file: a non-zero exit, the reason once in the results, a summary on stderr
    code = main(["recommend", str(bad["silence"]), "--run", str(project["run"]),
                 "--index", str(project["index"])])
    captured = capsys.readouterr()
    assert code == 1 and f"{bad['silence']}: silent" in captured.out
    assert "1 of 1 file(s) could not be read" in captured.err


def test_notebook_helpers_name_the_bad_file(project, bad):
    run, index = project["run"], project["index"]
    for name in ("zero_byte", "nan", "blip"):
        with pytest.raises(AudioError) as info:
            analyze(bad[name], run=run, index=index)
        assert str(info.value).startswith(f"{bad[name]}: ")
    with pytest.raises(AudioError, match="silent"):
        score_files(run, [bad["good"], bad["silence"]])
    scores = score_files(run, [bad["good"], bad["silence"]], on_error="nan")
    assert np.isfinite(scores[0]) and np.isnan(scores[1])
    results = analyze_many([bad["good"], bad["inf"], bad["non_utf8_name"]], run=run,
                           index=index)
    assert "p_ai" in results[0] and "p_ai" in results[2]
    assert results[1]["error"].startswith(f"{bad['inf']}: contains NaN or Inf")


# --- bad manifests, runs and indexes given to the CLI: one line, non-zero -------------------


@pytest.mark.parametrize("command", ["preprocess", "train", "evaluate", "index"])
@pytest.mark.parametrize("manifest", ["zero_byte", "mp3", "text_named_wav"])
def test_a_bad_manifest_file_is_one_line_for_every_command(project, bad, tmp_path, capsys,
                                                          command, manifest):
    extra = {"preprocess": ["--cache", str(tmp_path / "c")],
             "train": ["--out", str(tmp_path / "r")],
             "evaluate": ["--run", str(project["run"])],
             "index": ["--out", str(tmp_path / "i")]}[command]
    code = main([command, "--manifest", str(bad[manifest]), *extra])
    assert code == 2
    _one_line_naming(capsys.readouterr().err, bad[manifest])


def test_a_damaged_run_or_index_is_one_line(project, bad, tmp_path, capsys):
    run = shutil.copytree(project["run"], tmp_path / "run", ignore=shutil.ignore_patterns(
        "cache"))
    best = run / "best.pt"
    best.write_bytes(best.read_bytes()[: best.stat().st_size // 2])
    code = main(["evaluate", "--run", str(run), "--manifest", str(project["csv"])])
    assert code == 2
    _one_line_naming(capsys.readouterr().err, best)
    index = shutil.copytree(project["index"], tmp_path / "index")
    vectors = index_files(index)["vectors"]
    vectors.write_bytes(vectors.read_bytes()[:200])
    code = main(["recommend", str(bad["good"]), "--run", str(project["run"]),
                 "--index", str(index)])
    assert code == 2
    _one_line_naming(capsys.readouterr().err, vectors)


def _cli(*args) -> tuple[int, str]:
    """Run ``python -m helpers`` in a new process: exit code, stdout + stderr."""
    done = subprocess.run([sys.executable, "-m", "helpers", *map(str, args)],
                          capture_output=True, text=True, timeout=600)
    return done.returncode, done.stdout + done.stderr


def test_the_cli_gives_the_reason_for_a_bad_file_once(project, bad):
    """The real process (logging set up as for a user): the reason is printed exactly once."""
    path = bad["text_named_wav"]
    with pytest.raises(AudioError) as info:
        load_clip(path)
    code, output = _cli("recommend", path, "--run", project["run"], "--index", project["index"])
    assert code == 1
    assert output.count(str(info.value)) == 1, output


@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_the_cli_gives_a_bad_manifest_error_once(project, tmp_path, command):
    csv = tmp_path / "m.csv"
    csv.write_text("file,label\nx.wav,ai\n")
    with pytest.raises(ManifestError) as info:
        load_manifest(csv)
    extra = {"train": ["--out", tmp_path / "run"], "evaluate": ["--run", project["run"]]}
    code, output = _cli(command, "--manifest", csv, *extra[command])
    assert code == 2
    assert output.count(str(info.value)) == 1, output


# --- manifest errors that the other tests do not cover ---------------------------------------


def test_duplicate_track_and_path_is_an_error_but_a_shared_track_id_is_not(tmp_path):
    csv = tmp_path / "m.csv"
    csv.write_text("path,label,split,track_id\na.wav,ai,train,song1\na.wav,ai,train,song1\n")
    with pytest.raises(ManifestError, match=r"1 duplicate path\(s\), e\.g\. .*a\.wav"):
        load_manifest(csv)
    # two excerpts of one song: same track_id, different files -- legitimate
    csv.write_text("path,label,split,track_id\na1.wav,ai,train,song1\na2.wav,ai,train,song1\n")
    assert load_manifest(csv)["track_id"].tolist() == ["song1", "song1"]


def test_a_manifest_that_is_not_utf8_is_one_clear_error(tmp_path):
    csv = tmp_path / "latin1.csv"
    csv.write_bytes("path,label,split,title\na.wav,ai,train,Caf\xe9\n".encode("latin-1"))
    with pytest.raises(ManifestError, match="not a readable CSV") as info:
        load_manifest(csv)
    assert str(csv) in str(info.value)


def test_training_without_train_rows_says_so(tmp_path):
    frame = pd.DataFrame({"path": ["a.wav", "b.wav"], "label": ["ai", "human"],
                          "split": ["test", "val"]})
    with pytest.raises(ValueError, match=r"no train rows \(rows per split: .*'test': 1"):
        train(frame, tmp_path / "run", frontend=FRONT, progress=False)


def test_training_on_only_unreadable_files_points_at_the_failures(bad, tmp_path):
    frame = pd.DataFrame({
        "path": [str(bad[n]) for n in ("good", "mp3", "zero_byte", "nan", "silence", "blip")],
        "label": ["human", "human", "ai", "ai", "ai", "ai"],
        "split": ["train", "val", "train", "val", "train", "train"],
    })
    with pytest.raises(ValueError, match=r"got 0 ai and 1 human clips; 3 unreadable clip\(s\) "
                       r"were left out, see .*failures\.csv"):
        train(frame, tmp_path / "run", cache_dir=tmp_path / "c", frontend=FRONT,
              train_config=TrainConfig(epochs=1, device="cpu"), progress=False)


def test_evaluate_on_an_empty_split_says_which_splits_exist(project):
    only_train = project["frame"][project["frame"]["split"] == "train"]
    with pytest.raises(ValueError, match=r"no 'test' rows \(splits present: \['train'\]\)"):
        evaluate(project["run"], only_train, split="test", progress=False)
