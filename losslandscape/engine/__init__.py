"""The grid run: the grid, building a run in named steps, what evaluates a point, the loop over the
points.
"""
