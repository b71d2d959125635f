"""The report's rounding (reports.formatting): known answers for p-values, signed values, effects,
shares, expected shares, autocorrelations, effective layers and statistics, and what a missing value
shows."""

from __future__ import annotations

from report_page import MISSING


def test_formatting_rules_known_answers():
    from reports import formatting as fmt

    assert fmt.p_value(0.0004).text == "< 0.001" and fmt.p_value(0.03125).text == "0.031"
    assert fmt.signed(0.0234567).text == "+0.023" and fmt.signed(-0.1).text == "-0.100"
    assert fmt.effect(-0.131).text == "-0.13" and fmt.share(0.0727).text == "7%"
    assert fmt.signed(float("nan")).text == MISSING and fmt.signed(float("nan")).sort_key == ""
    assert fmt.signed(1 / 3).sort_key == repr(1 / 3)
    assert fmt.expected_share(0.025).text == "2.5%" and fmt.autocorrelation(0.592).text == "+0.59"
    assert fmt.layers(1.539).text == "1.5" and fmt.statistic(0.2484).text == "0.25"
    assert fmt.integer(12.0).text == "12" and fmt.layers(float("nan")).text == MISSING
