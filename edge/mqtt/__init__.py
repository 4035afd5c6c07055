"""edge.mqtt."""
