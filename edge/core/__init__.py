"""edge.core."""
