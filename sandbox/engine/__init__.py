"""The engine zone: how one trial runs, on the controller's side of the boundary.

`trial.run_trial` is the trial's template, written once; `docker.py` and `local.py` are the two
engines it drives (mechanism only). Beside them: the container limits, the trial folder, the audit
trail, device leases and the orphan reaper. None of it goes into the trainer image. This file imports
nothing, so `sandbox.engine.limits` loads without the engines.
"""
