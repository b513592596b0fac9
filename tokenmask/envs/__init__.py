"""tokenmask.envs."""
