"""Curvature at a model: Hessian-vector products, eigenvalues, traces, spectra, sharpness measures."""
