"""fgjax: JAX-native, differentiable parametric CMB foreground component separation.

A port of fgbuster (Poletti, Errard et al.) to JAX: SEDs parsed by SymPy and lambdified
into JAX, a mixing-matrix builder, the spectral likelihood on Lineax, and fits driven by
SciPy or optax. fgbuster's NumPy API lives in the separate package ``legacy_compat``.

Precision: float64 is the reference (enable it with ``jax.config.update("jax_enable_x64",
True)`` or the ``jax.enable_x64`` context); fgjax never flips it for you. float32 works and
is what makes GPUs fast, with about 1e-6 relative accuracy on the SEDs.
"""

from ._bandpass import Frequencies, as_frequencies
from ._constants import (
    H_OVER_K,
    TCMB,
    UNSEEN,
    K_RJ_to_K_CMB,
    K_RJ_to_K_CMB_expression,
    parse_units,
)
from ._cosmology import (
    RLikelihood,
    XForecastResult,
    fit_r,
    get_post_comp_sep_power,
    get_statistical_information,
    harmonic_xForecast,
    r_likelihood,
    sigma_r_68cl,
    xForecast,
)
from ._harmonic import HarmonicSeparationResult, harmonic_comp_sep
from ._ilc import HarmonicILCResult, ILCResult, harmonic_ilc, harmonic_ilc_alm, ilc
from ._instruments import (
    Instrument,
    available_instruments,
    get_instrument,
    standardize_instrument,
)
from ._likelihood import (
    D,
    DiagonalInvN,
    P,
    P_dBdB,
    W,
    W_dB,
    W_dBdB,
    Wd,
    data_covariance,
    fisher_from_amplitude_covariance,
    fisher_logL_dB_dB,
    invAtNA,
    logL,
    logL_dB,
    logL_from_covariance,
    logL_hessian_from_covariance,
    logL_noise_mismatch,
    whiten,
)
from ._mixing import MixingMatrix
from ._observation import get_noise_realization, get_observation, pixel_size_arcmin
from ._optimize import batched_newton, comp_sep, minimize, multi_comp_sep
from ._recipes import (
    SeparationResult,
    adaptive_comp_sep,
    basic_comp_sep,
    multi_res_comp_sep,
    weighted_comp_sep,
)
from ._results import RESULTS, CompSepResult, MinimizeResult
from ._sed import (
    CMB,
    AbstractComponent,
    AnalyticComponent,
    Dust,
    FreeFree,
    ModifiedBlackBody,
    PowerLaw,
    Synchrotron,
    ThermalSZ,
    make_broadcastable,
    parse_sed_expression,
)
from ._sky import OfflineSky, get_sky, sky_emission
from ._spectra import CMBSpectra, cmb_spectra

__version__ = "0.1.0"

__all__ = [
    "HarmonicILCResult",
    "ILCResult",
    "harmonic_ilc",
    "harmonic_ilc_alm",
    "ilc",
    "SeparationResult",
    "HarmonicSeparationResult",
    "adaptive_comp_sep",
    "harmonic_comp_sep",
    "basic_comp_sep",
    "multi_res_comp_sep",
    "weighted_comp_sep",
    "RLikelihood",
    "XForecastResult",
    "fit_r",
    "get_post_comp_sep_power",
    "get_statistical_information",
    "harmonic_xForecast",
    "r_likelihood",
    "sigma_r_68cl",
    "xForecast",
    "D",
    "DiagonalInvN",
    "P",
    "P_dBdB",
    "W",
    "W_dB",
    "W_dBdB",
    "Wd",
    "data_covariance",
    "fisher_from_amplitude_covariance",
    "fisher_logL_dB_dB",
    "invAtNA",
    "logL",
    "logL_dB",
    "logL_from_covariance",
    "logL_hessian_from_covariance",
    "logL_noise_mismatch",
    "whiten",
    "batched_newton",
    "comp_sep",
    "minimize",
    "multi_comp_sep",
    "RESULTS",
    "CompSepResult",
    "MinimizeResult",
    "AbstractComponent",
    "AnalyticComponent",
    "CMB",
    "CMBSpectra",
    "Instrument",
    "OfflineSky",
    "available_instruments",
    "cmb_spectra",
    "get_instrument",
    "get_noise_realization",
    "get_observation",
    "get_sky",
    "pixel_size_arcmin",
    "sky_emission",
    "standardize_instrument",
    "Dust",
    "Frequencies",
    "FreeFree",
    "H_OVER_K",
    "K_RJ_to_K_CMB",
    "K_RJ_to_K_CMB_expression",
    "MixingMatrix",
    "ModifiedBlackBody",
    "PowerLaw",
    "Synchrotron",
    "TCMB",
    "ThermalSZ",
    "UNSEEN",
    "as_frequencies",
    "make_broadcastable",
    "parse_sed_expression",
    "parse_units",
]
