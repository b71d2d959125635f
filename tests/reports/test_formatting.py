"""The report's rounding (reports.formatting): known answers for p-values, signed values, effects
and shares, and what a missing value shows."""

from __future__ import annotations

from report_page import MISSING


def test_formatting_rules_known_answers():
    from reports import formatting as fmt

    assert fmt.p_value(0.0004).text == "< 0.001" and fmt.p_value(0.03125).text == "0.031"
    assert fmt.signed(0.0234567).text == "+0.023" and fmt.signed(-0.1).text == "-0.100"
    assert fmt.effect(-0.131).text == "-0.13" and fmt.share(0.0727).text == "7%"
    assert fmt.signed(float("nan")).text == MISSING and fmt.signed(float("nan")).sort_key == ""
    assert fmt.signed(1 / 3).sort_key == repr(1 / 3)
