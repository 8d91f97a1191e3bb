"""Tell AI-generated music from human music, then recommend similar human artists.

Modules, in the order data flows:

* ``io`` (atomic writes, file locks) and ``config`` (the audio front end's settings);
* ``audio`` (read, resample, mel), ``datasets`` and ``sources`` (manifests; SONICS, GTZAN,
  your own folders), ``cache`` (the feature cache);
* ``artifacts`` (what makes a clip "AI" in this project's proxies), ``synth`` (the offline demo
  corpus), ``perturb`` (what users' files go through: re-encoding, pitch, noise ...);
* Model 1: ``model``, ``train`` (fitting only), ``run`` (a trained run: load, predict, score
  files), ``ood`` (is a clip like what the run was trained on?), ``evaluate``/``metrics``/
  ``plots``, ``robustness`` (checks of a trained run);
* Model 2: ``openl3`` (the PyTorch port), ``embed``, ``index``, ``retrieval``;
* ``pipeline`` (classify, then recommend), ``cli`` (``python -m helpers``), ``colab``, and
  ``jit`` (keeps numba's on-disk kernel cache safe for process pools).
"""

__version__ = "0.1.0"
