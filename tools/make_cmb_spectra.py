"""Generate fgjax's CMB power spectra with CAMB (a development tool, not run at import).

Writes ``fgjax/data/cmb_spectra_planck2018.npz``: the lensed scalar spectra and the r = 1
(unlensed) tensor spectra, TT, EE, BB, TE in uK_CMB^2 (``C_ell``, not ``D_ell``), for
``ell = 0 .. 4000``, stored as float32 (about 100 kB). ``fgjax._spectra`` reads it.

Cosmology: Planck 2018 best fit, TT,TE,EE+lowE+lensing (Planck Collaboration 2020, A&A 641,
A6, arXiv:1807.06209, Table 2 column 5): H0 = 67.36, omega_b h^2 = 0.02237, omega_c h^2 =
0.1200, tau = 0.0544, ln(10^10 A_s) = 3.044, n_s = 0.9649; one massive neutrino of 0.06 eV.
Tensors: r = 1 at the pivot 0.05 Mpc^-1, n_t from the consistency relation (CAMB default
``nt = None`` -> -r/8), unlensed, computed to ell = 2000 and set to zero above (there r = 1
tensor BB is below 0.2 % of its ell ~ 80 peak, and CAMB's tensor TT is numerically unstable).

Usage (CAMB is the optional ``cmb-spectra`` extra)::

    python tools/make_cmb_spectra.py [output.npz]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

LMAX = 4000
LMAX_TENSOR = 2000  # CAMB's tensor TT is numerically unstable above ~2000; zero beyond
PARAMS = {
    "H0": 67.36,
    "ombh2": 0.02237,
    "omch2": 0.1200,
    "tau": 0.0544,
    "ln10^10As": 3.044,
    "ns": 0.9649,
    "mnu": 0.06,
    "r": 1.0,
    "pivot_scalar": 0.05,
    "pivot_tensor": 0.05,
}
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "fgjax" / "data" / "cmb_spectra_planck2018.npz"


def compute(lmax: int = LMAX) -> dict[str, np.ndarray]:
    """Run CAMB and return ``{'ell', 'lensed_scalar', 'tensor'}`` (C_ell in uK_CMB^2).

    Each spectrum array has shape ``(4, lmax + 1)``, rows TT, EE, BB, TE.
    """
    import camb  # optional: only this tool needs it

    p = camb.CAMBparams()
    p.set_cosmology(
        H0=PARAMS["H0"],
        ombh2=PARAMS["ombh2"],
        omch2=PARAMS["omch2"],
        mnu=PARAMS["mnu"],
        omk=0.0,
        tau=PARAMS["tau"],
    )
    p.InitPower.set_params(
        As=np.exp(PARAMS["ln10^10As"]) * 1e-10,
        ns=PARAMS["ns"],
        r=PARAMS["r"],
        pivot_scalar=PARAMS["pivot_scalar"],
        pivot_tensor=PARAMS["pivot_tensor"],
    )
    p.WantTensors = True
    # Lensed spectra are accurate to lmax only when computed somewhat beyond it.
    p.set_for_lmax(lmax + 500, lens_potential_accuracy=2)
    p.max_l_tensor = min(lmax, LMAX_TENSOR)
    p.max_eta_k_tensor = 2.5 * p.max_l_tensor
    res = camb.get_results(p)
    cls = res.get_cmb_power_spectra(p, CMB_unit="muK", raw_cl=True, lmax=lmax)
    # CAMB column order: TT, EE, BB, TE.
    lensed = np.asarray(cls["lensed_scalar"][: lmax + 1].T)
    tensor = np.asarray(cls["tensor"][: lmax + 1].T).copy()
    tensor[:, LMAX_TENSOR + 1 :] = 0.0
    return {
        "ell": np.arange(lmax + 1),
        "lensed_scalar": lensed,
        "tensor": tensor,
        "camb_version": camb.__version__,
    }


def main(argv: list[str]) -> None:
    """Compute and write the data file (first argument: output path)."""
    out = Path(argv[1]) if len(argv) > 1 else DEFAULT_OUT
    spectra = compute()
    meta = {
        "source": "CAMB " + spectra["camb_version"] + ", tools/make_cmb_spectra.py",
        "cosmology": "Planck 2018 TT,TE,EE+lowE+lensing best fit, arXiv:1807.06209",
        "params": PARAMS,
        "units": "C_ell in uK_CMB^2",
        "rows": ["TT", "EE", "BB", "TE"],
        "lensed_scalar": "lensed scalar spectra, r = 0",
        "tensor": "unlensed tensor spectra for r = 1, n_t = -r/8; zero above ell = 2000",
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        out,
        ell=spectra["ell"].astype(np.int32),
        lensed_scalar=spectra["lensed_scalar"].astype(np.float32),
        tensor=spectra["tensor"].astype(np.float32),
        meta_json=np.array(json.dumps(meta)),
    )


if __name__ == "__main__":
    main(sys.argv)
