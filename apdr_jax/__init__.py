"""apdr_jax: AIR and APDR (SQAIR) in JAX.

Importing the package applies the process settings of `host_tuning` (once,
before JAX starts a backend); `APDR_JAX_HOST_TUNING=0` turns them off.
"""

from apdr_jax import host_tuning

host_tuning.apply()


def load(workdir: str):
  """The trained model of a `launch.train` workdir: an `api.Model`.

  `model.decompose(x)`, `model.log_marginal(x, num_samples)`,
  `model.sample(num)` and, for APDR, `model.predict(sequences, num_frames)`;
  see `apdr_jax.api`. Imported on first use, so that `import apdr_jax` stays
  light.
  """
  from apdr_jax import api  # pylint: disable=g-import-not-at-top
  return api.load(workdir)
