"""The verified node set of a Ray run: which nodes of the cluster may run this run's trials.

`VerifiedNodes.setup()` (run by `RaySandbox` at construction): a setup task pinned to every alive node
that offers a `trial_slot` (node affinity, soft=False) reaps orphaned sandbox containers there,
reports the trainer image id, the data's manifest hash, the hardware class, and (DockerNodeRunner)
runs the isolation preflight. The run pins one image id, one data hash and one hardware class: taken
from `cluster.json` in the run folder when it exists (a resumed run keeps its pins), else from the
arguments (the CLI passes the controller host's own trainer image and data, when it has them), and
what the arguments leave open from the most common answer among the nodes (ties: the lowest node
id). A node that differs in any of the three, or reports a problem, is refused: no trial is ever
dispatched to it. A wall-clock budget means nothing across hardware, so one run compares trials of
one class only; to use two classes, run two runs.

The dispatch path (dispatch.py) picks the verified node with the fewest trials in flight and drops a
node it lost mid-trial; both go through this class's lock.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Collection
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from sandbox.cluster import node as node_side
from sandbox.cluster.wire import ArchiveError, NodeFacts, primitive
from sandbox.engine.limits import Limits
from sandbox.incontainer.fileio import atomic_write
from sandbox.verdict import SandboxError

logger = logging.getLogger(__name__)

CLUSTER_FILE = "cluster.json"
TRIAL_SLOT = "trial_slot"  # the custom resource a node offers per trial it may run at once
SETUP_TIMEOUT_S = 600.0  # the preflight starts containers; a cold engine can take minutes


class ClusterUnavailable(SandboxError):
    """The Ray cluster cannot be reached, or no node passed setup."""


class ClusterPins(BaseModel):
    """cluster.json: what every node of this run must have."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    image_id: str
    data_sha256: str
    hardware_class: str


def _ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise ClusterUnavailable(
            "Ray is not installed: `pip install -e '.[ray]'` (or `make install`) on the controller and every node"
        ) from exc
    return ray


class VerifiedNodes:
    """Connects to the cluster, verifies its slot nodes against the run's pins, seats trials on them."""

    def __init__(
        self,
        address: str,
        run_dir: Path,
        *,
        profile: str,
        limits: Limits,
        runner: node_side.NodeRunner | None = None,
        data_dir: Path | None = None,
        image_id: str | None = None,
        data_sha256: str | None = None,
        preflight: bool = True,
        only_nodes: Collection[str] | None = None,
    ) -> None:
        self.address = address
        self.run_dir = run_dir
        self.profile = profile
        self.limits = limits
        self.runner: node_side.NodeRunner = runner if runner is not None else node_side.DockerNodeRunner()
        self.data_dir = str(data_dir) if data_dir is not None else None
        self.preflight = preflight
        self.only_nodes = frozenset(only_nodes) if only_nodes is not None else None  # None: every slot node
        self._wanted = (image_id, data_sha256)
        self.pins: ClusterPins | None = None
        self.nodes: dict[str, NodeFacts] = {}  # verified, alive as far as we know
        self.refused: dict[str, str] = {}  # node id -> why
        self._in_flight: Counter[str] = Counter()
        self._lock = threading.Lock()

    def connect(self) -> None:
        ray = _ray()
        if ray.is_initialized():
            return
        try:
            ray.init(address=self.address, logging_level=logging.WARNING, log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise ClusterUnavailable(
                f"cannot connect to the Ray cluster at {self.address!r}: {exc}. Start one "
                "(`make ray-local NODES=2`, or `ray start` on your hosts) and set RAY_AUTH_MODE=token "
                "with the cluster's token (RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH)."
            ) from exc

    def _slot_nodes(self) -> list[dict[str, Any]]:
        ray = _ray()
        alive = [
            n
            for n in ray.nodes()
            if n.get("Alive")
            and n.get("Resources", {}).get(TRIAL_SLOT, 0) >= 1
            and (self.only_nodes is None or str(n["NodeID"]) in self.only_nodes)
        ]
        return sorted(alive, key=lambda n: str(n["NodeID"]))

    def setup(self) -> dict[str, NodeFacts]:
        """Check every node offering a trial slot; keep those that match the run's pins."""
        ray = _ray()
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        candidates = self._slot_nodes()
        if not candidates:
            raise ClusterUnavailable(
                f"no alive node of the cluster at {self.address} offers a {TRIAL_SLOT!r} resource; start "
                f"worker nodes with --resources '{{\"{TRIAL_SLOT}\": 1}}'"
            )
        task = ray.remote(node_side.setup_node)
        refs = {
            str(n["NodeID"]): task.options(
                num_cpus=0,
                max_retries=0,
                scheduling_strategy=NodeAffinitySchedulingStrategy(str(n["NodeID"]), soft=False),
            ).remote(self.runner, self.profile, self.limits.model_dump_json(), self.data_dir, self.preflight)
            for n in candidates
        }
        facts: dict[str, NodeFacts] = {}
        for node_id, ref in refs.items():
            try:
                raw = ray.get(ref, timeout=SETUP_TIMEOUT_S)
                facts[node_id] = NodeFacts.model_validate(primitive(raw))
            except (ValidationError, ArchiveError) as exc:
                self.refused[node_id] = f"its setup answered something malformed: {exc}"
            except ray.exceptions.RayError as exc:
                self.refused[node_id] = f"its setup failed: {type(exc).__name__}: {exc}"
        self.pins = self._pin(facts)
        verified: dict[str, NodeFacts] = {}
        for node_id, f in facts.items():
            why = self._differs(f)
            if f.node_id != node_id:
                why = f"its setup ran on {f.node_id}, not on it"
            if why:
                self.refused[node_id] = why
                logger.error("node %s (%s) refused: %s", f.node_name, node_id[:12], why)
            else:
                verified[node_id] = f
                logger.info(
                    "node %s (%s) verified: %s; reaped %d containers, %d volumes",
                    f.node_name,
                    node_id[:12],
                    f.hardware_class,
                    f.reaped_containers,
                    f.reaped_volumes,
                )
        with self._lock:
            self.nodes = verified
        if not verified:
            raise ClusterUnavailable(
                "no node of the cluster passed setup: "
                + "; ".join(f"{nid[:12]}: {why}" for nid, why in self.refused.items())
            )
        return verified

    def _pin(self, facts: dict[str, NodeFacts]) -> ClusterPins:
        path = self.run_dir / CLUSTER_FILE
        if path.exists():
            return ClusterPins.model_validate_json(path.read_text(encoding="utf-8"))
        image, data = self._wanted
        usable = [f for f in facts.values() if not f.problems and f.image_id and f.data_sha256]
        if not usable:
            raise ClusterUnavailable(
                "no node could be checked, so the run has nothing to pin: "
                + "; ".join(
                    f"{f.node_name}: {', '.join(f.problems) or 'no image or data'}" for f in facts.values()
                )
            )
        agreeing = [f for f in usable if image in (None, f.image_id) and data in (None, f.data_sha256)]
        if not agreeing:
            raise ClusterUnavailable(
                f"no node has the pinned image {image} and data {data}: "
                + "; ".join(f"{f.node_name}: image {f.image_id}, data {f.data_sha256}" for f in usable)
            )
        votes = Counter((f.image_id, f.data_sha256, f.hardware_class) for f in agreeing)
        top = max(votes.values())
        first = next(f for f in agreeing if votes[(f.image_id, f.data_sha256, f.hardware_class)] == top)
        pins = ClusterPins(
            image_id=image or str(first.image_id),
            data_sha256=data or str(first.data_sha256),
            hardware_class=first.hardware_class,
        )
        atomic_write(path, pins.model_dump_json(indent=2).encode() + b"\n")
        logger.info(
            "the run pins image %s, data %s, hardware %s",
            pins.image_id,
            pins.data_sha256[:16],
            pins.hardware_class,
        )
        return pins

    def _differs(self, f: NodeFacts) -> str:
        assert self.pins is not None
        if f.problems:
            return "; ".join(f.problems)
        if f.image_id != self.pins.image_id:
            return f"trainer image {f.image_id} is not the run's {self.pins.image_id}"
        if f.data_sha256 != self.pins.data_sha256:
            return f"data manifest {f.data_sha256} is not the run's {self.pins.data_sha256}"
        if f.hardware_class != self.pins.hardware_class:
            return f"hardware class {f.hardware_class!r} is not the run's {self.pins.hardware_class!r}"
        return ""

    def _pick(self) -> NodeFacts:
        with self._lock:
            if not self.nodes:
                raise ClusterUnavailable(
                    "every verified node of the cluster is gone; start nodes and run the same command again"
                )
            node_id = min(self.nodes, key=lambda nid: (self._in_flight[nid], nid))
            self._in_flight[node_id] += 1
            return self.nodes[node_id]

    def _unpick(self, node_id: str) -> None:
        with self._lock:
            self._in_flight[node_id] -= 1

    def _node_alive(self, node_id: str) -> bool:
        return any(str(n["NodeID"]) == node_id for n in self._slot_nodes())

    def _drop(self, node_id: str, why: str) -> None:
        with self._lock:
            if self.nodes.pop(node_id, None) is not None:
                self.refused[node_id] = why
                logger.error("node %s dropped: %s", node_id[:12], why)

    def describe(self) -> dict[str, Any]:
        """The cluster as this controller sees it (for the banner and the report)."""
        nodes = {nid: f.node_name for nid, f in self.nodes.items()}
        pins = self.pins.model_dump() if self.pins else None
        return {"address": self.address, "pins": pins, "nodes": nodes, "refused": dict(self.refused)}
