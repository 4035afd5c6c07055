"""edge.trust."""
