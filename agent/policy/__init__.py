"""The operator's policy file: its pydantic schema, the safe YAML loader with located errors,
and the store that keeps the last good policy in force.

Owns: what a policy says and whether a file is valid. Must not import onnxruntime, the server
(serving, fastapi, uvicorn, starlette), control, the daemon or a clock (`time`; the store is given one).
"""
