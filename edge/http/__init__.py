"""edge.http."""
