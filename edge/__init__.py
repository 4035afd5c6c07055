"""edgesim edge: an asyncio IoT edge that terminates mutual TLS."""

from edge import _loader

# Before any module of the connect path is imported: the compiled build when it
# matches the sources (edge.compiled), the sources otherwise.
_loader.activate()
