"""Topic handlers that ship with the edge, for ``edgesim edge serve --handlers``."""
