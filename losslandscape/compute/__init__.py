"""How a point is computed: the compute configuration (layout, batch size, BatchNorm folding), its
timing and cache, the folded and multi-point evaluators, process-wide runtime settings.
"""
