"""Serving requests: the Unix listener, the HTTP protocol (uvicorn's, with per-phase deadlines),
the ASGI app and its route groups, the codec, the runner and its admission, variant health and
the Prometheus metrics.

Owns: everything between a socket and an onnxruntime call. May import zoo, telemetry (the
snapshot type) and the leaves; must not import control, policy, daemon or cli. Within it, the
protocol (`protocol`, `listener`, `envelope`) imports nothing of the app (`app`, `routes`).
"""
