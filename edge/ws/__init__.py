"""edge.ws."""
