"""The controller: a pure function from (policy, telemetry, observed latency, profile, state,
time) to a decision; rule resolution; replay of a recorded trace (`policy simulate`).

Owns: choosing the configuration. Must not import onnxruntime, the server (serving, fastapi,
uvicorn, starlette), the daemon or a clock (`time`): time is always an argument.
"""
