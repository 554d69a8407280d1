"""Every case of the golden set (fgbuster 2.0.0), through legacy_compat, at the manifest's
tolerances: one test per case of tests/golden/manifest.json, run on every CI submission.

The checks themselves live beside the other tests of each area (``check_*_case``); this
module only reads the manifest and dispatches, so a case added to the manifest without a
check fails here.
"""

import pytest

from . import test_cosmology as cosmology
from . import test_golden_components as components
from . import test_ilc as ilc
from . import test_legacy_algebra as algebra
from . import test_recipes as recipes
from ._golden import cases


def _statistical_information(name):
    cosmology.test_statistical_information_matches_legacy("legacy")
    cosmology.test_post_comp_sep_power_matches_legacy("legacy")


def _runner(entry):
    name, group = entry["name"], entry["group"]
    if group == "component":
        return components.check_component_case
    if group == "mixingmatrix":
        return components.check_mixing_matrix_case
    if group == "algebra":
        return algebra.check_algebra_case
    if group == "comp_sep":
        if name.startswith("multi_comp_sep"):
            return algebra.check_multi_comp_sep_case
        if entry["fgbuster_call"].endswith("comp_sep") and "fixed" in name:
            return algebra.check_comp_sep_fixed_A_case
        return algebra.check_comp_sep_fit_case
    if group == "recipe":
        if name.startswith("harmonic_ilc"):
            return ilc.check_harmonic_ilc_case
        if name.startswith("ilc"):
            return ilc.check_ilc_case
        return recipes.check_recipe_case
    if group == "cosmology":
        if name.startswith("xForecast"):
            return cosmology.check_xforecast_case
        return _statistical_information
    raise LookupError(f"no check for golden case {name!r} (group {group!r})")


@pytest.mark.filterwarnings("ignore:PowerLaw")
@pytest.mark.parametrize("entry", cases(), ids=lambda e: e["name"])
def test_golden_case(entry):
    _runner(entry)(entry["name"])


def test_every_case_is_covered():
    assert len(cases()) == 42
    for entry in cases():
        assert callable(_runner(entry))
