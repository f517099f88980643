"""Mesh, shardings, multi-process start-up and host batch → global array.

Sharding is decided here once (as in maxtext): a 1-D mesh over every device of every process
with axis `config.parallel.data_axis` ("data"); batches are split along it, parameters and
optimizer state replicated. The same code runs on one CPU, a multi-device host and a pod.

Multi-process launch (one process per host, or several on one host): each process calls
`initialize_distributed` before any other JAX call. Explicit arguments win — the flags of
`python -m ctjax.train` (`--coordinator_address host:port --num_processes N --process_id i`) or
the environment (`CTJAX_COORDINATOR_ADDRESS`, `CTJAX_NUM_PROCESSES`, `CTJAX_PROCESS_ID`);
without them, `jax.distributed.initialize()` is called by default wherever JAX can discover a
multi-process cluster itself (`cluster_environment`: a SLURM step of several tasks, Open MPI's
mpirun, a Cloud TPU pod, or `JAX_COORDINATOR_ADDRESS`). `CTJAX_DISTRIBUTED=off` turns the
discovery off.
A process that dies makes the others exit within seconds with one line (`ctjax.train.peers`).
"""

from __future__ import annotations

import logging
import os
from typing import Any, Mapping, Optional, Sequence

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from ctjax.errors import ConfigError

log = logging.getLogger(__name__)

_INITIALIZED = False


def cluster_environment() -> Optional[str]:
  """The multi-process cluster JAX can discover here (its name), or None.

  SLURM and Open MPI count only with more than one task; Cloud TPU VMs as JAX detects them
  (a single host is a cluster of one, which initialises trivially).
  """
  env = os.environ
  if env.get("CTJAX_DISTRIBUTED", "").lower() in ("off", "0", "false", "no"):
    return None
  if env.get("JAX_COORDINATOR_ADDRESS"):
    return "JAX_COORDINATOR_ADDRESS"
  slurm = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID",
           "SLURM_LOCALID")
  if all(k in env for k in slurm) and int(env["SLURM_NTASKS"] or 1) > 1:
    return "SLURM"
  if "OMPI_MCA_orte_hnp_uri" in env and int(env.get("OMPI_COMM_WORLD_SIZE", "2") or 2) > 1:
    return "Open MPI"
  try:
    from jax._src.clusters import cloud_tpu_cluster as tpu
  except ImportError:   # a JAX without its cluster module: no discovery
    return None
  for cls in (tpu.GkeTpuCluster, tpu.GceTpuCluster):
    try:
      if cls.is_env_present():
        return "Cloud TPU"
    except Exception:  # noqa: BLE001 — a failed probe only means no TPU pod here
      continue
  return None


def initialize_distributed(coordinator_address: Optional[str] = None,
                           num_processes: Optional[int] = None,
                           process_id: Optional[int] = None) -> bool:
  """Starts `jax.distributed` when launched as several processes; True if it did.

  Call before any other JAX use. Missing arguments are read from CTJAX_COORDINATOR_ADDRESS /
  CTJAX_NUM_PROCESSES / CTJAX_PROCESS_ID; with none, a cluster JAX discovers itself
  (`cluster_environment`) is joined. On CPU the cross-process collectives use gloo.
  """
  global _INITIALIZED
  if _INITIALIZED:
    return True
  env = os.environ
  coordinator_address = coordinator_address or env.get("CTJAX_COORDINATOR_ADDRESS") or None
  if num_processes is None and env.get("CTJAX_NUM_PROCESSES"):
    num_processes = int(env["CTJAX_NUM_PROCESSES"])
  if process_id is None and env.get("CTJAX_PROCESS_ID"):
    process_id = int(env["CTJAX_PROCESS_ID"])
  cluster = None if coordinator_address is not None else cluster_environment()
  if coordinator_address is None and cluster is None:
    if num_processes not in (None, 1):
      raise ConfigError(f"num_processes={num_processes} needs a coordinator address "
                        "(--coordinator_address host:port or CTJAX_COORDINATOR_ADDRESS)")
    return False
  if coordinator_address is not None and (num_processes is None or process_id is None):
    raise ConfigError("--coordinator_address needs --num_processes and --process_id")
  if num_processes is not None and not 0 <= (process_id or 0) < num_processes:
    raise ConfigError(f"process_id={process_id} outside [0, num_processes={num_processes})")
  platforms = env.get("JAX_PLATFORMS", "") or jax.config.jax_platforms or ""
  if platforms.startswith("cpu"):
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if cluster is not None:
    log.info("jax.distributed: joining the %s cluster", cluster)
  jax.distributed.initialize(coordinator_address, num_processes=num_processes,
                             process_id=process_id)
  _INITIALIZED = True
  from ctjax.train import peers
  peers.start(jax.process_index(), jax.process_count())
  log.info("jax.distributed: process %d of %d, %d local / %d global devices",
           jax.process_index(), jax.process_count(), jax.local_device_count(),
           jax.device_count())
  return True


def is_distributed() -> bool:
  """True once `initialize_distributed` started jax.distributed in this process."""
  return _INITIALIZED


def barrier(name: str) -> None:
  """All processes wait here (no-op with one process)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def process_zero_first(fn, name: str):
  """`fn()` on process 0 first (e.g. generating or preparing a data set once), then on the
  others once it finished (they find its output and only read it)."""
  if jax.process_count() == 1:
    return fn()
  if jax.process_index() == 0:
    out = fn()
    barrier(name)
    return out
  barrier(name)
  return fn()


def mesh_size(config: ml_collections.ConfigDict) -> int:
  """Devices of `make_mesh(config)` (without building it)."""
  n = int(config.get("parallel", {}).get("num_devices", -1))
  return jax.device_count() if n == -1 else n


def make_mesh(config: ml_collections.ConfigDict,
              devices: Optional[Sequence[Any]] = None) -> Mesh:
  """A 1-D data-parallel mesh over `config.parallel.num_devices` (-1: all) devices.

  `devices`: where to lay it (default every device of every process); ahead-of-time
  compilation passes a compile-only topology's devices (`jax.experimental.topologies`).
  """
  n = int(config.parallel.num_devices)
  total = jax.device_count() if devices is None else len(devices)
  if n == -1:
    n = total
  if n <= 0 or n > total:
    raise ConfigError(f"config.parallel.num_devices={config.parallel.num_devices}: "
                      f"{total} devices available (-1 uses all)")
  if jax.process_count() > 1 and n != total:
    raise ConfigError("config.parallel.num_devices must be -1 (all) with several processes")
  if devices is None:
    devices = None if n == total else jax.devices()[:n]
  else:
    devices = list(devices)[:n]
  # Auto axes: XLA propagates shardings through model code (JAX >= 0.7 defaults to Explicit,
  # which would ask every op of every model to agree on shardings by hand).
  return jax.make_mesh((n,), (config.parallel.data_axis,), devices=devices,
                       axis_types=(jax.sharding.AxisType.Auto,))


def data_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over the mesh's data axis; other axes whole."""
  return NamedSharding(mesh, P(mesh.axis_names[0]))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def local_batch_size(global_batch: int, mesh: Mesh) -> int:
  """This process's share of the global batch; raises ConfigError when it does not divide."""
  n = mesh.devices.size
  if global_batch % n:
    raise ConfigError(f"batch size {global_batch} is not divisible by the {n} devices of the "
                      "mesh; set --config.train.batch_size to a multiple")
  return global_batch // jax.process_count()


def host_to_global(batch: Mapping[str, Any], mesh: Mesh) -> dict[str, jax.Array]:
  """This process's numpy batch (its rows of the global batch) → global sharded jax.Arrays.

  Process p holds rows [p·b, (p+1)·b) of the global batch, b = global // process_count, which
  land on its own devices of the data axis. Non-array entries (strings) are dropped.
  """
  sharding = data_sharding(mesh)
  out = {}
  for key, value in batch.items():
    value = np.asarray(value)
    if value.dtype.kind in "OUS":
      continue
    out[key] = jax.make_array_from_process_local_data(sharding, value)
  return out


def put_replicated(tree: Any, mesh: Mesh) -> Any:
  """Host values identical on every process → replicated global arrays."""
  sharding = replicated(mesh)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), tree)


def to_host(tree: Any) -> Any:
  """Global arrays → full numpy arrays on every process (all-gather across processes)."""
  if jax.process_count() == 1:
    return jax.tree.map(np.asarray, jax.device_get(tree))
  from jax.experimental import multihost_utils
  return multihost_utils.process_allgather(tree, tiled=True)


def replicated_to_host(tree: Any) -> Any:
  """Replicated global arrays → numpy from this process's own copy (no communication)."""
  def get(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      return np.asarray(x.addressable_data(0))
    return np.asarray(x)
  return jax.tree.map(get, tree)
