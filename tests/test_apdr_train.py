"""APDR and the frame-by-frame AIR baseline through the trainer and launchers:
one step per curriculum stage without retracing, end to end on a tiny config,
evaluation of held-out and user sequences."""

import json
import os
import shutil

import chex
import jax
import numpy as np
import pytest

from apdr_jax import input_pipeline
from apdr_jax import parallel
from apdr_jax import run_config
from apdr_jax import train
from apdr_jax.errors import ConfigError, DataError
from configs import apdr_moving_mnist
from configs import tiny_apdr


def _config(**overrides):
  config = tiny_apdr.get_config()
  config.num_devices = 1
  config.update(overrides)
  return config


def _curriculum_config():
  """The recipe with 3 frames first and one more every 1,000 steps."""
  config = apdr_moving_mnist.get_config()
  config.curriculum_start_frames = 3
  config.curriculum_steps_per_frame = 1_000
  return config


def test_curriculum_adds_one_frame_per_stage():
  config = _curriculum_config()
  frames = [run_config.num_frames_at(config, s) for s in (0, 999, 1000, 6999, 7000,
                                                     50_000)]
  assert frames == [3, 3, 4, 9, 10, 10]
  config.curriculum_max_frames = 5
  frames = [run_config.num_frames_at(config, s) for s in (0, 1999, 2000, 50_000)]
  assert frames == [3, 4, 5, 5]
  config.curriculum_start_frames = 0
  assert run_config.num_frames_at(config, 0) == 5
  config.curriculum_max_frames = 0
  assert run_config.num_frames_at(config, 0) == 10


def test_traced_curriculum_matches_the_python_schedule():
  """The update step reads the stage from its traced step counter."""
  config = _curriculum_config()
  steps = [0, 1, 999, 1000, 2500, 5999, 6000, 6999, 7000, 50_000]
  for cap, cap_from in ((0, 0), (5, 0), (5, 6_000)):
    config.curriculum_max_frames = cap
    config.curriculum_max_frames_from = cap_from
    traced = jax.jit(lambda s: run_config.num_frames_at(config, s))
    assert [int(traced(jax.numpy.asarray(s))) for s in steps] == [
        run_config.num_frames_at(config, s) for s in steps], (cap, cap_from)


def test_curriculum_last_stage_on_shorter_sequences():
  config = _curriculum_config()
  config.curriculum_max_frames = 5
  config.curriculum_max_frames_from = 6_000
  frames = [run_config.num_frames_at(config, s)
            for s in (0, 2000, 5999, 6000, 50_000)]
  assert frames == [3, 5, 8, 5, 5]


@pytest.mark.parametrize("field,value", [("curriculum_max_frames", 1),
                                         ("curriculum_max_frames", -1),
                                         ("curriculum_max_frames_from", -1)])
def test_bad_curriculum_cap_raises(field, value):
  config = apdr_moving_mnist.get_config()
  config.curriculum_max_frames = 5
  config[field] = value
  with pytest.raises(ConfigError, match=field):
    run_config.validate_config(config)


def test_bad_apdr_config_values_raise_clear_errors():
  with pytest.raises(ConfigError, match="data.kind"):
    run_config.validate_config(_bad_kind())
  with pytest.raises(ConfigError, match="config.apdr"):
    config = _config()
    config.apdr.unknown_width = 3
    run_config.validate_config(config)
  with pytest.raises(ConfigError, match="model_name"):
    run_config.validate_config(_config(model_name="sqair2"))
  with pytest.raises(ConfigError, match="AIR only"):
    run_config.validate_config(_config(estimator="concrete"))
  with pytest.raises(ConfigError, match="objective='fivo'"):
    run_config.validate_config(_config(objective="fivo", estimator="vimco"))
  with pytest.raises(ConfigError, match="objective="):
    run_config.validate_config(_config(objective="elbo"))
  with pytest.raises(ConfigError, match="model.canvas"):
    config = _config()
    config.model.canvas = "max"
    run_config.validate_config(config)
  with pytest.raises(ConfigError, match="search_margin"):
    config = _config(model_name="air")
    config.data.kind = "sequences"
    config.search_margin = 10.0
    run_config.validate_config(config)
  with pytest.raises(ConfigError, match="best_of"):
    run_config.validate_config(_config(best_of=-1))
  with pytest.raises(ConfigError, match="best_of"):
    config = _config(model_name="air", best_of=5)
    run_config.validate_config(config)
  with pytest.raises(ConfigError, match="both_directions"):
    run_config.validate_config(_config(both_directions=True))
  run_config.validate_config(_config(both_directions=True, best_of=2))
  with pytest.raises(ConfigError, match="best_of_particles"):
    run_config.validate_config(_config(best_of_particles=True))
  run_config.validate_config(_config(best_of_particles=True, best_of=2))
  for field, value in (("propagation_glimpse", "centre"),
                       ("prior_survival_init", 1.0), ("survival_init", 0.0)):
    config = _config()
    config.apdr[field] = value
    with pytest.raises(ConfigError, match=f"config.apdr: {field}="):
      run_config.validate_config(config)


def test_train_enter_leave_fraction_mixes_training_sequences_only():
  config = _config()
  config.data.train_enter_leave_fraction = 0.5
  run_config.validate_config(config)
  train_data, test_data = input_pipeline.load_data(config)
  plain = _config()
  plain_train, plain_test = input_pipeline.load_data(plain)
  for key in ("images", "presence", "boxes", "ids"):
    np.testing.assert_array_equal(test_data[key], plain_test[key])
  used = (train_data["indices"] >= 0)[:, None, :]
  changed = np.any(train_data["presence"] != used, axis=(1, 2))
  assert changed.any() and not changed.all()
  np.testing.assert_array_equal(plain_train["presence"],
                                np.broadcast_to(used, plain_train["presence"].shape))
  for value, enter_leave in ((1.5, False), (-0.1, False), (0.5, True)):
    config = _config()
    config.data.train_enter_leave_fraction = value
    config.data.enter_leave = enter_leave
    with pytest.raises(ConfigError, match="train_enter_leave_fraction"):
      run_config.validate_config(config)
  scenes = _config(model_name="air")
  scenes.data.kind = "scenes"
  scenes.data.train_enter_leave_fraction = 0.5
  with pytest.raises(ConfigError, match="train_enter_leave_fraction"):
    run_config.validate_config(scenes)


def _bad_kind():
  config = _config()
  config.data.kind = "scenes"
  return config


def test_steps_change_params_and_compile_once_per_stage():
  """NVIL here; VIMCO (the APDR default) runs in the end-to-end fixture and
  in the 8-device test."""
  chex.clear_trace_counter()
  config = _config(estimator="nvil", num_samples=1)
  mesh = parallel.make_mesh(1)
  state = jax.device_put(train.create_train_state(config, jax.random.key(0)),
                         parallel.replicated(mesh))
  before = jax.tree.map(np.asarray, state.params)
  size, frames = config.data.canvas_size, config.data.num_frames
  sequences = np.random.default_rng(0).integers(
      0, 256, (16, frames, size, size), dtype=np.uint8)
  streams = input_pipeline.place_train_streams(sequences, config.batch_size, mesh)
  update = train.make_update_step(config, mesh, max_traces=1, num_frames=2)
  for _ in range(3):
    state, metrics = update(state, streams, jax.random.key(1))
  assert int(state.nonfinite_step) == -1
  assert float(metrics["num_frames"]) == 2
  for key in ("loss", "elbo", "bound", "log_likelihood", "kl", "grad_norm",
              "mean_count", "mean_propagated", "mean_discovered"):
    assert np.isfinite(metrics[key]), key
  changed = jax.tree.map(lambda a, b: not np.allclose(a, b), before,
                         jax.device_get(state.params))
  for module in ("prop_core", "relation_rnn", "prior_rnn", "temporal_rnn"):
    assert any(jax.tree.leaves(changed[module])), module
  assert any(jax.tree.leaves(changed["air"]["rnn"]))


@pytest.mark.parametrize("overrides", [
    dict(estimator="vimco"), dict(estimator="rws"),
    dict(estimator="rws", objective="fivo")], ids=["vimco", "rws", "fivo"])
def test_one_compile_serves_every_curriculum_stage(overrides):
  """The stage is a value of the step counter: three stages, one trace."""
  chex.clear_trace_counter()
  config = _config(num_samples=2, **overrides)
  config.curriculum_start_frames = 1
  config.curriculum_steps_per_frame = 1
  mesh = parallel.make_mesh(1)
  state = jax.device_put(train.create_train_state(config, jax.random.key(0)),
                         parallel.replicated(mesh))
  size, frames = config.data.canvas_size, config.data.num_frames
  sequences = np.random.default_rng(0).integers(
      0, 256, (16, frames, size, size), dtype=np.uint8)
  streams = input_pipeline.place_train_streams(sequences, config.batch_size,
                                               mesh)
  update = train.make_update_step(config, mesh, max_traces=1)
  seen = []
  for _ in range(frames + 1):
    state, metrics = update(state, streams, jax.random.key(1))
    seen.append(int(metrics["num_frames"]))
  assert seen == [min(1 + s, frames) for s in range(frames + 1)]
  assert int(state.nonfinite_step) == -1


@pytest.fixture
def workdir(tiny_apdr_run):
  return tiny_apdr_run


def test_training_writes_metrics_checkpoints_and_gifs(workdir):
  path, result = workdir
  for key in ("frame_count_accuracy", "tracking_consistency", "id_switches",
              "mota", "idf1", "iwae", "elbo", "log_likelihood", "kl",
              "fivo", "prediction_mse"):
    assert key in result, key
  for key in ("iwae", "elbo", "log_likelihood", "kl", "fivo",
              "prediction_mse"):
    assert np.isfinite(result[key]), key
  for name in ("final_metrics.json", "reconstructions.gif", "prediction.gif",
               "metrics.jsonl", "config.json"):
    assert os.path.exists(os.path.join(path, name)), name
  logged = [json.loads(line) for line in open(os.path.join(path,
                                                           "metrics.jsonl"))]
  assert [int(r["num_frames"]) for r in logged] == [2, 3]  # two stages
  assert "frame_count_accuracy" in logged[-1]


def test_evaluate_held_out_and_user_sequences(workdir, tmp_path):
  from launch import evaluate
  path, _ = workdir
  result = evaluate.run(path, None, str(tmp_path / "eval.json"), 2, 4)
  assert result["num_sequences"] == 4
  for key in ("frame_count_accuracy", "tracking_consistency", "iwae"):
    assert key in result, key
  assert os.path.exists(tmp_path / "eval_reconstructions.gif")
  assert not any(key.startswith("search_") for key in result)
  assert result["split"] == "test"
  # Settings are chosen on training sequences: --split=train scores those.
  searched = evaluate.run(path, None, str(tmp_path / "search.json"), 2, 4,
                          search_margin=0.0, split="train")
  assert searched["search_margin"] == 0.0 and searched["split"] == "train"
  for key in ("frame_count_accuracy", "tracking_consistency"):
    assert 0.0 <= searched[f"search_{key}"] <= 1.0 or np.isnan(
        searched[f"search_{key}"]), key
  assert "search_mota" in searched and "search_idf1" in searched
  best = evaluate.run(path, None, str(tmp_path / "best.json"), 2, 4,
                      best_of=3)
  assert best["best_of"] == 3 and np.isfinite(best["best_of_mean_log_weight"])
  for key in ("frame_count_accuracy", "tracking_consistency", "mota"):
    assert f"best_of_{key}" in best, key
  both = evaluate.run(path, None, str(tmp_path / "both.json"), 2, 4,
                      best_of=3, both_directions=True)
  assert 0.0 <= both["both_directions_backward_fraction"] <= 1.0
  # Per sequence the better of two readings: never below the forward one.
  assert (both["both_directions_mean_log_weight"] >=
          both["best_of_mean_log_weight"] - 1e-3)
  # The backward reading has keys of its own: the forward figures are those
  # of the run without it.
  for key in ("best_of_mean_log_weight", "best_of_frame_count_accuracy",
              "best_of_tracking_consistency", "best_of_mota"):
    assert both[key] == best[key], key
  for key in ("frame_count_accuracy", "tracking_consistency", "mota"):
    assert f"both_directions_{key}" in both, key
  assert not any(k.startswith("both_directions_") for k in best)
  with pytest.raises(ConfigError, match="both_directions"):
    evaluate.run(path, None, str(tmp_path / "x.json"), 2, 4, best_of=0,
                 both_directions=True)
  # The K samples as particles, resampled after every frame.
  smc = evaluate.run(path, None, str(tmp_path / "smc.json"), 2, 4, best_of=3,
                     both_directions=True, particles=True)
  assert smc["best_of_particles"] and not best["best_of_particles"]
  for key in ("best_of_frame_count_accuracy", "both_directions_mota"):
    assert key in smc, key
  assert np.isfinite(smc["fivo"]) and smc["fivo"] == best["fivo"]
  with pytest.raises(ConfigError, match="particles"):
    evaluate.run(path, None, str(tmp_path / "x.json"), 2, 4, best_of=0,
                 particles=True)
  # A workdir whose config asks for both directions: --best_of=0 turns
  # best-of off with it, instead of an error about a flag never passed.
  both_dir = tmp_path / "both_workdir"
  shutil.copytree(path, both_dir)
  saved = json.loads((both_dir / "config.json").read_text())
  saved.update(best_of=2, both_directions=True)
  (both_dir / "config.json").write_text(json.dumps(saved))
  plain = evaluate.run(str(both_dir), None, str(tmp_path / "plain.json"), 2,
                       4, best_of=0)
  assert not any(k.startswith(("best_of_", "both_directions_"))
                 for k in plain)
  assert "both_directions_tracking_consistency" in evaluate.run(
      str(both_dir), None, str(tmp_path / "both2.json"), 2, 4)
  explained = evaluate.run(path, None, str(tmp_path / "explain.json"), 2, 4,
                           explain=2)["explained"]
  from apdr_jax import checkpoints, input_pipeline
  _, test = input_pipeline.load_data(checkpoints.load_config(path))
  assert len(explained) == 2
  for i, frames in enumerate(explained):
    previous_ids = set()
    for t, frame in enumerate(frames):
      ids = [obj["id"] for obj in frame["objects"]]
      assert frame["propagated"] + frame["discovered"] == len(ids)
      # Propagated objects come first and carry ids of the previous frame.
      assert set(ids[:frame["propagated"]]) <= previous_ids
      assert len(frame["truth_centres"]) == test["counts"][i, t]
      previous_ids = set(ids)
  sequences = (np.random.default_rng(0).random((2, 3, 32, 32)) * 255).astype(
      np.uint8)
  np.save(tmp_path / "mine.npy", sequences)
  evaluate.run(path, str(tmp_path / "mine.npy"), str(tmp_path / "mine.json"),
               2, 4)
  saved = json.loads((tmp_path / "mine.json").read_text())
  assert len(saved["sequences"]) == 2
  best = evaluate.run(path, str(tmp_path / "mine.npy"),
                      str(tmp_path / "mine_best.json"), 2, 4, best_of=2)
  assert best["best_of"] == 2 and len(best["sequences"]) == 2
  both = evaluate.run(path, str(tmp_path / "mine.npy"),
                      str(tmp_path / "mine_both.json"), 2, 4, best_of=2,
                      both_directions=True)
  assert both["both_directions"] and len(both["backward"]) == 2
  with pytest.raises(ConfigError, match="best_of"):
    evaluate.run(path, str(tmp_path / "mine.npy"), str(tmp_path / "x.json"),
                 2, 4, best_of=2, search_margin=0.0)
  with pytest.raises(ConfigError, match="best_of"):
    evaluate.run(path, None, str(tmp_path / "x.json"), 2, 4, best_of=-1)
  for sequence in saved["sequences"]:
    assert len(sequence["frames"]) == 3
    for frame in sequence["frames"]:
      assert frame["count"] == len(frame["objects"])
      for obj in frame["objects"]:
        assert len(obj["box"]) == 4 and obj["id"] >= 0
  np.save(tmp_path / "flat.npy", sequences[:, 0])  # [num, H, W]: not sequences
  with pytest.raises(DataError, match="shape"):
    evaluate.run(path, str(tmp_path / "flat.npy"), str(tmp_path / "x.json"),
                 2, 4)


def test_air_baseline_trains_and_evaluates_on_sequences(tmp_path):
  """The frame-by-frame baseline: AIR on every frame, scored per sequence."""
  config = _config(model_name="air", estimator="nvil", num_samples=1)
  result = train.train_and_evaluate(config, str(tmp_path))
  for key in ("frame_count_accuracy", "tracking_consistency", "iwae", "elbo"):
    assert np.isfinite(result[key]), key
  # Independent frames: resampling after each changes nothing.
  assert result["fivo"] == result["iwae"]
  assert "prediction_mse" not in result  # AIR has no prior over time
  assert os.path.exists(tmp_path / "reconstructions.gif")

  # The trained baseline initialises APDR's discovery and decoder.
  apdr_config = _config(init_air_from=str(tmp_path))
  state = train.create_train_state(apdr_config, jax.random.key(3))
  grafted = train.init_from_air_workdir(apdr_config, state, str(tmp_path))
  _, air_state = train.checkpoints.restore_latest(
      train.checkpoints.manager(str(tmp_path)),
      train.create_train_state(config, jax.random.key(0)))
  air_params = jax.device_get(air_state.params)
  latent = grafted.params["air"]["rnn"]["latent"]["kernel"]
  rows = air_params["rnn"]["latent"]["kernel"].shape[0]
  np.testing.assert_array_equal(latent[:rows],
                                air_params["rnn"]["latent"]["kernel"])
  np.testing.assert_array_equal(latent[rows:], 0.0)  # the new context rows
  chex.assert_trees_all_equal(grafted.params["air"]["decoder"],
                              air_params["decoder"])
  chex.assert_trees_all_equal(grafted.params["prop_core"],
                              state.params["prop_core"])
  wider = _config(init_air_from=str(tmp_path))
  wider.model.lstm_size = 24
  # Named before any parameter is compared, with the flag that fixes it.
  with pytest.raises(ConfigError, match=r"lstm_size=\d+ there, 24 here.*"
                     r"--config.model.lstm_size="):
    train.init_from_air_workdir(
        wider, train.create_train_state(wider, jax.random.key(3)),
        str(tmp_path))
  # A canvas rule the AIR run was not trained with is named too.
  clipped = _config(init_air_from=str(tmp_path))
  clipped.model.canvas = "clip"
  with pytest.raises(ConfigError, match=r"canvas='sum' there, 'clip' here"):
    train.init_from_air_workdir(
        clipped, train.create_train_state(clipped, jax.random.key(3)),
        str(tmp_path))
  # An AIR config written before a model field existed reads as its default.
  saved = train.checkpoints.load_config(str(tmp_path))
  del saved.model["canvas"]
  train.checkpoints.save_config(saved, str(tmp_path))
  train.init_from_air_workdir(apdr_config, state, str(tmp_path))


def _config_modules() -> list[str]:
  """Every config module under configs/, experiments included."""
  root = os.path.join(os.path.dirname(__file__), "..", "configs")
  names = []
  for folder, prefix in ((root, ""), (os.path.join(root, "experiments"),
                                      "experiments.")):
    names += [prefix + f[:-3] for f in os.listdir(folder)
              if f.endswith(".py") and f != "__init__.py"]
  return sorted(names)


@pytest.mark.parametrize("name", _config_modules())
def test_every_config_validates(name):
  import importlib
  config = importlib.import_module(f"configs.{name}").get_config()
  run_config.validate_config(config)


@pytest.mark.parametrize("name", [n for n in _config_modules()
                                  if not n.startswith("experiments.")])
def test_recipes_read_in_one_file(name):
  """A recipe imports only `configs.default`: no chains of configs."""
  import ast
  path = os.path.join(os.path.dirname(__file__), "..", "configs",
                      name + ".py")
  with open(path) as f:
    tree = ast.parse(f.read())
  imported = {(node.module, alias.name) for node in ast.walk(tree)
              if isinstance(node, ast.ImportFrom) for alias in node.names}
  assert imported <= {("configs", "default")}, imported


def test_library_files_stay_short():
  """Every library and launcher file reads at once: about 400 lines at most
  (WORKSPACE.md's style; a file that grows past it is split by purpose)."""
  root = os.path.join(os.path.dirname(__file__), "..")
  long_files = {}
  for folder in ("apdr_jax", "launch"):
    for parent, _, names in os.walk(os.path.join(root, folder)):
      for name in names:
        if name.endswith(".py"):
          with open(os.path.join(parent, name)) as f:
            lines = sum(1 for _ in f)
          if lines > 420:
            long_files[os.path.relpath(os.path.join(parent, name), root)] = lines
  assert not long_files, long_files
