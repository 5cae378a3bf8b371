"""edge-agent: an adaptive on-device inference runtime for edge gateways.

The packages, by layer (import-linter contracts in pyproject.toml keep them apart):

- `agent.cli`        the `edge-agent` command, one module per command group (top: imports anything).
- `agent.daemon`     lifecycle, the adaptive loop, sd_notify, logging, the pin file.
- `agent.serving`    listener, protocol, app and routes, codec, runner and admission, health, metrics.
- `agent.control`    the pure controller, rule resolution, simulation (no onnxruntime, server or clock).
- `agent.policy`     the operator's policy file: schema, safe loader, the store of the policy in force.
- `agent.telemetry`  snapshots of the device and where they come from (psutil, override file, trace).
- `agent.zoo`        the model zoo: manifest, onnxruntime sessions, preprocessing, evaluation.
- leaves             `agent.values` (Config, Pin, Switch, BUDGETS), `agent.errors`, `agent.paths`,
                     `agent.settings`, `agent.trust` (minisign signatures: trusted keys, checks,
                     signing); `agent.client` is the Python client.
"""

__version__ = "0.1.0"
