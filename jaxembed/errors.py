"""Errors a user can act on. Each message names the config field or the path at fault
and what was expected, so the entry point can print it and exit without a traceback."""


class JaxembedError(Exception):
  """Base class: a problem with the user's input, not a bug in jaxembed."""


class ConfigError(JaxembedError, ValueError):
  """A config field has a value that cannot work."""


class DataError(JaxembedError, ValueError):
  """A data file is missing, unreadable, or yields no examples."""


class ModelLoadError(JaxembedError, ValueError):
  """A model folder or checkpoint is missing, or its tensors don't fit the model."""


class NonFiniteError(JaxembedError, FloatingPointError):
  """Training produced a non-finite loss or gradient; nothing after it was saved."""


class WorkdirBusyError(JaxembedError, RuntimeError):
  """Another process is training in the same workdir."""
