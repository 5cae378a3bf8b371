"""The `edge-agent` command line (`agent.cli.main`), one module per command group.

Owns: argument parsing, tables and progress for people, the demo and its scenario, unit files.
May import every layer, but heavy ones (the zoo and onnxruntime, the daemon, torch) only inside
the command that needs them: `edge-agent --help` and `policy validate` load no onnxruntime.
"""
