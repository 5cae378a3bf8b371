"""The model zoo: the manifest (variants, hashes, accuracy, latency), onnxruntime sessions,
preprocessing of an image to a variant's input, evaluation and profiling, accuracy statistics.

Owns: finding, verifying and running models. Must not import serving, control, policy, the
daemon or cli. Only `sessions` and `evaluation` import onnxruntime.
"""
