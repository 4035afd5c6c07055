"""edge.tls."""
