"""Fuzz generators for the daemon's socket: cases from the OpenAPI schema, hostile payloads
(image and .npy bombs, malformed v2 tensors), raw bytes that are not quite HTTP, and the wire
that sends a case and judges the answer. `tests/test_fuzz.py` runs a small budget of them;
`python -m bench.fuzz` runs them by the thousand."""
