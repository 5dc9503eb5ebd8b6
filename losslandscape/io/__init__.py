"""The HDF5 files handed from compute to plot (every key and layout), atomic writes and locks, the
surface file during a run.
"""
