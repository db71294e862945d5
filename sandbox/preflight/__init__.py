"""The isolation self-test: `python -m harness preflight` attacks a TRAIN container from inside.

A sandbox that was configured right once can be opened by an engine upgrade, a changed daemon.json,
a different runtime or an edit to the container config. So instead of reading the configuration back,
preflight starts probe containers built by the production code path and tries each escape for real:
connecting out and to the host, writing the image, reading validation data, finding secrets and the
engine's socket, fork-bombing, exhausting memory, overflowing the output channel. Each property is
decided by the controller from the concrete facts the probe reports (errno names, byte counts,
capability masks), never from a "PASS" string the probe could print.

Modules, in the order a run goes through them:
- `sandbox/incontainer/preflight_probe.py`: the probes (stdlib only) that run inside the containers.
- `facts`: what the probe is told and reports; `Check`, `PreflightResult` (engine-free).
- `host`: the positive controls on the controller's side (host listener, canary key, fingerprints).
- `runner`: starts the probe containers the production way and collects what they saw.
- `checks`, `limit_checks`: one judge per property, from the facts alone.
- `cli`: flags, table, exit codes (imports no docker-py, so the harness's --help stays fast).

This file imports nothing, so that `sandbox.preflight.cli` can be loaded without the engine side.
"""
