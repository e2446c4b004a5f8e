"""Unified social credit codes (GB 32100-2015): check character, validation, generation."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedrisk.data.credit_code import (
    CREDIT_CODE_ALPHABET,
    CREDIT_CODE_WEIGHTS,
    credit_code_check_char,
    credit_code_validity_mask,
    is_valid_credit_code,
    make_credit_codes,
    organisation_code_check_char,
    validate_credit_code,
)

# Codes of well-known companies, as printed on their business licences and public filings.
# Each passes both the GB 32100 check (position 18) and the GB 11714 check of its embedded
# organisation code (position 17): a chance match of both is about 1 in 341 per code.
PUBLIC_CODES = {
    "914403001922038216": "Huawei Technologies Co., Ltd. (Shenzhen)",
    "91330100716105852F": "Alibaba (China) Co., Ltd. (Hangzhou)",
    "9144030071526726XG": "Shenzhen Tencent Computer Systems Co., Ltd.",
    "91110108551385082Q": "Beijing Xiaomi Technology Co., Ltd.",
}

alphabet_chars = st.sampled_from(CREDIT_CODE_ALPHABET)
prefixes = st.text(alphabet=CREDIT_CODE_ALPHABET, min_size=17, max_size=17)


def test_weights_are_powers_of_three_mod_31() -> None:
    assert list(CREDIT_CODE_WEIGHTS) == [pow(3, i, 31) for i in range(17)]
    assert len(CREDIT_CODE_ALPHABET) == 31 and not set("IOZSV") & set(CREDIT_CODE_ALPHABET)


@pytest.mark.parametrize("code", sorted(PUBLIC_CODES))
def test_public_codes_validate(code: str) -> None:
    assert is_valid_credit_code(code)
    validate_credit_code(code)
    assert organisation_code_check_char(code[8:16]) == code[16]


def test_hand_computed_check_char() -> None:
    # 9·1 + 1·3 + 4·9 + 4·27 + 0·19 + 3·26 + 0·16 + 0·17 + 1·20 + 9·29 + 2·25 + 2·13 + 0·8
    # + 3·24 + 8·10 + 2·30 + 1·28 = 831; 831 mod 31 = 25; 31 - 25 = 6 -> "6".
    assert credit_code_check_char("91440300192203821") == "6"
    # A sum divisible by 31 maps to "0", not to alphabet[31].
    assert credit_code_check_char("0" * 17) == "0"
    # Values >= 10 are letters: "Y" = 30, weight 1 -> 30; 31 - 30 = 1.
    assert credit_code_check_char("Y" + "0" * 16) == "1"


def test_organisation_code_check_char_x_and_zero() -> None:
    # GB 11714 writes a check of 10 as "X" and 11 as "0".
    assert organisation_code_check_char("71526726") == "X"
    assert organisation_code_check_char("00000000") == "0"
    with pytest.raises(ValueError, match="8 characters"):
        organisation_code_check_char("123")


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        ("91440300192203821", "wrong length: 17 characters, expected 18"),
        ("9144030019220382166", "wrong length: 19"),
        ("9144I30019220382I6", "bad character 'I' at position 5"),
        ("91440300192203821o", "bad character 'o' at position 18"),
        ("914403001922038217", "check character mismatch: expected '6', got '7'"),
    ],
)
def test_validate_explains_why(code: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        validate_credit_code(code)
    assert not is_valid_credit_code(code)


def test_check_char_rejects_bad_prefix() -> None:
    with pytest.raises(ValueError, match="expected 17"):
        credit_code_check_char("123")
    with pytest.raises(ValueError, match="position 3"):
        credit_code_check_char("91O403001922038216"[:17])


@settings(max_examples=300, deadline=None)
@given(prefix=prefixes)
def test_prefix_plus_check_char_validates(prefix: str) -> None:
    assert is_valid_credit_code(prefix + credit_code_check_char(prefix))


@settings(max_examples=300, deadline=None)
@given(prefix=prefixes, position=st.integers(0, 17), replacement=alphabet_chars)
def test_changing_any_single_char_breaks_the_code(prefix: str, position: int, replacement: str) -> None:
    code = prefix + credit_code_check_char(prefix)
    if code[position] == replacement:
        replacement = CREDIT_CODE_ALPHABET[(CREDIT_CODE_ALPHABET.index(replacement) + 1) % 31]
    changed = code[:position] + replacement + code[position + 1 :]
    # Every weight is a unit mod the prime 31, so any single substitution moves the sum.
    assert not is_valid_credit_code(changed)


@settings(max_examples=100, deadline=None)
@given(
    codes=st.lists(
        st.one_of(
            prefixes.map(lambda p: p + credit_code_check_char(p)),
            st.text(alphabet=CREDIT_CODE_ALPHABET + "IOSVZa中 ", min_size=16, max_size=19),
        ),
        min_size=1,
        max_size=30,
    )
)
def test_vectorised_mask_agrees_with_scalar_check(codes: list[str]) -> None:
    expected = [is_valid_credit_code(c) for c in codes]
    assert credit_code_validity_mask(np.array(codes, dtype=object)).tolist() == expected
    assert credit_code_validity_mask(np.array(codes, dtype=str)).tolist() == expected


def test_mask_handles_empty_and_non_ascii() -> None:
    assert credit_code_validity_mask(np.array([], dtype=str)).shape == (0,)
    # A full-width digit whose code point's low byte is an alphabet character must not pass.
    tricky = "\uff19" + "14403001922038216"
    assert credit_code_validity_mask(np.array([tricky, "914403001922038216"])).tolist() == [False, True]


def test_make_credit_codes_unique_valid_and_realistic() -> None:
    codes = make_credit_codes(50_000, np.random.default_rng(1))
    assert codes.shape == (50_000,) and codes.dtype == np.dtype("<U18")
    assert len(set(codes.tolist())) == codes.size
    assert credit_code_validity_mask(codes).all()
    sample = codes[:2_000].tolist()
    assert all(is_valid_credit_code(c) for c in sample)
    assert all(c[:2] in {"91", "92", "93"} and c[2:8].isdigit() for c in sample)
    assert all(organisation_code_check_char(c[8:16]) == c[16] for c in sample)
    assert any(c[8:10] == "MA" for c in sample) and any(c[8:16].isdigit() for c in sample)


def test_make_credit_codes_is_deterministic() -> None:
    a = make_credit_codes(1_000, np.random.default_rng(7))
    b = make_credit_codes(1_000, np.random.default_rng(7))
    c = make_credit_codes(1_000, np.random.default_rng(8))
    assert (a == b).all() and not (a == c).all()
    assert make_credit_codes(0, np.random.default_rng(0)).shape == (0,)
    with pytest.raises(ValueError):
        make_credit_codes(-1, np.random.default_rng(0))
