"""Multi-host initialisation: ``jax.distributed.initialize`` from flags, arguments or the usual environment.

On Cloud TPU VMs (and SLURM / Open MPI clusters) JAX discovers the coordinator itself, so ``initialize()`` with no
arguments suffices: ``jaxrec train --multihost`` on every worker. Elsewhere (several GPU hosts, or several
processes on one CPU machine) pass the flags or set the environment variables:

=====================  ==========================  ==============================================================
flag                   environment variable        meaning
=====================  ==========================  ==============================================================
``--coordinator``      ``JAXREC_COORDINATOR``      ``host:port`` of process 0 (it runs the coordination service)
``--num_processes``    ``JAXREC_NUM_PROCESSES``    number of processes in the job
``--process_id``       ``JAXREC_PROCESS_ID``       this process, ``0 .. num_processes - 1``
``--init_timeout``     ``JAXREC_INIT_TIMEOUT``     seconds to wait for every process to join (default 300)
``--heartbeat_timeout`` ``JAXREC_HEARTBEAT_TIMEOUT`` seconds without a heartbeat after which a process counts as
                                                   dead (default 100)
``--local_devices``    ``JAXREC_LOCAL_DEVICES``    CPU only: devices per process (``jax_num_cpu_devices``)
=====================  ==========================  ==============================================================

Flags win over the environment. Failure behaviour (bounded, never a hang):

* a process that never joins: every other process aborts after ``init_timeout`` seconds
  (``DEADLINE_EXCEEDED ... RegisterTask``);
* a process that dies during training: the coordination service notices (at once when its connections close,
  at most ``heartbeat_timeout`` seconds when it stops responding) and terminates every other process with
  ``Terminating process because the JAX distributed service detected fatal errors. This most likely indicates
  that another task died`` (exit status 134, SIGABRT). Restart the job; it resumes from the last checkpoint.

On CPU the cross-process collectives use gloo (``jax_cpu_collectives_implementation``).
"""

from __future__ import annotations

import argparse
import os
import sys

from jaxrec.config import ConfigError

DEFAULT_INIT_TIMEOUT = 300
DEFAULT_HEARTBEAT_TIMEOUT = 100


def initialize(coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None,
               timeout_s: int | None = None, heartbeat_timeout_s: int | None = None,
               local_devices: int | None = None, verbose: bool = True) -> None:
    """``jax.distributed.initialize`` with jaxrec's flags / environment; call before any other JAX use.

    Without a coordinator (argument or ``JAXREC_COORDINATOR``), JAX's own cluster detection is used (Cloud TPU,
    SLURM, Open MPI, GKE). With one, ``num_processes`` and ``process_id`` are required. Bad combinations raise
    :class:`jaxrec.config.ConfigError` (a ``ValueError``; the CLI prints it as one line) before JAX is touched.
    """
    import jax

    coordinator = coordinator or os.environ.get("JAXREC_COORDINATOR") or None
    num_processes = num_processes if num_processes is not None else _int_env("JAXREC_NUM_PROCESSES")
    process_id = process_id if process_id is not None else _int_env("JAXREC_PROCESS_ID")
    timeout_s = timeout_s if timeout_s is not None else (_int_env("JAXREC_INIT_TIMEOUT") or DEFAULT_INIT_TIMEOUT)
    heartbeat_timeout_s = (heartbeat_timeout_s if heartbeat_timeout_s is not None
                           else (_int_env("JAXREC_HEARTBEAT_TIMEOUT") or DEFAULT_HEARTBEAT_TIMEOUT))
    local_devices = local_devices if local_devices is not None else _int_env("JAXREC_LOCAL_DEVICES")
    if timeout_s <= 0 or heartbeat_timeout_s <= 0:
        raise ConfigError(f"multihost: timeouts must be positive seconds, got init_timeout={timeout_s}, "
                         f"heartbeat_timeout={heartbeat_timeout_s}")
    kwargs = {"initialization_timeout": int(timeout_s), "heartbeat_timeout_seconds": int(heartbeat_timeout_s)}
    if coordinator is not None:
        if num_processes is None or process_id is None:
            raise ConfigError(f"multihost: coordinator {coordinator!r} given, but --num_processes / "
                             f"JAXREC_NUM_PROCESSES and --process_id / JAXREC_PROCESS_ID are also required")
        if num_processes < 1 or not 0 <= process_id < num_processes:
            raise ConfigError(f"multihost: process_id must be in [0, {num_processes}), got {process_id}")
        if ":" not in coordinator:
            raise ConfigError(f"multihost: coordinator must be host:port, got {coordinator!r}")
        kwargs.update(coordinator_address=coordinator, num_processes=num_processes, process_id=process_id)
    elif num_processes is not None or process_id is not None:
        raise ConfigError("multihost: --num_processes / --process_id need --coordinator (or JAXREC_COORDINATOR)")
    # cross-process collectives of the CPU backend (no effect on TPU / GPU computations)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if local_devices:
        jax.config.update("jax_num_cpu_devices", int(local_devices))
    if verbose:
        who = (f"process {process_id} of {num_processes}, coordinator {coordinator}" if coordinator
               else "cluster auto-detection")
        print(f"jaxrec: jax.distributed.initialize ({who}); waiting up to {timeout_s}s for all processes, "
              f"heartbeat timeout {heartbeat_timeout_s}s", file=sys.stderr, flush=True)
    jax.distributed.initialize(**kwargs)
    if verbose:
        print(f"jaxrec: process {jax.process_index()}/{jax.process_count()}: {jax.local_device_count()} local of "
              f"{jax.device_count()} {jax.devices()[0].platform} devices", file=sys.stderr, flush=True)


def add_multihost_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``--multihost`` (if absent) and the coordinator flags to an argparse (sub)parser."""
    existing = {a for action in parser._actions for a in action.option_strings}
    if "--multihost" not in existing:
        parser.add_argument("--multihost", action="store_true",
                            help="join a multi-process job (jax.distributed.initialize) before training; on Cloud "
                                 "TPU VMs no other flag is needed")
    g = parser.add_argument_group("multi-host (with --multihost; flags override the JAXREC_* environment)")
    g.add_argument("--coordinator", default=None, metavar="HOST:PORT",
                   help="address of process 0 (env JAXREC_COORDINATOR); omit on Cloud TPU / SLURM")
    g.add_argument("--num_processes", type=int, default=None, help="processes in the job (env JAXREC_NUM_PROCESSES)")
    g.add_argument("--process_id", type=int, default=None, help="this process's index (env JAXREC_PROCESS_ID)")
    g.add_argument("--init_timeout", type=int, default=None,
                   help=f"seconds to wait for all processes to join (env JAXREC_INIT_TIMEOUT, "
                        f"default {DEFAULT_INIT_TIMEOUT})")
    g.add_argument("--heartbeat_timeout", type=int, default=None,
                   help=f"seconds after which a silent process counts as dead and the job stops "
                        f"(env JAXREC_HEARTBEAT_TIMEOUT, default {DEFAULT_HEARTBEAT_TIMEOUT})")
    g.add_argument("--local_devices", type=int, default=None,
                   help="CPU only: devices per process (env JAXREC_LOCAL_DEVICES)")
    return parser


def initialize_from_args(args: argparse.Namespace) -> bool:
    """Initialise if ``args.multihost`` (or any coordinator flag) is set; returns whether it did."""
    flags = ("coordinator", "num_processes", "process_id")
    if not getattr(args, "multihost", False):
        given = [f"--{f}" for f in flags if getattr(args, f, None) is not None]
        if not given:
            return False
        raise ConfigError(f"multihost: {' '.join(given)} given without --multihost")
    initialize(coordinator=getattr(args, "coordinator", None), num_processes=getattr(args, "num_processes", None),
               process_id=getattr(args, "process_id", None), timeout_s=getattr(args, "init_timeout", None),
               heartbeat_timeout_s=getattr(args, "heartbeat_timeout", None),
               local_devices=getattr(args, "local_devices", None))
    return True


def is_initialized() -> bool:
    import jax

    return jax.distributed.is_initialized()


def shutdown() -> None:
    import jax

    if jax.distributed.is_initialized():
        jax.distributed.shutdown()


def _int_env(name: str) -> int | None:
    v = os.environ.get(name)
    if v is None or v == "":
        return None
    try:
        return int(v)
    except ValueError:
        raise ConfigError(f"environment variable {name}: expected an int, got {v!r}") from None
