"""edgesim benchmarks (``make bench``): speed and memory, measured side by side.

Each module exposes ``run(quick: bool = False) -> dict[str, object]``: it prints a
short human summary and returns its figures (medians of several rounds, and ratios
against a reference measured in the same run, since these machines are shared and
noisy). ``python -m bench`` runs them all and writes ``bench/results/latest.json``.
"""
