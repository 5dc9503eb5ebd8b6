"""Sharpness numbers at one point: how much the mean objective can rise within a radius rho.

Over a set of parameters w (hessian.hessian_parameters: the weights with dim > 1 by default), with
L the mean objective over the training data (objective.py) and e a perturbation of those weights:

  worst_case(rho)  max over ||e||_2 <= rho of L(w + e) - L(w), by projected (normalised) gradient
                   ascent from several starts: SAM's step, +-rho times the top Hessian eigenvector,
                   random points of the sphere; the largest value ever evaluated is kept, so it is
                   never below any start's (Foret et al. 2021's rho-sharpness)
  sam_one_step     L(w + rho g / ||g||) - L(w), g the gradient: SAM's one-step approximation
  adaptive(rho)    the same maximum over ||e / (|w| + eta)||_2 <= rho (Kwon et al. 2021's adaptive
                   sharpness, invariant to rescaling a layer's weights)
  average(rho)     the mean of L(w + e) - L(w) over e drawn uniformly from the sphere of radius rho,
                   with its standard error (average-case sharpness)

Moving the weights is in place and always undone (PerturbedLoss.restore).
"""
import math

import numpy as np
import torch

from losslandscape.objectives import objective as objectives

DEFAULT_RHOS = (0.05,)
DEFAULT_ETA = 0.01
DEFAULT_ASCENT_STEPS = 20
DEFAULT_RESTARTS = 2
DEFAULT_SAMPLES = 32


class PerturbedLoss:
    """L(w + e) and its gradient for flat float64 perturbations ``e`` of ``params``. ``count``: the
    data's total count when known (objective.total_count, else counted here by a pass)."""

    def __init__(self, net, data, the_objective, params, count=None):
        self.net, self.data, self.objective, self.params = net, data, the_objective, list(params)
        self.centre = [p.detach().clone() for p in self.params]
        self.size = sum(p.numel() for p in self.params)
        self.count = count if count is not None else objectives.total_count(the_objective, net, data)
        self.evaluations = 0

    @property
    def weights(self):
        return np.concatenate([c.double().cpu().reshape(-1).numpy() for c in self.centre])

    @torch.no_grad()
    def _move(self, e):
        start = 0
        for p, c in zip(self.params, self.centre):
            piece = torch.as_tensor(e[start:start + p.numel()], dtype=torch.float64).view_as(p)
            p.copy_((c.double() + piece.to(c.device)).to(p.dtype))
            start += p.numel()

    def restore(self):
        with torch.no_grad():
            for p, c in zip(self.params, self.centre):
                p.copy_(c)

    def value(self, e):
        self._move(e)
        self.evaluations += 1
        self.net.eval()
        total = 0.0
        with torch.inference_mode():
            # The objective's batch sums: the same numbers as loss_sum's, without the graph.
            for batch in self.data.batches():
                total += float(self.objective.sums(self.net, batch)[objectives.LOSS])
        return total / self.count

    def value_and_gradient(self, e):
        self._move(e)
        self.evaluations += 1
        self.net.eval()
        total, grads = 0.0, [torch.zeros_like(p, dtype=torch.float64) for p in self.params]
        with torch.enable_grad():
            for batch in self.data.batches():
                loss_sum = self.objective.loss_sum(self.net, batch)
                for g, piece in zip(grads, torch.autograd.grad(loss_sum / self.count, self.params)):
                    g += piece.double()
                total += float(loss_sum.detach().double())
        return total / self.count, torch.cat([g.reshape(-1) for g in grads]).cpu().numpy()


def _unit(v):
    norm = np.linalg.norm(v)
    return v / norm if norm > 0 else v


def ascend(loss, start, rho, scale, steps):
    """Projected normalised gradient ascent on u, e = scale * u, ||u|| <= rho, from ``start``;
    returns the largest L(w + e) seen (the start included). Step size rho / 2, halved whenever a
    step does not improve, so the walk settles on the sphere's best point it finds."""
    u = start if np.linalg.norm(start) <= rho else rho * _unit(start)
    value, gradient = loss.value_and_gradient(scale * u)
    best, step = value, rho / 2
    for _ in range(steps):
        candidate = u + step * _unit(scale * gradient)
        if np.linalg.norm(candidate) > rho:
            candidate = rho * _unit(candidate)
        new_value, new_gradient = loss.value_and_gradient(scale * candidate)
        best = max(best, new_value)
        if new_value >= value:
            u, value, gradient = candidate, new_value, new_gradient
        else:
            step /= 2
    return best


def measure(loss, rhos, eta=DEFAULT_ETA, steps=DEFAULT_ASCENT_STEPS, restarts=DEFAULT_RESTARTS,
            samples=DEFAULT_SAMPLES, top_eigenvector=None, rng=None):
    """{name: [value per rho]}: worst_case, sam_one_step, adaptive, average, average_stderr, and
    the centre's loss. ``top_eigenvector``: a unit vector over the parameters (its +- rho points
    start the worst-case ascent)."""
    rng = rng or np.random.default_rng(0)
    centre, gradient = loss.value_and_gradient(np.zeros(loss.size))
    adaptive_scale = np.abs(loss.weights) + eta
    out = {'loss': centre, 'worst_case': [], 'sam_one_step': [], 'adaptive': [], 'average': [], 'average_stderr': []}
    try:
        for rho in rhos:
            sam = rho * _unit(gradient)
            sam_value = loss.value(sam)
            starts = [sam] + ([rho * top_eigenvector, -rho * top_eigenvector] if top_eigenvector is not None else []) \
                + [rho * _unit(rng.standard_normal(loss.size)) for _ in range(restarts)]
            worst = max(sam_value, *(ascend(loss, s, rho, 1.0, steps) for s in starts))
            adaptive_start = rho * _unit(adaptive_scale * gradient)
            adaptive = max([ascend(loss, adaptive_start, rho, adaptive_scale, steps)]
                           + [ascend(loss, rho * _unit(rng.standard_normal(loss.size)), rho, adaptive_scale, steps)
                              for _ in range(restarts)])   # a list: max() of one number alone fails (--restarts 0)
            rises = np.array([loss.value(rho * _unit(rng.standard_normal(loss.size))) - centre for _ in range(samples)])
            out['worst_case'].append(worst - centre)
            out['sam_one_step'].append(sam_value - centre)
            out['adaptive'].append(adaptive - centre)
            out['average'].append(float(rises.mean()))
            out['average_stderr'].append(float(rises.std(ddof=1) / math.sqrt(samples)) if samples > 1 else math.inf)
    finally:
        loss.restore()
    return out
