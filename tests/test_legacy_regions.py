"""legacy comp_sep with a plain NumPy evaluator and (component, region ids) derivatives."""

import numpy as np

import legacy_compat as lc
from legacy_compat import algebra


def test_numpy_evaluator_with_region_ids_recovers_the_truth():
    nu = np.array([30.0, 60.0, 100.0, 150.0, 220.0, 340.0])
    mm = lc.MixingMatrix(lc.CMB(), lc.Dust(353.0, temp=20.0))
    ids = np.repeat([0, 1], 10)  # two regions, one beta_d each
    truth = np.array([1.45, 1.65])

    def A_ev(x):  # plain NumPy: (n_pix, n_freq, n_comp)
        return mm.eval(nu, np.asarray(x)[ids])

    def A_dB_ev(x):  # fgbuster's layout: one derivative per region
        col = mm.diff(nu, np.asarray(x)[ids])[0]
        return [np.where((ids == r)[:, None, None], col, 0.0) for r in range(2)]

    comp_of_dB = [(1, np.nonzero(ids == r)[0]) for r in range(2)]
    rng = np.random.default_rng(1)
    s = rng.normal(size=(ids.size, 2)) * [1.0, 30.0]
    d = np.einsum("pfc,pc->pf", A_ev(truth), s)
    res = algebra.comp_sep(A_ev, d, None, A_dB_ev, comp_of_dB, np.array([1.5, 1.5]),
                           method="BFGS", tol=1e-14)
    # noiseless data: the fit lands on the truth up to the finite-difference derivatives
    np.testing.assert_allclose(res.x, truth, rtol=1e-6)
    np.testing.assert_allclose(res.s, s, rtol=1e-5, atol=1e-8)
