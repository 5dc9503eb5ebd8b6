"""Directions in weight space: which entries they cover, making and normalising them, moving a model
along them, direction files, trajectories projected on them.
"""
