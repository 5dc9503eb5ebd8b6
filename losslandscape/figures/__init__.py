"""1D and 2D figures of surfaces and curves, and what they share (reading surfaces, derived values,
labels, saving).
"""
