"""tokenmask.train."""
