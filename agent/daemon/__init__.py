"""The daemon: lifecycle (load, listen, serve, reload, drain, stop), the adaptive loop that
drives the controller, sd_notify, logging and the pin file.

Owns: signals, the scheduler's jobs, wiring the layers together. May import serving, control,
policy, telemetry and zoo; nothing below may import it.
"""
