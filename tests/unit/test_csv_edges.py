"""CSV rows one by one: a stray quote quarantines its own line and no other, a quoted field
over several lines is still one row, decimal commas on request, empty and header-only files
alike, and a missing drop folder refused by check-config (never created)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.config import parse_config
from agent.connectors.csvdrop import CsvConfig, parse_rows
from agent.errors import ConfigError

SECTION = """[device]
name = "gw"
[[csv]]
name = "erp"
folder = "."
timestamp_column = "t"
timestamp_format = "unix_ms"
{extra}
[[csv.signals]]
name = "w"
column = "w"
"""


def _csv(extra: str = "", path: str = "/tmp/a.toml") -> CsvConfig:
    (cfg,) = parse_config(SECTION.format(extra=extra), path).connectors["csv"]
    assert isinstance(cfg, CsvConfig)
    return cfg


def _values(text: str, cfg: CsvConfig | None = None) -> tuple[list[float | str], list[int]]:
    samples, bad = parse_rows(cfg or _csv(), text)
    return [s.value for s in samples], [b.line for b in bad]


def test_a_stray_quote_takes_only_its_own_line() -> None:
    text = 't,w,note\n1,1.5,ok\n2,2.5,"he said "hi\n3,3.5,ok\n4,"4.5,x\n5,5.5,ok\n6,6.5,ok\n'
    assert _values(text) == ([1.5, 3.5, 5.5, 6.5], [3, 5])
    _, bad = parse_rows(_csv(), text)
    assert bad[1].raw == '4,"4.5,x' and "unbalanced quote" in bad[1].reason


def test_a_quoted_field_over_two_lines_is_still_one_row() -> None:
    text = 't,w,note\n1,1.5,"first line\nsecond line"\n2,2.5,ok\n'
    assert _values(text) == ([1.5, 2.5], [])


def test_a_quote_open_at_the_end_of_the_file_is_one_bad_row() -> None:
    assert _values('t,w\n1,1.5\n2,"2.5\n') == ([1.5], [3])


@given(st.lists(st.sampled_from(['"', "x", "1", ",", "\n", "2.5", "\r\n"]), max_size=40))
def test_every_good_line_survives_any_garbage_before_it(garbage: list[str]) -> None:
    junk = "".join(garbage).replace("\r", "")
    text = f"t,w\n{junk}\n7,7.25\n"
    values, bad = _values(text)
    assert values[-1:] == [7.25]  # the last good row is never taken by a quote above it
    assert all(line >= 2 for line in bad)


def test_decimal_commas_on_request_and_thousands_points_refused() -> None:
    cfg = _csv('delimiter = ";"\ndecimal = ","')
    values, bad = _values("t;w\n1;12,5\n2;-0,25\n3;1.234,5\n4;7\n", cfg)
    assert values == [12.5, -0.25, 7.0] and bad == [4]
    assert _values("t,w\n1,12,5\n")[1] == [2]  # without the option a comma is no decimal


def test_empty_and_header_only_files_are_alike() -> None:
    for text in ("", "\n\n", "t,w\n", "t,w\n\n"):
        assert parse_rows(_csv(), text) == ([], []), repr(text)


def test_check_config_refuses_a_missing_folder_and_creates_nothing(tmp_path: Path) -> None:
    text = SECTION.format(extra="").replace('folder = "."', 'folder = "drop/erp"')
    with pytest.raises(ConfigError, match="no such folder") as err:
        parse_config(text, str(tmp_path / "agent.toml"))
    assert (err.value.key, err.value.line) == ("csv[0].folder", 5)
    assert not (tmp_path / "drop").exists()


def test_check_config_refuses_a_decimal_comma_that_is_also_the_delimiter() -> None:
    with pytest.raises(ConfigError, match="delimiter too") as err:
        _csv('decimal = ","')
    assert err.value.key == "csv[0].decimal"
