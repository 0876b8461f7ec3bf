"""EXACT: training for accuracy (SPEC 6), and the losses it is compared with.

SPEC 6.2. Give the scores Gaussian noise, ``s ~ N(mu(x), sigma^2 I)``. The probability that the
true class ``y`` wins is an orthant probability: with deltas ``d_i = mu_y - mu_i`` (i != y),

    p(y|x) = P(z > 0),   z ~ N(d / sigma, I + 11^T)      (dimension C - 1)

and the EXACT loss is ``1 - p`` per sample. :mod:`kexue.exact.orthant` estimates p by Genz's
sequential conditioning with an analytic gradient; :mod:`kexue.exact.losses` holds
:class:`EXACTLoss`, :class:`SmoothAccuracyLoss` and :class:`MulticlassHingeLoss` (SPEC 6.3) with
``torch.nn`` loss conventions; :mod:`kexue.exact.toy` the three-point example of SPEC 6.1;
:mod:`kexue.exact.compare` the Welch test used to compare losses over seeds.
"""

import kexue._requires_torch  # noqa: F401  (first: without torch, a one-line error naming the extra)

from kexue.exact.compare import RunComparison, compare_runs, mean_sd
from kexue.exact.losses import EXACTLoss, MulticlassHingeLoss, SmoothAccuracyLoss, logit_deltas, sigma_schedule
from kexue.exact.orthant import (conditional_orthant_grad, genz_orthant, genz_orthant_grad, orthant_probability,
                                 orthant_probability_quadrature)
from kexue.exact.toy import TOY_X, TOY_Y, ToyThreshold, toy_loss, toy_optimum

__all__ = [
    "orthant_probability", "orthant_probability_quadrature", "genz_orthant", "genz_orthant_grad",
    "conditional_orthant_grad", "logit_deltas", "EXACTLoss", "SmoothAccuracyLoss", "MulticlassHingeLoss",
    "sigma_schedule", "toy_loss", "toy_optimum", "TOY_X", "TOY_Y", "ToyThreshold", "compare_runs", "RunComparison", "mean_sd",
]
