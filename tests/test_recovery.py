"""End to end on the offline sky: observation -> basic_comp_sep -> the sky's own parameters."""

import numpy as np
import pytest

import fgjax


def _components():
    return [fgjax.CMB(), fgjax.Dust(nu0=353.0), fgjax.Synchrotron(nu0=23.0)]


def _qu_observation(nside, noise, seed=None):
    instrument = fgjax.get_instrument("LiteBIRD")
    sky = fgjax.get_sky(nside, "c1d0s0", backend="offline")
    data = fgjax.get_observation(instrument, sky, noise=noise, nside=nside, seed=seed)
    return instrument, np.asarray(data)[:, 1:]  # Q and U


def test_noiseless_c1d0s0_gives_back_the_sky_parameters():
    instrument, data = _qu_observation(8, noise=False)
    assert instrument.n_freq == 15
    res = fgjax.basic_comp_sep(_components(), instrument, data, x0=np.array([1.6, 22.0, -2.9]))
    assert res.params == ["Dust.beta_d", "Dust.temp", "Synchrotron.beta_pl"]
    np.testing.assert_allclose(res.x, [1.54, 20.0, -3.0], rtol=1e-5)


@pytest.mark.slow
def test_noisy_nside16_recovery_within_three_sigma():
    instrument, data = _qu_observation(16, noise=True, seed=2024)
    res = fgjax.basic_comp_sep(_components(), instrument, data)
    pulls = (np.asarray(res.x) - [1.54, 20.0, -3.0]) / np.sqrt(np.diag(res.Sigma))
    assert np.all(np.abs(pulls) < 3), pulls
