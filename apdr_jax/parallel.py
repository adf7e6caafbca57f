"""Data parallelism: a one-axis device mesh named `data`.

The trainer jit-compiles one global program (JAX's `jit` with `NamedSharding`):
parameters and optimiser state are replicated, each batch is split along its
first axis over the `data` axis, and the means over the batch in the loss
become cross-device means that XLA inserts itself. The result is the same
program as on one device, so the numbers do not depend on the device count.
"""

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from apdr_jax.errors import ConfigError

DATA_AXIS = "data"


def make_mesh(num_devices: int = 0) -> Mesh:
  """A `data` mesh over the first `num_devices` devices (0 = all of them).

  After `jax.distributed.initialize`, `jax.devices()` lists the devices of
  every process, so the mesh spans all hosts.
  """
  devices = jax.devices()
  if num_devices < 0 or num_devices > len(devices):
    raise ConfigError(
        f"num_devices={num_devices}, but JAX sees {len(devices)} device(s) "
        f"({devices[0].platform}); use 0 for all of them.")
  if num_devices:
    devices = devices[:num_devices]
  return Mesh(np.array(devices), (DATA_AXIS,))


def check_batch_divides(batch_size: int, mesh: Mesh, what: str = "batch_size"):
  """A clear error, before anything compiles, for a batch that won't split."""
  count = mesh.devices.size
  if batch_size % count:
    raise ConfigError(
        f"{what}={batch_size} does not divide evenly over {count} devices; "
        f"use a multiple of {count} or set num_devices.")


def barrier(name: str, timeout_s: int = 7200) -> None:
  """Waits until every process has reached the barrier `name`.

  A no-op in a single process. The wait happens in the coordination service
  of `jax.distributed` (as in JAX's own multi-process tests), not in a device
  collective: CPU collectives (gloo) give a late peer only 30 s, less than a
  compile or an evaluation on process 0 can take.

  Args:
    name: unique per call site and step (a barrier name is used once).
    timeout_s: how long to wait before failing.
  """
  if jax.process_count() == 1:
    return
  # No public API waits in the coordination service: the pinned JAX's
  # `jax.distributed` has only initialize/is_initialized/shutdown, and
  # `multihost_utils.sync_global_devices` is a device collective (the 30 s
  # above). Should the private path move, that is the fallback.
  try:
    from jax._src import distributed  # pylint: disable=g-import-not-at-top
    client = distributed.global_state.client
  except (ImportError, AttributeError):
    client = None
  if client is None:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)
    return
  client.wait_at_barrier(name, timeout_s * 1000)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))
