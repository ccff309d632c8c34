"""Tables and figures from the results store (``results/``): ours beside the papers' numbers.

Reads only: the run directories the runner writes and ``results/reported/*.csv``.
"""
