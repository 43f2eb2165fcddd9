"""Multi-host initialisation: ``jax.distributed.initialize`` from arguments or the usual environment.

On Cloud TPU VMs and SLURM/Open MPI clusters JAX discovers the coordinator itself, so ``initialize()`` with no
arguments suffices. Elsewhere set ``JAXREC_COORDINATOR`` (host:port), ``JAXREC_NUM_PROCESSES`` and
``JAXREC_PROCESS_ID`` (or pass them). ``JAXREC_INIT_TIMEOUT`` bounds how long a process waits for the others
(seconds, default 300), so a missing peer fails with an error instead of hanging.
"""

from __future__ import annotations

import os

import jax


def initialize(coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None,
               timeout_s: int | None = None) -> None:
    coordinator = coordinator or os.environ.get("JAXREC_COORDINATOR")
    num_processes = num_processes if num_processes is not None else _int_env("JAXREC_NUM_PROCESSES")
    process_id = process_id if process_id is not None else _int_env("JAXREC_PROCESS_ID")
    timeout_s = timeout_s if timeout_s is not None else (_int_env("JAXREC_INIT_TIMEOUT") or 300)
    kwargs = {"initialization_timeout": timeout_s}
    if coordinator is not None:
        kwargs.update(coordinator_address=coordinator, num_processes=num_processes, process_id=process_id)
    if os.environ.get("JAX_PLATFORMS", "") == "cpu":  # CPU collectives across processes
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**kwargs)


def _int_env(name: str) -> int | None:
    v = os.environ.get(name)
    if v is None or v == "":
        return None
    try:
        return int(v)
    except ValueError:
        raise ValueError(f"environment variable {name}: expected an int, got {v!r}") from None
