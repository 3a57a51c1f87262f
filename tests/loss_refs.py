"""Shared by the loss-family tests: float64 on both sides, and the small NumPy
references (unit vectors, log-sum-exp, the KL between in-batch distributions)."""

import jax
import numpy as np
import pytest


@pytest.fixture(autouse=True)
def float64():
  """float64 on both sides, so values compare to 1e-8; restored for other modules."""
  jax.config.update("jax_enable_x64", True)
  yield
  jax.config.update("jax_enable_x64", False)


def unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def lse(values):
  values = np.asarray(values, np.float64)
  m = values.max()
  return m + np.log(np.exp(values - m).sum())


def ref_kl(student, teacher, t):
  total = 0.0
  for s_row, t_row in zip(student, teacher):
    p = np.exp(t_row / t - lse(t_row / t))
    log_q = s_row / t - lse(s_row / t)
    total += np.sum(p * (np.log(p) - log_q))
  return total / len(student) * t * t
