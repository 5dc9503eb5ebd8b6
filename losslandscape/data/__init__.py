"""Data sets (built-in, custom factories), the batch sources that feed a grid point, and importing the
user's own code.
"""
