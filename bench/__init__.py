"""Benchmarks: Moodbox against the seed's approach, measured side by side on one machine.

``python -m bench`` runs every measurement in one go, prints a table and
writes JSON (``--out``). Parts that need another Python stack run in that
stack's virtual environment as a subprocess: tflite-runtime 2.14 in
``.venv-tflite``, TensorFlow/Keras (the seed-style baseline) in ``.venv-convert``.
Imports stay inside the modules, so ``bench.per_face`` runs under numpy 1.26
and ``bench.seed_baseline`` under TensorFlow without pulling in the rest.
"""
