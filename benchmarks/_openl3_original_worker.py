"""The original openl3 (TensorFlow) as a timing worker for `benchmarks.openl3_original`.

Runs inside the original's own virtual environment (tensorflow-cpu, kapre, resampy 0.2.2, the
openl3 source tree on ``sys.path``), never in the project's: it imports nothing from
``helpers``. It reads one JSON request per line on stdin and answers one JSON line on the
stdout it was started with; everything else (TensorFlow's log lines, Keras progress bars) is
sent to stderr so it cannot corrupt the answers.

Requests::

    {"op": "load", "input_repr": "mel256", "weights": "w.h5" | null, "save_to": "w.h5",
     "threads": 2, "seed": 0}
    {"op": "embed", "audio": "clip.npy", "sr": 44100, "hop": 0.1, "batch_size": 32,
     "out": "emb.npy"}
    {"op": "quit"}

``load`` without weights builds the network with random weights drawn from `seed`, saves
them with Keras (the official files' HDF5 layout) to ``save_to`` and loads that file back
with openl3's own loader, so the port can load the very same file.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time


def _answer_channel():
    """A private copy of stdout for the answers; fd 1 then points at stderr."""
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return out


def _usage() -> dict:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return {"cpu_s": time.process_time(), "user_s": r.ru_utime, "sys_s": r.ru_stime,
            "minflt": r.ru_minflt, "max_rss_mb": r.ru_maxrss / 1024}


def _random_weights(model, seed: int) -> None:
    """He-normal convs; batch norms that map the dB input to a unit scale."""
    import numpy as np

    rng = np.random.default_rng(seed)
    first_bn = True
    for layer in model.layers:
        weights = layer.get_weights()
        if not weights:
            continue
        if layer.__class__.__name__ == "BatchNormalization":
            c = weights[0].shape[0]
            mean, var = (np.full(c, -40.0), np.full(c, 400.0)) if first_bn else (
                rng.normal(0, 0.5, c), rng.lognormal(0, 0.4, c))
            first_bn = False
            new = [rng.uniform(0.5, 1.5, c), rng.normal(0, 0.2, c), mean, var]
        else:
            kernel, bias = weights
            fan_in = int(np.prod(kernel.shape[:-1]))
            new = [rng.normal(0, np.sqrt(2 / fan_in), kernel.shape),
                   rng.normal(0, 0.1, bias.shape)]
        layer.set_weights([w.astype("float32") for w in new])


def main() -> None:
    answers = _answer_channel()
    import numpy as np
    import openl3
    import tensorflow as tf
    from openl3 import models

    model = None
    for line in sys.stdin:
        request = json.loads(line)
        op = request["op"]
        try:
            if op == "quit":
                break
            if op == "load":
                threads = int(request["threads"])
                tf.config.threading.set_intra_op_parallelism_threads(threads)
                tf.config.threading.set_inter_op_parallelism_threads(threads)
                weights = request.get("weights")
                if not weights:
                    builder = getattr(models, f"_construct_{request['input_repr']}_audio_network")
                    net = builder()
                    _random_weights(net, int(request.get("seed", 0)))
                    net.save_weights(request["save_to"])
                    weights = request["save_to"]
                model = models.load_audio_embedding_model_from_path(
                    weights, request["input_repr"], 512, frontend="kapre")
                reply = {"ok": True, "weights": weights, "tensorflow": tf.__version__,
                         "openl3": openl3.__version__,
                         "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default (on)")}
            elif op == "embed":
                audio = np.load(request["audio"])
                before, start = _usage(), time.perf_counter()
                emb, _ = openl3.get_audio_embedding(
                    audio, int(request["sr"]), model=model, hop_size=float(request["hop"]),
                    center=True, batch_size=int(request["batch_size"]), frontend="kapre",
                    verbose=False)
                wall = time.perf_counter() - start
                after = _usage()
                np.save(request["out"], emb.astype(np.float32))
                reply = {"ok": True, "wall_s": wall, "frames": int(len(emb)),
                         **{k: after[k] - before[k] for k in ("cpu_s", "user_s", "sys_s",
                                                              "minflt")},
                         "max_rss_mb": after["max_rss_mb"]}
            else:
                reply = {"ok": False, "error": f"unknown op {op!r}"}
        except Exception as err:  # the driver prints it and stops
            reply = {"ok": False, "error": f"{type(err).__name__}: {err}"}
        answers.write(json.dumps(reply) + "\n")


if __name__ == "__main__":
    main()
