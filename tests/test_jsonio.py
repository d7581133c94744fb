import pytest
from hypothesis import given
from hypothesis import strategies as st

from carechart import jsonio


def test_decimal_precision_survives_a_round_trip() -> None:
    text = b'{"value":1.50,"small":0.000010,"int":3}'
    assert jsonio.dumps(jsonio.loads(text)) == text


def test_duplicate_keys_are_refused() -> None:
    with pytest.raises(jsonio.JsonError, match="duplicate JSON property 'a'"):
        jsonio.loads('{"a": 1, "a": 2}')


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_numbers_are_refused(constant: str) -> None:
    with pytest.raises(jsonio.JsonError, match="not allowed"):
        jsonio.loads(f'{{"a": {constant}}}')


def test_absurd_nesting_is_a_clean_error_not_a_crash() -> None:
    with pytest.raises(jsonio.JsonError, match="nesting deeper"):
        jsonio.loads("[" * 200_000 + "]" * 200_000)


def test_nesting_past_the_limit_is_refused() -> None:
    with pytest.raises(jsonio.JsonError, match="nesting deeper than 5"):
        jsonio.loads('{"a":' * 6 + "1" + "}" * 6, max_depth=5)


def test_invalid_utf8_is_named() -> None:
    with pytest.raises(jsonio.JsonError, match="UTF-8"):
        jsonio.loads(b'{"a": "\xff"}')


def test_byte_order_mark_is_accepted() -> None:
    assert jsonio.loads(b'\xef\xbb\xbf{"a": 1}') == {"a": 1}


@given(st.integers(-(10**12), 10**12), st.integers(1, 9))
def test_any_decimal_keeps_its_text(digits: int, places: int) -> None:
    magnitude = str(abs(digits)).rjust(places + 1, "0")
    text = ("-" if digits < 0 else "") + magnitude[:-places] + "." + magnitude[-places:]
    assert jsonio.dumps(jsonio.loads(f'{{"v":{text}}}')) == f'{{"v":{text}}}'.encode()
