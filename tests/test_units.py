"""Sizes and ages as people type and read them (farm/units.py): one parser, one formatter."""

import pytest

from farm.errors import FarmError
from farm.units import human, parse_age, parse_size


@pytest.mark.parametrize("text,size", [("200G", 200 << 30), ("200GB", 200 << 30), ("200GiB", 200 << 30),
                                       ("512m", 512 << 20), ("1.5T", int(1.5 * (1 << 40))), ("0", 0),
                                       (" 64 K ", 64 << 10), (4096, 4096)])
def test_sizes_parse_in_powers_of_1024(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("bad", ["", "G", "-1G", "12X", "1e9", True, -5])
def test_a_bad_size_names_the_option_and_exits_2(bad):
    with pytest.raises(FarmError) as e:
        parse_size(bad, "--memory")
    assert e.value.code == 2 and e.value.message.startswith("--memory expects a size like 200G")


def test_ages():
    assert [parse_age(a) for a in ("45s", "90m", "12h", "30d", "2w")] == [45, 5400, 43200, 2592000, 1209600]
    with pytest.raises(FarmError):
        parse_age("soon")


def test_bytes_read_in_decimal_units():
    assert [human(n) for n in (12, 999, 1500, 8.2e8, 1.5e9, 45.7e9, 3e18)] == [
        "12 B", "999 B", "1.5 KB", "820.0 MB", "1.5 GB", "45.7 GB", "3000.0 PB"]
