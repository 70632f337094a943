"""The layering is enforced: the import-linter contracts of pyproject.toml hold for src/vist2,
and README's "How it is built" lists the same floors."""

import tomllib
from pathlib import Path

from importlinter.cli import lint_imports

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_hold(capsys):
    code = lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True, no_logo=True)
    report = capsys.readouterr().out
    assert code == 0, report  # a broken contract prints the import that climbs a floor or closes a circle
    assert "2 kept, 0 broken" in report


def test_readme_lists_the_floors_of_the_contract():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    layers = next(c["layers"] for c in config["contracts"] if c["type"] == "layers")
    built = (ROOT / "README.md").read_text().split("## How it is built", 1)[1]
    for floor in layers:
        assert f"`{floor}`" in built, floor
