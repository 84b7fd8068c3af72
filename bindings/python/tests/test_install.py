"""The installed wheel (scripts/test-all.sh sets GAUSSSKIP_TEST_INSTALLED=1 when it runs the
tests against a wheel in a fresh virtual environment): the library comes from inside the
package, with no cargo, no environment variable and no repository around."""

import os
import shutil
from pathlib import Path

import pytest

import gaussskip as gs

pytestmark = pytest.mark.skipif(
    not os.environ.get("GAUSSSKIP_TEST_INSTALLED"), reason="runs against an installed wheel (scripts/test-all.sh)"
)


def test_the_library_is_the_one_inside_the_installed_package():
    assert shutil.which("cargo") is None, "cargo is on PATH"
    assert "GAUSSSKIP_LIB" not in os.environ
    package = Path(gs.__file__).resolve().parent
    assert "site-packages" in package.parts
    assert gs.library_path().resolve().parent == package
    assert gs.library_version() == gs.__version__
    for folder in (Path.cwd(), *Path.cwd().parents):
        assert not (folder / "Cargo.toml").exists(), f"a Cargo.toml lies at {folder}"
