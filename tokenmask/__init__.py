"""tokenmask: learned context compression of language-model input as a Gymnasium / Stable-Baselines3 RL problem."""

__version__ = "0.1.0"

from tokenmask.api import CompressionResult, compress  # noqa: E402,F401  (models load when compress runs)
from tokenmask.envs.registration import register_envs  # noqa: E402

register_envs()  # gym.make("TokenMask-v0") works after `import tokenmask`
