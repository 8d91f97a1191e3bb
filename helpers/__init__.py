"""Tell AI-generated music from human music, then recommend similar human artists.

Modules, in the order data flows: `audio` (read, resample, mel), `datasets` and `sources`
(manifests; SONICS, GTZAN, your own folders), `synth` (the offline demo corpus), `cache`
(feature cache), `model`/`train`/`evaluate` (Model 1), `openl3`/`embed`/`index` (Model 2),
`pipeline` (classify, then recommend) and `cli` (``python -m helpers``).
"""

__version__ = "0.1.0"
