"""Joining a multi-host run: `jax.distributed` from command-line flags or the cluster environment.

One process runs per host (per GPU under SLURM). Before JAX starts a backend, every process calls
`initialize`, which does one of three things:

- explicit flags (`--coordinator_address=HOST:PORT --num_processes=N --process_id=I`, all three):
  joins that runtime; this is how runs are started by hand, or on a cluster JAX cannot detect;
- a cluster JAX detects by itself (a SLURM job step of several tasks, the workers of a GKE TPU
  slice, a Cloud TPU VM): calls `jax.distributed.initialize()` with no arguments, as JAX wants
  there (it reads the coordinator, process count and id from the environment or the TPU metadata);
- otherwise nothing: a single-process run needs no distributed runtime.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from collections.abc import Callable, Mapping

import jax
from absl import logging


class DistributedError(ValueError):
    """Inconsistent distributed flags; the message names the flag."""


@dataclasses.dataclass(frozen=True)
class Flags:
    """The three explicit flags (None where not given)."""

    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None

    def given(self) -> bool:
        return any(v is not None for v in dataclasses.astuple(self))


def check_flags(flags: Flags) -> None:
    """Raises DistributedError (one line naming the flag) for an incomplete or impossible set."""
    if not flags.given():
        return
    missing = [f"--{f.name}" for f in dataclasses.fields(flags) if getattr(flags, f.name) is None]
    if missing:
        raise DistributedError(
            f"{', '.join(missing)} missing: --coordinator_address, --num_processes and --process_id go together")
    host, _, port = flags.coordinator_address.rpartition(":")
    if not host or not port.isdigit():
        raise DistributedError(f"--coordinator_address={flags.coordinator_address!r}: expected HOST:PORT")
    if flags.num_processes < 1:
        raise DistributedError(f"--num_processes={flags.num_processes}: must be at least 1")
    if not 0 <= flags.process_id < flags.num_processes:
        raise DistributedError(
            f"--process_id={flags.process_id}: must be in [0, {flags.num_processes}) (--num_processes)")


def tpu_chips() -> int:
    """TPU chips on this machine's PCI bus, counted by JAX's own check (0 if JAX moved it)."""
    try:
        from jax._src import hardware_utils
    except ImportError:
        return 0
    return hardware_utils.num_available_tpu_chips_and_device_id()[0]


def detect_cluster(environ: Mapping[str, str] = os.environ,
                   count_tpu_chips: Callable[[], int] = tpu_chips) -> str | None:
    """'slurm', 'gke-tpu' or 'tpu-vm' where JAX initialises itself from the environment, else None.

    Checks the signs JAX's own cluster detection uses: the SLURM job-step variables (with more
    than one task), the TPU worker list GKE sets (more than one worker), TPU chips on the PCI bus.
    """
    slurm = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID")
    if all(k in environ for k in slurm) and int(environ["SLURM_NTASKS"]) > 1:
        return "slurm"
    workers = environ.get("TPU_PROCESS_ADDRESSES") or environ.get("TPU_WORKER_HOSTNAMES") or ""
    if len([w for w in workers.split(",") if w]) > 1:
        return "gke-tpu"
    if count_tpu_chips() > 0:
        return "tpu-vm"
    return None


def _bind_address(coordinator_address: str) -> str | None:
    """A loopback coordinator binds to its own address: JAX's default, all interfaces on `[::]`,
    fails on machines without IPv6 and is reachable only locally anyway."""
    host, _, port = coordinator_address.rpartition(":")
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        loopback = False
    return f"{host}:{port}" if loopback else None


def initialize(flags: Flags, environ: Mapping[str, str] = os.environ) -> str:
    """Joins the multi-host runtime the flags or the environment describe; returns how
    ('flags', a `detect_cluster` name, or 'single process'). Call before any other JAX call."""
    check_flags(flags)
    if flags.given():
        if flags.num_processes == 1:
            return "single process"
        jax.distributed.initialize(
            coordinator_address=flags.coordinator_address, num_processes=flags.num_processes,
            process_id=flags.process_id, coordinator_bind_address=_bind_address(flags.coordinator_address))
        how = "flags"
    else:
        how = detect_cluster(environ)
        if how is None:
            return "single process"
        jax.distributed.initialize()
    # Not jax.process_index(): that would start the backend before the caller sets it up.
    logging.info("Joined the distributed runtime (%s).", how)
    return how


def barrier(name: str) -> None:
    """Waits until every process reaches the barrier called `name` (no-op in one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def is_chief() -> bool:
    """True on the process that writes what is written once (process 0; the only one when alone)."""
    return jax.process_index() == 0
