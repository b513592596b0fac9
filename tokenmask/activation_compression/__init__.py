"""tokenmask.activation_compression."""
