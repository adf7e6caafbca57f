"""apdr_jax: AIR and APDR (SQAIR) in JAX.

Importing the package applies the process settings of `host_tuning` (once,
before JAX starts a backend); `APDR_JAX_HOST_TUNING=0` turns them off.
"""

from apdr_jax import host_tuning

host_tuning.apply()
