"""The web console's static files (``index.html``, ``console.js``, ``console.css``).

Served under ``/ui/`` by :mod:`edge.http.console_api`; no build step, no external
network: the page speaks the admin API and its event streams, like the CLI.
"""
