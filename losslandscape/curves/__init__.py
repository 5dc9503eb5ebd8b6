"""Curves between two trained models (Bezier, polychain): parametrisation, training, their plane;
BatchNorm statistics recomputed for the weights at a point.
"""
