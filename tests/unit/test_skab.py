"""The SKAB reader: real SKAB files read in order, and every bad row named by file and line."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hil_tests.errors import SkabFormatError
from hil_tests.plant import SIGNALS
from hil_tests.skab import SkabLimits, read_skab

HEADER = "datetime;" + ";".join(SIGNALS) + ";anomaly;changepoint"
GOOD = "2020-03-09 10:14:33;0.02;0.04;1.33;0.05;79.3;26.0;233.0;32.0;0.0;0.0"


def write(tmp_path: Path, *lines: str) -> Path:
    path = tmp_path / "x.csv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_reads_a_real_skab_file_in_file_order(skab_dir: Path) -> None:
    path = skab_dir / "valve1" / "0.csv"
    rows = list(read_skab(path))
    text = path.read_text(encoding="utf-8").splitlines()
    assert len(rows) == len(text) - 1
    first = text[1].split(";")
    assert rows[0].line == 2
    assert rows[0].values["Accelerometer1RMS"] == float(first[1])
    assert rows[0].values["Volume Flow RateRMS"] == float(first[8])
    assert [r.ts for r in rows] == sorted(r.ts for r in rows)
    assert {r.anomaly for r in rows} == {0, 1}
    assert {r.changepoint for r in rows} <= {0, 1}


def test_a_file_without_labels_reads_with_labels_absent(skab_dir: Path) -> None:
    row = next(read_skab(skab_dir / "anomaly-free" / "anomaly-free.csv"))
    assert row.anomaly is None and row.changepoint is None
    assert set(row.values) == set(SIGNALS)


@pytest.mark.parametrize(
    ("bad_row", "message"),
    [
        (GOOD.replace("1.33", "abc"), "Current is 'abc', not a number"),
        (GOOD.replace("1.33", "nan"), "Current is 'nan', not a finite number"),
        (GOOD.replace("2020-03-09 10:14:33", "yesterday"), "datetime 'yesterday'"),
        (GOOD + ";7", "12 fields, expected 11"),
        (GOOD[: GOOD.rindex(";")], "10 fields, expected 11"),
        (GOOD[: GOOD.rindex(";")] + ";2", "changepoint is 2.0, expected 0 or 1"),
        ("", "0 fields, expected 11"),
    ],
)
def test_a_bad_row_is_named_by_file_and_line(tmp_path: Path, bad_row: str, message: str) -> None:
    path = write(tmp_path, HEADER, GOOD, GOOD, bad_row, GOOD)
    rows = read_skab(path)
    assert next(rows).line == 2 and next(rows).line == 3  # good rows come before the error
    with pytest.raises(SkabFormatError, match=f"{re.escape(str(path))}:4: .*{re.escape(message)}"):
        next(rows)


def test_a_header_without_the_signals_is_refused_on_line_one(tmp_path: Path) -> None:
    path = write(tmp_path, "datetime;Pressure", "2020-01-01 00:00:00;1.0")
    with pytest.raises(SkabFormatError, match=r":1: missing columns \['Accelerometer1RMS'") as e:
        list(read_skab(path))
    assert "datetime;Accelerometer1RMS" in e.value.hint


def test_an_empty_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "empty.csv"
    path.write_text("", encoding="utf-8")
    with pytest.raises(SkabFormatError, match="empty"):
        list(read_skab(path))


def test_a_missing_file_says_which_path(tmp_path: Path) -> None:
    with pytest.raises(SkabFormatError, match=r"nope\.csv"):
        list(read_skab(tmp_path / "nope.csv"))


def test_rows_past_the_limit_are_refused_naming_the_limit(tmp_path: Path) -> None:
    path = write(tmp_path, HEADER, GOOD, GOOD, GOOD)
    with pytest.raises(SkabFormatError, match=r":4: more than 2 rows \(SkabLimits.max_rows\)"):
        list(read_skab(path, SkabLimits(max_rows=2)))


def test_an_overlong_line_is_refused_before_it_is_parsed(tmp_path: Path) -> None:
    path = write(tmp_path, HEADER, GOOD + ";" + "9" * 5000)
    with pytest.raises(SkabFormatError, match=":2: line longer than 4096"):
        list(read_skab(path))


numbers = st.floats(allow_nan=False, allow_infinity=False, width=64)


@settings(max_examples=50, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.lists(numbers, min_size=8, max_size=8), min_size=1, max_size=20))
def test_any_well_formed_file_reads_back_the_exact_values(
    tmp_path: Path, rows: list[list[float]]
) -> None:
    lines = [HEADER.removesuffix(";anomaly;changepoint")]
    lines += [
        f"2021-01-01 00:00:{i % 60:02d};" + ";".join(map(repr, r)) for i, r in enumerate(rows)
    ]
    got = list(read_skab(write(tmp_path, *lines)))
    assert [list(r.values.values()) for r in got] == rows


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.text(alphabet=st.sampled_from(list('0123456789.;-e:naif \n"\x00')), max_size=300))
def test_arbitrary_text_either_parses_or_raises_skab_format_error(
    tmp_path: Path, body: str
) -> None:
    path = write(tmp_path, HEADER, body)
    try:
        rows = list(read_skab(path))
    except SkabFormatError as err:
        message = str(err)
        rows = []
    else:
        message = str(path)
    assert str(path) in message
    assert all(set(row.values) == set(SIGNALS) for row in rows)
