"""argparse types that turn bad values into argparse-style errors (exit code 2, usage line), never tracebacks."""

import argparse
import dataclasses
import re


def _int_at_least(minimum, description):
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {description}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected {description}, got {value}")
        return value
    return parse


positive_int = _int_at_least(1, "a positive integer")
nonnegative_int = _int_at_least(0, "an integer >= 0")


def nonnegative_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text}")
    return value


def fraction(text):
    value = nonnegative_float(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1), got {text}")
    return value


def duration(text):
    """'11.5h', '90m', '3600s' or '3600' (seconds) -> seconds (float > 0)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([hms]?)\s*", str(text))
    if not m or float(m.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"expected a duration such as 11.5h, 90m or 3600s, got {text!r}")
    return float(m.group(1)) * {"h": 3600, "m": 60, "s": 1, "": 1}[m.group(2)]


class ShowDefaults(argparse.HelpFormatter):
    """--help shows each flag's default (from the stage's settings dataclass), except None and False,
    which mean "not given" and say nothing useful."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default not in (None, False, argparse.SUPPRESS) and "%(default)" not in text:
            text += " (default: %(default)s)"
        return text


def settings_defaults(settings_class):
    """{field: default} of a stage's settings dataclass, for ArgumentParser.set_defaults: the defaults are
    written once, in the dataclass (fields without a default are required flags)."""
    return {f.name: f.default for f in dataclasses.fields(settings_class) if f.default is not dataclasses.MISSING}
