r"""Compares finished AIR runs side by side: one markdown row per workdir.

  python -m launch.compare --workdirs=runs/air_concrete_s0,runs/air_rebar_s0 \
      [--target=0.98] [--table=backgrounds]

Each row reads the workdir's `config.json`, `metrics.jsonl` and
`final_metrics.json`: estimator and K, seed, held-out count accuracy (all,
then 0 / 1 / 2 digits), the scenes counted too many and too few, IWAE and ELBO of the final evaluation, the first
step whose held-out evaluation reached `--target` count accuracy, the
training time and the median training images/s of the logged steps. It
reads files only: no JAX, nothing is changed.
"""

import json
import os
import statistics

from absl import app
from absl import flags

from launch import common
from apdr_jax.errors import ApdrError

_WORKDIRS = flags.DEFINE_list("workdirs", None, "Finished AIR workdirs.",
                              required=True)
_TARGET = flags.DEFINE_float("target", 0.98, "Count accuracy for 'steps to'.")
_TABLE = flags.DEFINE_enum(
    "table", "estimators", ["estimators", "backgrounds"],
    "Which columns: the estimator study's, or the background study's (data "
    "and model background, reconstruction and background errors, the ink "
    "the background absorbs).")

HEADER = ("| workdir | estimator | K | seed | count accuracy | 0 / 1 / 2 digits | "
          "over / under | IWAE | ELBO | steps to {target:.0%} | training | "
          "images/s |\n|---|---|---|---|---|---|---|---|---|---|---|---|")


def _read_json(path):
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    raise ApdrError(f"cannot read {path}: {e}") from e


def _percent(final: dict, key: str) -> str:
  """A fraction as a percentage, or '-' for runs evaluated before it was
  recorded."""
  return f"{100 * final[key]:.1f}%" if key in final else "-"


def row(workdir: str, target: float) -> str:
  """The markdown row of one finished workdir."""
  config = _read_json(os.path.join(workdir, "config.json"))
  final = _read_json(os.path.join(workdir, "final_metrics.json"))
  records = []
  try:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
      lines = f.readlines()
  except OSError as e:
    raise ApdrError(f"cannot read {workdir}/metrics.jsonl: {e}") from e
  for line in lines:
    try:
      records.append(json.loads(line))
    except ValueError:
      continue  # a torn last line of a killed run
  reached = [r["step"] for r in records
             if r.get("count_accuracy", 0.0) >= target]
  speeds = [r["images_per_second"] for r in records
            if "images_per_second" in r]
  digits = " / ".join(f"{100 * final.get(f'count_accuracy_{n}', 0):.1f}"
                      for n in range(3))
  return (f"| {os.path.basename(workdir.rstrip('/'))} | {config['estimator']} "
          f"| {config['num_samples']} | {config['seed']} "
          f"| {100 * final['count_accuracy']:.1f}% | {digits}% "
          f"| {_percent(final, 'over_count')} / "
          f"{_percent(final, 'under_count')} "
          f"| {final['iwae']:.1f} | {final['elbo']:.1f} "
          f"| {reached[0] if reached else 'never'} "
          f"| {final['train_seconds']:.0f} s "
          f"| {statistics.median(speeds) if speeds else 0:,.0f} |")


BACKGROUND_HEADER = (
    "| workdir | data background | model background | seed | count accuracy "
    "| over / under | IWAE | ELBO | reconstruction MSE | background MSE | "
    "ink absorbed | training |\n|---|---|---|---|---|---|---|---|---|---|---|"
    "---|")


def background_row(workdir: str) -> str:
  """The background study's markdown row of one finished AIR workdir."""
  config = _read_json(os.path.join(workdir, "config.json"))
  final = _read_json(os.path.join(workdir, "final_metrics.json"))
  data, model = config["data"], config["model"]
  level = data.get("background", "black")
  if level != "black":
    level += (f" ({data.get('background_intensity', 0.5):g}, "
              f"{'per image' if data.get('background_varies') else 'fixed'})")
  component = model.get("background", "none")
  if component != "none":
    side = model.get("background_resolution", 0)
    component += f" {side}x{side}" if side else ""
    component += f", {model.get('background_compose', 'over')}"
    if model.get("background_static", False):
      component += ", static image"
    if model.get("background_latent_dim", 0):
      component += f", z_bg {model['background_latent_dim']}"
  if model.get("glimpse_net", "mlp") != "mlp":
    component += f"; {model['glimpse_net']} glimpse networks"
  number = lambda key, fmt: format(final[key], fmt) if key in final else "-"
  return (f"| {os.path.basename(workdir.rstrip('/'))} | {level} | {component} "
          f"| {config['seed']} | {100 * final['count_accuracy']:.1f}% "
          f"| {_percent(final, 'over_count')} / "
          f"{_percent(final, 'under_count')} "
          f"| {final['iwae']:.1f} | {final['elbo']:.1f} "
          f"| {number('reconstruction_mse', '.4f')} "
          f"| {number('background_mse', '.4f')} "
          f"| {number('background_ink_absorbed', '.3f')} "
          f"| {final['train_seconds']:.0f} s |")


def main(argv):
  del argv
  with common.user_errors():
    if _TABLE.value == "backgrounds":
      header = BACKGROUND_HEADER
      rows = [background_row(workdir) for workdir in _WORKDIRS.value]
    else:
      header = HEADER.format(target=_TARGET.value)
      rows = [row(workdir, _TARGET.value) for workdir in _WORKDIRS.value]
  print(header)
  print("\n".join(rows))


if __name__ == "__main__":
  app.run(main, flags_parser=common.parse_flags)
