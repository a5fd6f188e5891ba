"""Shared test settings: one thread (2-core machine, other processes may compute)."""

import os

import torch
from hypothesis import HealthCheck, settings

torch.set_num_threads(int(os.environ.get("TPHYS_TEST_THREADS", "1")))

settings.register_profile(
    "tphys", deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large], derandomize=False
)
settings.register_profile("ci", deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large], derandomize=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "tphys"))
