"""edgesim edge: an asyncio IoT edge that terminates mutual TLS."""
