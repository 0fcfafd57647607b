"""Hypothesis strategies for the service's JSON inputs (hypothesis is a test extra; ``hypothesis`` is None
without it)."""
try:  # imported at collection: imported deep inside a running test, CPython 3.11 may fail to compile it
    import hypothesis
    from hypothesis import strategies as st
except ImportError:  # pragma: no cover
    hypothesis = st = None


def json_values():
    """Any JSON value, with the field names and hostile strings the service's routes care about."""
    text = st.text(alphabet=st.characters(codec="utf-8"), max_size=40) | st.sampled_from(
        ["six", "six; os_name == 'a\x0bb'", "numpy>=1.26", "a\u2028b", "x\x00", "pkg @ file:///etc", "²", "name",
         "requirements", "display_name", "python", "add", "remove", "upgrade", "build", "action", "mode"])
    return st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | text,
                        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
                        max_leaves=12)
