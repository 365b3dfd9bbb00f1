"""Run the official ONNX node tests of every op edgetrain supports (see node_suite.py)."""
import pytest

from node_exclusions import EXCLUDED
from node_suite import run_case, selected_cases

CASES = selected_cases()


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_node(case):
    if case.name in EXCLUDED:
        pytest.skip(f"excluded: {EXCLUDED[case.name]}")
    run_case(case)


def test_exclusions_are_selected_cases():
    """An exclusion for a case that is not selected (renamed, or op dropped) is stale."""
    names = {c.name for c in CASES}
    stale = sorted(set(EXCLUDED) - names)
    assert not stale, f"exclusions name cases that are not selected: {stale}"


def test_exclusions_have_reasons():
    assert all(len(reason.strip()) > 10 for reason in EXCLUDED.values())
