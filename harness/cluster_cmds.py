"""`harness run --ray ADDRESS`: what a cluster run needs from the command line.

`make_ray_sandbox` builds the `RaySandbox` (sandbox/cluster/dispatch.py) the loop hands its trials
to: the nodes run `--backend` (docker: the hardened containers, with the isolation preflight at
each node's setup; local: tests only), and the run pins this host's trainer image and data when it
has them. `DispatchSeats` is the `--workers` lease table of a cluster run: it leases nothing here.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from sandbox.engine.gpu import Lease

logger = logging.getLogger(__name__)


def make_ray_sandbox(
    address: str, backend: str, profile: str, limits: Any, run_dir: Path, data_dir: Path | None
) -> Any:
    """A RaySandbox whose nodes run `backend`; it pins this host's trainer image and data when it
    has them (else the nodes' majority, sandbox/cluster/verify.py)."""
    import prepare
    from sandbox.cluster import node
    from sandbox.cluster.dispatch import RaySandbox

    runner: Any
    image_id: str | None = None
    if backend == "local":
        runner, image_id = node.LocalNodeRunner(), node.LocalNodeRunner.IMAGE_ID
    else:
        from sandbox.engine.docker_config import connect, resolve_image
        from sandbox.verdict import SandboxError

        runner = node.DockerNodeRunner()
        try:
            image_id = resolve_image(connect())
        except SandboxError as exc:
            logger.info("no trainer image on this host to pin (%s): the nodes' majority decides", exc)
    data_sha256 = prepare.verify_data(data_dir or prepare.data_dir(profile))
    sandbox = RaySandbox(
        address,
        run_dir,
        profile=profile,
        limits=limits,
        runner=runner,
        data_dir=data_dir,
        image_id=image_id,
        data_sha256=data_sha256,
        preflight=backend != "local",
    )
    cluster = sandbox.describe()
    print(
        f"ray cluster {address}: {len(cluster['nodes'])} verified node(s) ({', '.join(cluster['nodes'].values())}); "
        f"pinned {cluster['pins']}",
        file=sys.stderr,
    )
    for node_id, why in cluster["refused"].items():
        print(f"ray node {node_id[:12]} refused: {why}", file=sys.stderr)
    return sandbox


class DispatchSeats:
    """The `--workers` lease table of a cluster run: N seats that hold no device of the controller's
    host. Each trial's device lease is on its node (its `trial_slot`, and on the gpu profile the GPU
    ids Ray assigns), so the controller, which may have no GPU and few CPUs, leases nothing locally.
    The seats are of kind "gpu" with no ids: the worker keeps the run's limits and passes no GPU."""

    kind = "gpu"
    resources: tuple[str, ...] = ()

    def acquire(self, owner: str, count: int = 1, *, wait_s: float = 0.0, poll_s: float = 0.5) -> Lease:
        return Lease(self, owner, ())  # type: ignore[arg-type]

    def _release(self, lease: Lease) -> None:
        """Nothing to give back on the controller's host."""
