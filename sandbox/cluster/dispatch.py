"""RaySandbox: the `Sandbox` seam, with each trial dispatched to a verified node of a Ray cluster.

The loop and its `--workers N` threads call `run_trial(spec)` exactly as on one host; this backend
sends the trial to a node and brings back its verdict and trial folder. The controller stays the
only writer of the ledger, results.tsv and the lineage: nodes write only to their own temp folders.
Which nodes are verified, and against which pins, is verify.py (`VerifiedNodes`, the base class).

One dispatch (`run_trial`; each step in detail: docs/ARCHITECTURE.md, "Trials over a Ray cluster"):
pick the least-loaded verified node, open the dispatch in dispatches.jsonl (journal.py), submit
`run_on_node` pinned to that node with a `trial_slot` (and a GPU on the gpu profile), wait on it and
on the cancel event (cancel: kill with force, close `cancelled`, reap the node, `TrialCancelled`),
then validate the return, accept it only for an open dispatch, and land the folder (wire.py).

Deliberate: Ray re-runs a task whose worker died on a live node (`max_retries`, same node); a node
lost mid-trial closes its dispatch `lost` and the trial goes to another node as the next attempt
(at most `redispatch_limit` times). Only the accepted dispatch's result reaches the trial folder, so
the loop records the trial once. A sandbox error on the node is raised here as the same
`SandboxError` subclass (the loop's retry policy applies), never as a verdict.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Collection
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from sandbox import constants as C
from sandbox import verdict as verdicts
from sandbox.cluster import node as node_side
from sandbox.cluster.journal import Dispatch, DispatchJournal
from sandbox.cluster.verify import TRIAL_SLOT, VerifiedNodes, _ray
from sandbox.cluster.wire import (
    ArchiveError,
    NodeFacts,
    NodeReturn,
    TrialPayload,
    primitive,
    unpack_trial_dir,
)
from sandbox.engine.limits import Limits
from sandbox.incontainer.fileio import atomic_write
from sandbox.verdict import NodeInfo, SandboxError, TrialCancelled, TrialSpec, Verdict

logger = logging.getLogger(__name__)

POLL_S = 0.5
RESULT_SLACK_S = 900.0  # beyond the trial's own limits: queueing behind the node's slot, transfer
KILL_SETTLE_S = 30.0  # how long a force-cancelled task may take to resolve (its worker to die)
REAP_TIMEOUT_S = 120.0  # the reap task after a kill lists and removes containers on the node's engine


def _error_class(name: str | None) -> type[SandboxError]:
    """The SandboxError subclass a node named (only the sandbox's own; anything else is the base)."""
    cls = getattr(verdicts, name or "", None)
    if isinstance(cls, type) and issubclass(cls, SandboxError):
        return cls
    return SandboxError


class RaySandbox(VerifiedNodes):
    """Runs each trial on a verified node of a Ray cluster (see the module docstring)."""

    name = "ray"

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
        max_retries: int = 1,
        redispatch_limit: int = 3,
        only_nodes: Collection[str] | None = None,
        connect: bool = True,
    ) -> None:
        super().__init__(
            address,
            run_dir,
            profile=profile,
            limits=limits,
            runner=runner,
            data_dir=data_dir,
            image_id=image_id,
            data_sha256=data_sha256,
            preflight=preflight,
            only_nodes=only_nodes,
        )
        self.max_retries = max_retries
        self.redispatch_limit = redispatch_limit
        self._remote: Any = None
        run_dir.mkdir(parents=True, exist_ok=True)
        self.journal = DispatchJournal(run_dir)
        self.journal.close_orphans()
        if connect:
            self.connect()
            self.setup()

    # ------------------------------------------------------------------ one trial

    def run_trial(self, spec: TrialSpec, cancel: threading.Event | None = None) -> Verdict:
        assert self.pins is not None, "setup() first"
        source = spec.candidate.read_text(encoding="utf-8")
        for _ in range(self.redispatch_limit + 1):
            if cancel is not None and cancel.is_set():
                raise TrialCancelled(f"{spec.trial_id}: cancelled before it was dispatched")
            node = self._pick()
            try:
                dispatch = self.journal.open(spec.trial_id, node.node_id, node.node_name)
                outcome = self._dispatch(spec, source, node, dispatch, cancel)
            finally:
                self._unpick(node.node_id)
            if outcome is not None:
                return outcome
        raise SandboxError(
            f"{spec.trial_id} lost its node {self.redispatch_limit + 1} times; nothing was recorded against it"
        )

    def _task(self) -> Any:
        with self._lock:
            if self._remote is None:
                self._remote = _ray().remote(node_side.run_on_node)
            return self._remote

    def payload(self, spec: TrialSpec, source: str, dispatch: Dispatch) -> TrialPayload:
        assert self.pins is not None
        return TrialPayload(
            dispatch_id=dispatch.dispatch_id,
            attempt=dispatch.attempt,
            trial_id=spec.trial_id,
            candidate_source=source,
            profile=spec.profile,  # type: ignore[arg-type]
            seed=spec.seed,
            # The run's limits with the run's cpuset, not the controller's per-worker lease: that
            # names CPUs of the controller's host. A node pins its own (AUTORESEARCH_NODE_CPUSET).
            limits=spec.limits.model_copy(update={"cpuset_cpus": self.limits.cpuset_cpus}),
            min_compute_share=spec.min_compute_share,
            image_id=self.pins.image_id,
            data_sha256=self.pins.data_sha256,
            data_dir=self.data_dir,
        )

    def submit(self, spec: TrialSpec, source: str, node: NodeFacts, dispatch: Dispatch) -> Any:
        """Send an opened dispatch to its node; the Ray ObjectRef of its return."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        payload = self.payload(spec, source, dispatch)
        logger.info(
            "%s: dispatch %s (attempt %d) to node %s",
            spec.trial_id,
            dispatch.dispatch_id,
            dispatch.attempt,
            node.node_name,
        )
        return (
            self._task()
            .options(
                num_cpus=0,
                num_gpus=1 if spec.profile == "gpu" else 0,
                resources={TRIAL_SLOT: 1},
                max_retries=self.max_retries,
                retry_exceptions=False,
                scheduling_strategy=NodeAffinitySchedulingStrategy(node.node_id, soft=False),
            )
            .remote(self.runner, payload.model_dump_json())
        )

    def _dispatch(
        self,
        spec: TrialSpec,
        source: str,
        node: NodeFacts,
        dispatch: Dispatch,
        cancel: threading.Event | None = None,
    ) -> Verdict | None:
        """The verdict, or None when the node was lost and the trial must go elsewhere."""
        ray = _ray()
        ref = self.submit(spec, source, node, dispatch)
        limits = spec.limits
        deadline = (
            time.monotonic()
            + limits.time_budget_s
            + limits.kill_grace_s
            + limits.eval_timeout_s
            + RESULT_SLACK_S
        )
        try:
            while True:
                ready, _ = ray.wait([ref], timeout=POLL_S)
                if ready:
                    break
                if cancel is not None and cancel.is_set():
                    self._kill(node, dispatch, ref, "cancelled", "the caller cancelled the trial")
                    raise TrialCancelled(f"{spec.trial_id}: cancelled on node {node.node_name}")
                if time.monotonic() > deadline:
                    self._kill(node, dispatch, ref, "failed", "no result before the deadline")
                    raise SandboxError(f"{spec.trial_id}: node {node.node_name} gave no result in time")
            raw = ray.get(ref)
        except BaseException as exc:
            if isinstance(exc, ray.exceptions.RayError):
                self._failed(spec, node, dispatch, exc)
                return None  # the node was lost: dispatch the trial again
            if not isinstance(exc, SandboxError):  # KeyboardInterrupt (Ctrl-C reaching the worker), bug
                ray.cancel(ref, force=False)
                self.journal.close(
                    dispatch, "cancelled", f"the controller stopped waiting: {type(exc).__name__}"
                )
            raise
        return self.land(spec, node, dispatch, raw)

    def _kill(self, node: NodeFacts, dispatch: Dispatch, ref: Any, event: str, why: str) -> None:
        """Force-cancel a dispatched task, close its dispatch as `event`, and reap its node once the
        task has resolved: only then is the Ray worker that owns the trial's containers dead."""
        ray = _ray()
        ray.cancel(ref, force=True)
        self.journal.close(dispatch, event, f"{why}; its Ray worker was killed")
        ready, _ = ray.wait([ref], timeout=KILL_SETTLE_S)
        if not ready:
            logger.warning(
                "dispatch %s: the killed task did not resolve in %.0f s; node %s reaps at its next setup",
                dispatch.dispatch_id,
                KILL_SETTLE_S,
                node.node_name,
            )
            return
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        task = ray.remote(node_side.reap_node).options(
            num_cpus=0,
            max_retries=0,
            scheduling_strategy=NodeAffinitySchedulingStrategy(node.node_id, soft=False),
        )
        try:
            reaped = primitive(ray.get(task.remote(self.runner), timeout=REAP_TIMEOUT_S))
        except (ray.exceptions.RayError, ArchiveError) as exc:
            logger.warning(
                "dispatch %s: reaping node %s after the kill failed (%s: %s); it reaps at its next setup",
                dispatch.dispatch_id,
                node.node_name,
                type(exc).__name__,
                exc,
            )
            return
        logger.info("dispatch %s killed; node %s reaped: %s", dispatch.dispatch_id, node.node_name, reaped)

    def _failed(self, spec: TrialSpec, node: NodeFacts, dispatch: Dispatch, exc: Exception) -> None:
        ray = _ray()
        lost = isinstance(
            exc, ray.exceptions.NodeDiedError | ray.exceptions.TaskUnschedulableError
        ) or not self._node_alive(node.node_id)
        if lost:
            why = f"node {node.node_name} lost mid-trial ({type(exc).__name__})"
            self.journal.close(dispatch, "lost", why)
            self._drop(node.node_id, why)
            logger.warning("%s: %s; dispatching it again", spec.trial_id, why)
            return None
        self.journal.close(dispatch, "failed", f"{type(exc).__name__}: {exc}")
        raise SandboxError(
            f"{spec.trial_id} on node {node.node_name}: the Ray task failed: {type(exc).__name__}: {exc}"
        )

    def land(self, spec: TrialSpec, node: NodeFacts, dispatch: Dispatch, raw: object) -> Verdict:
        """Validate a node's return, accept it for its open dispatch, write the trial folder.

        Raises SandboxError when the return is malformed or was not for an open dispatch (nothing is
        written then)."""
        try:
            ret = NodeReturn.model_validate(primitive(raw))
        except (ValidationError, ArchiveError) as exc:
            self.journal.close(dispatch, "failed", f"malformed return: {exc}")
            raise SandboxError(
                f"{spec.trial_id}: node {node.node_name} returned something malformed: {exc}"
            ) from exc
        if ret.dispatch_id != dispatch.dispatch_id or ret.node_id != node.node_id:
            self.journal.close(dispatch, "failed", "a return for another dispatch or node")
            raise SandboxError(
                f"{spec.trial_id}: a return for {ret.dispatch_id} on {ret.node_id} is not this dispatch's"
            )
        if ret.error_type is not None:
            self.journal.close(dispatch, "failed", f"{ret.error_type}: {ret.error}")
            raise _error_class(ret.error_type)(f"on node {node.node_name}: {ret.error}")
        try:
            verdict = Verdict.model_validate_json(ret.verdict_json or "")
        except ValidationError as exc:
            self.journal.close(dispatch, "failed", "the verdict does not validate")
            raise SandboxError(
                f"{spec.trial_id}: node {node.node_name} returned an invalid verdict: {exc}"
            ) from exc
        if verdict.trial_id != spec.trial_id:
            self.journal.close(dispatch, "failed", f"a verdict for {verdict.trial_id}")
            raise SandboxError(
                f"{spec.trial_id}: node {node.node_name} returned the verdict of {verdict.trial_id}"
            )
        if not self.journal.close(dispatch, "accepted", f"verdict {verdict.status.value}"):
            raise DuplicateResult(
                f"{spec.trial_id}: a result for dispatch {dispatch.dispatch_id}, which is not open, was dropped"
            )
        try:
            unpack_trial_dir(ret.archive or b"", spec.trial_dir)
        except ArchiveError as exc:
            raise SandboxError(
                f"{spec.trial_id}: the trial folder from node {node.node_name} was refused: {exc}"
            ) from exc
        root = ret.root.rstrip("/")
        head = str(spec.trial_dir.resolve())
        logs = {
            k: head + v[len(root) :] if root and v.startswith(root + "/") else v
            for k, v in verdict.logs.items()
        }
        accepted = verdict.model_copy(
            update={
                "logs": logs,
                "node": NodeInfo(
                    node_id=node.node_id,
                    node_name=node.node_name,
                    hardware_class=node.hardware_class,
                    dispatch_id=dispatch.dispatch_id,
                ),
            }
        )
        atomic_write(spec.trial_dir / C.VERDICT_FILE, accepted.model_dump_json(indent=2).encode() + b"\n")
        logger.info("%s: accepted %s from node %s", spec.trial_id, verdict.status.value, node.node_name)
        return accepted


class DuplicateResult(SandboxError):
    """A result arrived for a dispatch that is not open (a Ray retry or a late duplicate): dropped."""
