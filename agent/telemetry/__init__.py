"""What the controller sees of the device: the `Snapshot` value, its sources (psutil, an override
file, a recorded trace, a guard that bounds every read) and the trace/override formats.

Owns: reading sensors. Must not import policy, control, serving or the daemon.
"""
