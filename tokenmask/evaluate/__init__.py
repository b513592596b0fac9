"""tokenmask.evaluate."""
