"""Exceptions raised by apdr_jax for problems a user can fix.

Every error that is caused by user input (a configuration value, a data file, a
checkpoint) derives from :class:`ApdrError`, so callers can catch all of them at
once. Programming errors inside the library keep raising the usual built-in
exceptions.
"""


class ApdrError(Exception):
    """Base class for errors a user can fix."""


class ConfigError(ApdrError, ValueError):
    """A configuration value is invalid."""


class DataError(ApdrError, ValueError):
    """Input data has the wrong shape, dtype, range or is missing, or the data
    cache cannot be written."""


class CheckpointError(ApdrError):
    """A checkpoint is missing or corrupt."""
