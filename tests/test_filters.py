import pytest

from filterviz.errors import ConfigError
from filterviz.core.filters import parse_filters


@pytest.mark.parametrize("spec, expected", [
    (3, [3]), ("3", [3]), ([0, 5, 9], [0, 5, 9]), ("0:4", [0, 1, 2, 3]), (":3", [0, 1, 2]),
    ("14:", [14, 15]), ("all", list(range(16))),
])
def test_forms_resolve_to_indices(spec, expected):
    assert parse_filters(spec, n_filters=16, seed=0) == expected


def test_random_is_seeded_and_in_range():
    first = parse_filters("random:5", n_filters=64, seed=7)
    assert first == parse_filters("random:5", n_filters=64, seed=7)
    assert len(set(first)) == 5 and all(0 <= i < 64 for i in first)
    assert parse_filters("random", n_filters=64, seed=7)[0] in range(64)
    draws = {tuple(parse_filters("random:5", n_filters=64, seed=s)) for s in range(5)}
    assert len(draws) > 1, "different seeds should draw different filters"


@pytest.mark.parametrize("spec, says", [
    (8, "out of range: block has 8 filters, 0..7"), ([1, 99], "filter 99 is out of range"),
    ("abc", "use an index (3), a list"), ([1, "x"], "is not valid"), ([], "is not valid"), (True, "is not valid"),
    ("5:2", "empty range"), ("random:9", "N must be in 1..8"), ([2, 2], "twice"), (-1, "out of range"),
])
def test_bad_specs_say_what_is_right(spec, says):
    with pytest.raises(ConfigError, match=None) as e:
        parse_filters(spec, n_filters=8, seed=0, layer="block")
    assert says in str(e.value)
    assert "\n" not in str(e.value)
