"""``enable_x64()`` context manager on old and new JAX (``jax.experimental.enable_x64`` was removed in newer
releases in favour of ``jax.enable_x64``)."""
import jax

try:
  enable_x64 = jax.enable_x64
except AttributeError:  # jax <= 0.5
  from jax.experimental import enable_x64  # noqa: F401
