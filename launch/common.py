"""Launcher plumbing shared by the entry points: distributed set-up, errors."""

import ast
import contextlib
import json
import os
import re
import sys

from absl import flags

_COORDINATOR = None
_NUM_PROCESSES = None
_PROCESS_ID = None


def define_distributed_flags():
  global _COORDINATOR, _NUM_PROCESSES, _PROCESS_ID
  _COORDINATOR = flags.DEFINE_string(
      "coordinator_address", os.environ.get("JAX_COORDINATOR_ADDRESS"),
      "host:port of process 0, for multi-host training.")
  _NUM_PROCESSES = flags.DEFINE_integer(
      "num_processes", int(os.environ.get("JAX_NUM_PROCESSES", "1")),
      "Number of processes (hosts).")
  _PROCESS_ID = flags.DEFINE_integer(
      "process_id", int(os.environ.get("JAX_PROCESS_ID", "0")),
      "This process's index.")


def initialize_distributed():
  """Calls `jax.distributed.initialize` when more than one process is asked."""
  if _NUM_PROCESSES is None or _NUM_PROCESSES.value <= 1:
    return
  import jax
  if not _COORDINATOR.value:
    sys.exit("error: --num_processes > 1 needs --coordinator_address=HOST:PORT")
  jax.distributed.initialize(coordinator_address=_COORDINATOR.value,
                             num_processes=_NUM_PROCESSES.value,
                             process_id=_PROCESS_ID.value)


def fail(message) -> None:
  """Prints `error: MESSAGE` as one line on stderr and exits with status 2.

  A traceback quoted in the message (ml_collections quotes a config file's)
  is cut to its last line, the exception.
  """
  text = str(message)
  head, quoted, trace = text.partition("Traceback (most recent call last):")
  if quoted:
    last = [line for line in trace.splitlines() if line.strip()][-1:]
    text = " ".join([head] + last)
  line = " ".join(text.split())
  print(f"error: {line}", file=sys.stderr, flush=True)
  sys.exit(2)


@contextlib.contextmanager
def user_errors():
  """Turns the library's user-fixable errors into one clear line and exit 2."""
  from apdr_jax.errors import ApdrError
  try:
    yield
  except ApdrError as e:
    fail(e)


def define_config_file(name: str, default: str, help_string: str):
  """`config_flags.DEFINE_config_file` (locked), with a bad override of the
  default config as one line and exit 2.

  Without `--NAME=FILE` on the command line, ml_collections reads the
  default file and the `--NAME.X=...` overrides while the flag is defined,
  at import, where an override of a field that does not exist is a
  traceback.

  Returns:
    The flag holder, as `DEFINE_config_file`.
  """
  from ml_collections import config_flags
  with _flag_errors(sys.argv):
    return config_flags.DEFINE_config_file(name, default, help_string,
                                           lock_config=True)


def parse_flags(argv: list[str]) -> list[str]:
  """`app.run`'s flags parser, with a bad flag as one line and exit 2.

  absl prints a flag it cannot parse (`--config.batch_size=abc`) on two
  lines and exits with status 1, and an override of a config field that
  does not exist (`--config.bogus=1`) escapes ml_collections as a KeyError
  traceback. Pass it as `app.run(main, flags_parser=common.parse_flags)`.

  Args:
    argv: the command line, program name first.

  Returns:
    The arguments left after the flags, program name first.
  """
  with _flag_errors(argv):
    argv = flags.FLAGS(argv)
  _check_config_files()
  return argv


@contextlib.contextmanager
def _flag_errors(argv: list[str]):
  """absl's and ml_collections' refusals of the command line as one line."""
  try:
    yield
  except flags.Error as e:  # unknown flag, bad value, missing --workdir
    fail(e)
  except (KeyError, AttributeError) as e:  # --config.X=1: no field X
    fail(_unknown_field(argv, str(e)))
  except (ValueError, TypeError, IndexError, OSError) as e:
    # ml_collections' other refusals of an override or a config file.
    fail(f"bad flags: {type(e).__name__}: {e}")


def _check_config_files() -> None:
  """Fails on a config file that did not load: ml_collections keeps its
  error for the first use of the config (a traceback in main)."""
  from ml_collections.config_flags import config_flags
  unloaded = getattr(config_flags, "_ErrorConfig", None)
  if unloaded is None:
    return
  for name in flags.FLAGS:
    value = flags.FLAGS[name].value
    if isinstance(value, unloaded):
      fail(f"--{name}={flags.FLAGS[name].config_filename}: "
           f"{object.__getattribute__(value, '_error')}")


def _unknown_field(argv: list[str], error: str) -> str:
  """The message for an override of a config field that does not exist.

  ml_collections raises a KeyError (in an AttributeError) whose text is the
  repr of `'bogus'`, with `Did you mean "X" instead of "Y"?` on a second
  line for a near miss.
  """
  text = error
  for _ in range(3):  # undo the reprs of the wrapped KeyErrors
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      break
    if not isinstance(value, str):
      break
    text = value
  quoted = re.search(r"'([^']+)'", text)
  field = quoted.group(1) if quoted else (
      text if re.fullmatch(r"[\w.]+", text) else None)
  flag = next((a.split("=", 1)[0] for a in argv[1:] if field and re.search(
      rf"\.{re.escape(field)}(\.|$)", a.split("=", 1)[0])), None)
  guess = re.search(r'Did you mean "([^"]+)"', text)
  return (f"{flag or 'a --config override'}: the config has no field "
          f"{field or text!r}" +
          (f" (did you mean {guess.group(1)!r}?)" if guess else "") +
          "; see the config file (and configs/default.py) for its fields")


def format_result(result: dict) -> str:
  return json.dumps({k: (round(v, 4) if isinstance(v, float) else v)
                     for k, v in result.items()}, indent=2)
