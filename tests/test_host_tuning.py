"""Tests of apdr_jax.host_tuning (the process settings applied on import)."""

import os

from apdr_jax import host_tuning


def test_xla_flag_added_once_and_user_setting_kept():
  flag = "--xla_cpu_experimental_ynn_fusion_type=-LIBRARY_FUSION_TYPE_REDUCE"
  assert host_tuning._xla_flags("", "0.10.2") == flag
  with_devices = host_tuning._xla_flags(
      "--xla_force_host_platform_device_count=2", "0.10.2")
  assert with_devices == "--xla_force_host_platform_device_count=2 " + flag
  assert host_tuning._xla_flags(with_devices, "0.10.2") == with_devices
  own = "--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_DOT"
  assert host_tuning._xla_flags(own, "0.10.2") == own


def test_xla_flag_left_out_for_other_jaxlib_versions():
  # An unknown flag aborts XLA, so it is only added where it was measured.
  assert host_tuning._xla_flags("", "0.11.0") == ""
  assert host_tuning._xla_flags("--a=1", "0.9.0") == "--a=1"


def test_importing_the_package_applied_the_settings():
  # conftest imports apdr_jax before JAX starts its backend.
  assert host_tuning._applied
  assert "xla_cpu_experimental_ynn_fusion_type" in os.environ["XLA_FLAGS"]


def test_malloc_tuning_takes_effect_on_linux():
  assert host_tuning._tune_malloc()
