"""edgesim PKI toolkit: pure, synchronous, depends only on ``cryptography``."""
