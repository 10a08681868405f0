"""``resource.Quantity`` canonical form (``1024Mi`` -> ``1Gi``, ``2000`` -> ``2k``).

A real server decodes quantities and re-encodes them in canonical form, so what a client
reads back can differ from what it wrote; this reproduces apimachinery's rules: values are
rounded up to nano precision, BinarySI stays binary only for whole numbers of at least 1024,
DecimalSI/DecimalExponent use the largest power-of-1000 exponent that keeps an integer mantissa.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction

QUANTITY_RE = "^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$"
_NUMBER = re.compile(r"^([+-]?)([0-9]*)(?:\.([0-9]*))?")
_BINARY = {"Ki": 10, "Mi": 20, "Gi": 30, "Ti": 40, "Pi": 50, "Ei": 60}
_DECIMAL = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
_DEC_SUFFIX = {v: k for k, v in _DECIMAL.items()}
_BIN_SUFFIX = {v: k for k, v in _BINARY.items()}
_BIN_SUFFIX[0] = ""


class QuantityError(ValueError):
    """The string is not a quantity (the message is apimachinery's)."""


def _err() -> QuantityError:
    return QuantityError(f"quantities must match the regular expression '{QUANTITY_RE}'")


def parse(text: str) -> tuple[Fraction, str]:
    """(value, format) where format is ``BinarySI``, ``DecimalSI`` or ``DecimalExponent``."""
    if not text:
        raise _err()
    m = _NUMBER.match(text)
    if not m or (not m.group(2) and not m.group(3)):
        raise _err()
    sign, whole, frac = m.group(1), m.group(2), m.group(3) or ""
    suffix = text[m.end() :]
    number = Fraction(int(whole or "0") * 10 ** len(frac) + int(frac or "0"), 10 ** len(frac))
    if sign == "-":
        number = -number
    if suffix in _BINARY:
        value, fmt = number * 2 ** _BINARY[suffix], "BinarySI"
    elif suffix in _DECIMAL:
        value, fmt = number * Fraction(10) ** _DECIMAL[suffix], "DecimalSI"
    elif re.fullmatch(r"[eE][-+]?[0-9]+", suffix):
        value, fmt = number * Fraction(10) ** int(suffix[1:]), "DecimalExponent"
    else:
        raise _err()
    # Quantities hold at most nano precision; apimachinery rounds up (away from zero).
    scaled = value * 10**9
    if scaled.denominator != 1:
        rounded = math.ceil(abs(scaled)) * (1 if scaled > 0 else -1)
        value = Fraction(rounded, 10**9)
    return value, fmt


def _decimal(value: Fraction, fmt: str) -> str:
    # The value is a whole number of nanos: strip factors of 1000 to find the largest
    # exponent (a multiple of 3) that keeps the mantissa an integer.
    mantissa, exponent = int(value * 10**9), -9
    while mantissa % 1000 == 0:
        mantissa //= 1000
        exponent += 3
    if fmt == "DecimalSI" and exponent in _DEC_SUFFIX:
        return f"{mantissa}{_DEC_SUFFIX[exponent]}"
    return f"{mantissa}" + (f"e{exponent}" if exponent else "")


def canonical(text: str) -> str:
    """The string a real server writes back for the quantity ``text``."""
    value, fmt = parse(text)
    if value == 0:
        return "0"
    if fmt == "BinarySI":
        if -1024 < value < 1024 or value.denominator != 1:
            fmt = "DecimalSI"
        else:
            mantissa, exponent = int(value), 0
            while mantissa % 1024 == 0 and exponent < 60:
                mantissa //= 1024
                exponent += 10
            return f"{mantissa}{_BIN_SUFFIX[exponent]}"
    return _decimal(value, fmt)
