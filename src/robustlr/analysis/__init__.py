"""Analysis of perturbations (singular spectra) and of networks (conditioning)."""

from .conditioning import (
    layer_condition_numbers,
    layer_singular_values,
    network_condition_bound,
    orthogonality_errors,
    spectral_norms,
)
from .spectrum import (
    effective_rank,
    energy_curve,
    energy_fraction,
    nuclear_norm,
    relative_spectrum_shift,
    singular_values,
    stable_rank,
)

__all__ = [
    "layer_condition_numbers",
    "layer_singular_values",
    "network_condition_bound",
    "orthogonality_errors",
    "spectral_norms",
    "singular_values",
    "nuclear_norm",
    "energy_fraction",
    "energy_curve",
    "effective_rank",
    "stable_rank",
    "relative_spectrum_shift",
]
