"""A generated corpus of awkward and broken audio files, for the bad-input tests.

`make_bad_corpus` writes one small file per case into a folder and returns ``{name: path}``;
`write_long_wav` writes the 2-hour file separately (about 115 MB, so only the test that needs
it pays for it); `refuse_to_open` makes the front end's ``open`` of one file fail as the OS
does for a file it may not read. Everything is synthetic and deterministic: nothing is
downloaded.

Cases, and what the front end is expected to do with each (``tests/test_bad_inputs.py``):

=================  ==========================================================================
name               content
=================  ==========================================================================
good               3 s 44.1 kHz mono WAV tone: the control, always readable
mp3                a valid 3 s MP3 (the source of the three MP3 cases below)
truncated_mp3      the first ~40 % of the bytes of a 3 s MP3 (a cut download)
mp3_header_only    the first 200 bytes of that MP3: too little to decode anything
zero_byte          an empty ``.wav``
mp3_named_wav      a valid MP3 stored under a ``.wav`` name (libsndfile probes content)
text_named_wav     a UTF-8 text file named ``.wav``
nan                float WAV with one NaN sample
inf                float WAV with one +Inf sample
silence            2 s of digital silence
blip               a 0.05 s clip (below ``FrontEndConfig.min_duration``)
sr_8k, sr_96k      tones at 8 kHz and 96 kHz
six_channels       a 6-channel (5.1) WAV
unreadable         a valid WAV with mode 000 (still readable by root)
non_utf8_name      a valid WAV whose file name is the bytes ``b"caf\\xe9.wav"`` (Latin-1),
                   i.e. not valid UTF-8; Python sees it as ``os.fsdecode`` gives it
=================  ==========================================================================
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import tone

import helpers.audio as audio_module

#: Cases that decode to a usable clip with the default front end.
READABLE = ("good", "mp3", "mp3_named_wav", "sr_8k", "sr_96k", "six_channels", "non_utf8_name")
#: Cases that must raise `helpers.audio.AudioError`, with a fragment of the expected message.
ERRORS = {
    "mp3_header_only": "cannot decode",
    "zero_byte": "empty file",
    "text_named_wav": "cannot decode",
    "nan": "NaN or Inf",
    "inf": "NaN or Inf",
    "silence": "silent",
    "blip": "too short",
}
#: Cases whose outcome depends on the decoder or the user (a short clip or an error).
EITHER = ("truncated_mp3", "unreadable")

NON_UTF8_NAME = os.fsdecode(b"caf\xe9.wav")  # 'caf\udce9.wav': a surrogate-escaped byte


def make_bad_corpus(folder: str | os.PathLike) -> dict[str, Path]:
    """Write every case of the table above into `folder`.

    Parameters
    ----------
    folder : str or path-like
        Created if needed.

    Returns
    -------
    dict of str -> Path
        Case name -> file (the ``unreadable`` file has mode 000; restore it before deleting
        the folder as a non-root user, which pytest's tmp_path cleanup does by itself).
    """
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}

    def wav(name: str, filename: str, y: np.ndarray, sr: int, **kwargs) -> None:
        path = root / filename
        # through a Python file object: soundfile cannot encode a surrogate-escaped str name
        with open(path, "wb") as f:
            sf.write(f, y, sr, format="WAV", **kwargs)
        out[name] = path

    wav("good", "good.wav", tone(3.0, 44_100, 440.0, seed=1), 44_100)

    out["mp3"] = root / "song.mp3"
    sf.write(out["mp3"], tone(3.0, 44_100, 330.0, seed=2), 44_100)
    data = out["mp3"].read_bytes()
    out["truncated_mp3"] = root / "truncated.mp3"
    out["truncated_mp3"].write_bytes(data[: int(len(data) * 0.4)])
    out["mp3_header_only"] = root / "header_only.mp3"
    out["mp3_header_only"].write_bytes(data[:200])
    out["mp3_named_wav"] = root / "really_an_mp3.wav"
    out["mp3_named_wav"].write_bytes(data)

    out["zero_byte"] = root / "zero_byte.wav"
    out["zero_byte"].write_bytes(b"")
    out["text_named_wav"] = root / "notes.wav"
    out["text_named_wav"].write_text("These are my lyrics, not audio.\n" * 20)

    y = tone(2.0, 16_000, seed=3)
    y[1000] = np.nan
    wav("nan", "nan.wav", y, 16_000, subtype="FLOAT")
    y = tone(2.0, 16_000, seed=4)
    y[1000] = np.inf
    wav("inf", "inf.wav", y, 16_000, subtype="FLOAT")
    wav("silence", "silence.wav", np.zeros(32_000, np.float32), 16_000)
    wav("blip", "blip.wav", tone(0.05, 16_000), 16_000)
    wav("sr_8k", "sr_8k.wav", tone(2.0, 8_000, 1000.0, seed=5), 8_000)
    wav("sr_96k", "sr_96k.wav", tone(2.0, 96_000, 1000.0, seed=6), 96_000)
    wav("six_channels", "six_channels.wav", tone(2.0, 48_000, 550.0, channels=6, seed=7),
        48_000)
    wav("unreadable", "locked.wav", tone(2.0, 16_000, seed=8), 16_000)
    out["unreadable"].chmod(0)
    wav("non_utf8_name", NON_UTF8_NAME, tone(2.0, 22_050, 660.0, seed=9), 22_050)
    return out


def write_long_wav(path: str | os.PathLike, hours: float = 2.0, sr: int = 8_000,
                   block_seconds: float = 600.0) -> Path:
    """Write a long mono 16-bit WAV in blocks, so writing it needs little memory.

    Two hours at 8 kHz is 57.6 M samples, about 115 MB on disk. Each block is a tone plus
    noise (not silence, so a reader that decodes it all would also do real work).

    Returns
    -------
    Path
    """
    path = Path(path)
    total = int(hours * 3600 * sr)
    block = int(block_seconds * sr)
    base = (tone(block_seconds, sr, 440.0, seed=10) * 32767).astype(np.int16)  # no conversion
    with sf.SoundFile(path, "w", samplerate=sr, channels=1, subtype="PCM_16") as f:
        for start in range(0, total, block):
            f.write(base[: min(block, total - start)])
    return path


def refuse_to_open(monkeypatch: pytest.MonkeyPatch, path: str | os.PathLike) -> None:
    """Make `helpers.audio` get ``PermissionError`` when it opens `path` (other files open).

    Mode 000 stops a user but not root, and CI runs as root; this is what the OS does for a
    file nobody may read (a FUSE or network mount refusing root included).
    """
    target = os.fspath(path)
    real_open = open

    def refusing_open(file, *args, **kwargs):
        if os.fspath(file) == target:
            raise PermissionError(errno.EACCES, "Permission denied", target)
        return real_open(file, *args, **kwargs)

    # `open` is looked up in the module's globals before the builtins
    monkeypatch.setattr(audio_module, "open", refusing_open, raising=False)
