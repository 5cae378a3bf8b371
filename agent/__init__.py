"""edge-agent: an adaptive on-device inference runtime for edge gateways."""

__version__ = "0.1.0"
