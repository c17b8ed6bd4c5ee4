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


def test_import_farm_changes_no_logger_and_quiet_silences_the_libraries_only():
    """`import farm` (a studio's script) leaves logging and warnings as they were; the command
    line's quiet_libraries() silences warnings issued by the libraries under farm, by module,
    and still shows a warning from anyone else."""
    import subprocess
    import sys

    code = """
import logging, warnings
import numpy  # adds warning filters of its own when imported
before = (list(warnings.filters), logging.getLogger("torchao").level, logging.getLogger().handlers[:])
import farm, farm.cli, farm.run.render
assert (list(warnings.filters), logging.getLogger("torchao").level, logging.getLogger().handlers[:]) == before
from farm.quiet import quiet_libraries
quiet_libraries()
with warnings.catch_warnings(record=True) as seen:
    for module in ("diffusers.pipelines.x", "torch", "studio_script", "farm.run.worker"):
        warnings.warn_explicit(f"from {module}", UserWarning, "x.py", 1, module=module)
print(sorted(str(w.message) for w in seen))
print(logging.getLogger("torchao").level)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[0] == "['from farm.run.worker', 'from studio_script']"
    assert out[1] == "40"  # logging.ERROR
