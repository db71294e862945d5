"""Container limits: one frozen model, locked down by default.

Every field that could open the sandbox has a safe default, and the settings that would make the
sandbox meaningless (network, capabilities, privileges) are not fields at all: they are constants in
`docker_kwargs`, so no configuration file can turn them off. What a user may tune is resources
(memory, CPUs, pids, sizes, time) and the hardening tier (runtime, user-namespace remapping is the
engine's setting).

The time budget and kill grace come from prepare.py's profile, which is the single source of truth
for the workload's constants.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from sandbox import constants as C

MiB = 1024 * 1024


class Limits(BaseModel):
    """Resource and time limits for one trial's containers."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    time_budget_s: float = Field(gt=0, description="SIGTERM this long after TRAIN starts")
    kill_grace_s: float = Field(gt=0, description="SIGKILL this long after SIGTERM")
    eval_timeout_s: float = Field(default=600, gt=0, description="wall-clock limit of the EVAL container")

    mem_limit_mb: int = Field(default=4096, ge=64, description="TRAIN memory; swap is the same (no swap)")
    eval_mem_limit_mb: int = Field(default=4096, ge=64)
    cpus: float | None = Field(default=None, gt=0, description="CPU quota in cores; None = no quota")
    cpuset_cpus: str | None = Field(default=None, pattern=r"^[0-9]+([-,][0-9]+)*$")
    pids_limit: int = Field(default=512, ge=16)
    shm_size_mb: int = Field(default=256, ge=1)
    tmp_size_mb: int = Field(default=256, ge=1, description="tmpfs at /tmp (the root is read-only)")
    tmp_exec: bool = Field(
        default=False,
        description="allow executable mappings from /tmp: torch.compile on CUDA (triton) dlopens the "
        "kernels it builds there; on CPU nothing needs it, so it stays noexec",
    )
    output_limit_mb: int = Field(default=256, ge=1, description="size cap of the output channel")
    report_limit_mb: int = Field(default=4, ge=1, description="size cap of the evaluator's result channel")
    log_limit_bytes: int = Field(default=1 * MiB, ge=1024, description="container log kept per container")
    nofile: int = Field(default=1024, ge=64)

    runtime: Literal["runc", "runsc"] | None = Field(default=None, description="None = the engine's default")
    uid: int = Field(default=C.CONTAINER_UID, ge=1, description="never 0: containers never run as root")
    gid: int = Field(default=C.CONTAINER_GID, ge=1)

    @model_validator(mode="after")
    def _output_fits_in_memory(self) -> Limits:
        # The output channel is a tmpfs charged to the writer's memory cgroup; a cap above the memory
        # limit would turn "output too large" into an OOM and blur the two statuses.
        if self.output_limit_mb >= self.mem_limit_mb:
            raise ValueError(
                f"output_limit_mb ({self.output_limit_mb}) must be below mem_limit_mb ({self.mem_limit_mb})"
            )
        return self

    @classmethod
    def for_profile(cls, profile: str, **overrides: Any) -> Limits:
        """Defaults for a prepare.py profile, with the budget and grace taken from prepare.py itself."""
        import prepare  # trusted, frozen; imported lazily because it pulls in torch

        p = prepare.PROFILES[profile]
        base: dict[str, Any] = {"time_budget_s": p.time_budget, "kill_grace_s": p.kill_grace}
        if profile == "gpu":
            base |= {
                "mem_limit_mb": 64 * 1024,
                "eval_mem_limit_mb": 64 * 1024,
                "shm_size_mb": 8 * 1024,
                "tmp_size_mb": 4096,
                "tmp_exec": True,
                "output_limit_mb": 4096,
                "eval_timeout_s": 1800,
            }
        else:
            base |= {"mem_limit_mb": 3072, "eval_mem_limit_mb": 3072, "output_limit_mb": 128}
        return cls(**(base | overrides))

    def common_docker_kwargs(self, *, mem_limit_mb: int) -> dict[str, Any]:
        """Keyword arguments for docker-py's containers.create shared by every container we start.

        The hardening flags here are constants on purpose (see module docstring).
        """
        tmp_exec = "exec" if self.tmp_exec else "noexec"
        kwargs: dict[str, Any] = {
            "network_mode": "none",
            "read_only": True,
            "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges:true"],
            "user": f"{self.uid}:{self.gid}",
            "pids_limit": self.pids_limit,
            "mem_limit": mem_limit_mb * MiB,
            "memswap_limit": mem_limit_mb * MiB,  # equal to mem_limit: no swap
            "shm_size": self.shm_size_mb * MiB,
            "tmpfs": {"/tmp": f"rw,{tmp_exec},nosuid,nodev,size={self.tmp_size_mb}m,mode=1777"},
            "init": True,
            "ipc_mode": "private",
            # fsize: no single file may outgrow the largest writable mount, so a runaway write dies with
            # SIGXFSZ instead of filling anything the engine shares.
            "ulimits": _ulimits(
                core=0, nofile=self.nofile, fsize=max(self.output_limit_mb, self.tmp_size_mb) * MiB
            ),
            # The engine keeps at most log_limit_bytes of each container's output (two rotated halves,
            # so the newest output survives): a candidate printing without end cannot fill the host disk.
            "log_config": _log_config(self.log_limit_bytes),
            "environment": {"HOME": "/tmp", "TMPDIR": "/tmp"},
            "working_dir": C.CONTAINER_WORKDIR,
            "stdin_open": False,
            "tty": False,
            "privileged": False,
        }
        if self.cpus is not None:
            kwargs["nano_cpus"] = int(self.cpus * 1e9)
        if self.cpuset_cpus is not None:
            kwargs["cpuset_cpus"] = self.cpuset_cpus
        if self.runtime is not None:
            kwargs["runtime"] = self.runtime
        return kwargs


def _ulimits(**limits: int) -> list[Any]:
    from docker.types import Ulimit

    return [Ulimit(name=name, soft=value, hard=value) for name, value in limits.items()]


def _log_config(limit_bytes: int) -> Any:
    from docker.types import LogConfig

    half = max(limit_bytes // 2, 1024)
    return LogConfig(type="json-file", config={"max-size": str(half), "max-file": "2"})
