"""tokenmask: learned context compression of language-model input as a Gymnasium / Stable-Baselines3 RL problem."""

__version__ = "0.1.0"
