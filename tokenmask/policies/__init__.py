"""tokenmask.policies."""
