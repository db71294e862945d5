"""Trials dispatched to the nodes of a Ray cluster, the controller still the only writer.

`dispatch.RaySandbox` is a `Sandbox` (sandbox/engine/backend.py): the loop hands it a trial as it would
hand one to `DockerSandbox`. `node` holds what runs on a node (setup check, one trial through the
node's own sandbox), `wire` what crosses between them (validated plain data and a capped tar),
`journal` the run folder's record of every dispatch. Ray is an optional dependency (`.[ray]`): only
`dispatch` imports it, and only when a cluster is used.
"""
