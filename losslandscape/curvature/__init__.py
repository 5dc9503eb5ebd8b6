"""Curvature at a model: Hessian-vector products, eigenvalues, traces, spectra, sharpness measures."""

from losslandscape.curvature.hessian import MeanLossHessian, extreme_eigenvalues, hessian_parameters, top_eigenpair
from losslandscape.curvature.sharpness_measures import PerturbedLoss, measure
from losslandscape.curvature.spectrum import Lanczos, hutch_plus_plus, krylov_trace, slq_density, top_eigenpairs

__all__ = [
    # hessian
    'MeanLossHessian', 'hessian_parameters', 'extreme_eigenvalues', 'top_eigenpair',
    # spectrum
    'Lanczos', 'top_eigenpairs', 'krylov_trace', 'hutch_plus_plus', 'slq_density',
    # sharpness_measures
    'PerturbedLoss', 'measure',
]
