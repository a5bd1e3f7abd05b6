"""``plugins.toml`` type checks: a malformed file is one line naming the file, the table and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from xcam.core.config import load_config
from xcam.core.errors import XcamError


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("plugins = 3\n", "[plugins]: must be a table (got integer 3)"),
        ("defaults = [1]\n", "[defaults]: must be a table (got array [1])"),
        ("options = 'x'\n", "[options]: must be a table (got string 'x')"),
        ("profiles = 1\n", "[profiles]: must be a table (got integer 1)"),
        ('[plugins]\ndisabled = "notalist"\n', "[plugins] disabled: must be an array of strings (got string"),
        ("[plugins]\nenabled = [1, 2]\n", "[plugins] enabled: must be an array of strings (got array [1, 2])"),
        ("[plugins]\ndisable = []\n", "unknown [plugins] keys ['disable']"),
        ("[defaults]\nclassifier = 5\n", "[defaults] classifier: must be a non-empty string (got integer 5)"),
        ("[defaults]\nmask_extractor = true\n", "[defaults] mask_extractor: must be a non-empty string (got boolean"),
        ("[options]\ndensenet121 = 3\n", "[options] densenet121: must be a table ([options.NAME]) (got integer 3)"),
        ("[profiles]\nmine = 'x'\n", "[profiles] mine: must be a table ([profiles.NAME]) (got string 'x')"),
    ],
)
def test_malformed_config_is_one_line_naming_file_and_key(tmp_path: Path, text: str, fragment: str) -> None:
    path = tmp_path / "plugins.toml"
    path.write_text(text)
    with pytest.raises(XcamError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and fragment in message and "\n" not in message


def test_binary_config_file(tmp_path: Path) -> None:
    path = tmp_path / "plugins.toml"
    path.write_bytes(b"\xff\xfe\x00\x81binary")
    with pytest.raises(XcamError, match=r"plugins.toml: not a UTF-8 text file"):
        load_config(path)


def test_well_formed_config_still_loads(tmp_path: Path) -> None:
    path = tmp_path / "plugins.toml"
    path.write_text('[plugins]\ndisabled = ["a"]\nenabled = []\n[defaults]\nclassifier = "resnet50"\n'
                    'mask_extractor = "otsu"\n[options.resnet50]\nweights = "w"\n[profiles.mine]\nextends = "fast"\n')
    config = load_config(path)
    assert config.disabled == {"a"} and config.enabled == frozenset() and config.defaults["classifier"] == "resnet50"
    assert config.overrides == {"mask_extractor": "otsu"} and config.options == {"resnet50": {"weights": "w"}}
    assert config.profiles == {"mine": {"extends": "fast"}}


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("[profiles.x]\nclassifiers = 3\n", "[profiles.x]: classifiers must be tables"),
        ("[profiles.x.classifiers]\ndensenet121 = 3\n", "[profiles.x]: classifiers must be tables"),
        ("[profiles.x]\nmask_extractor = 3\n", "[profiles.x]: mask_extractor must be a string, not 3"),
    ],
)
def test_malformed_profiles_are_one_line(tmp_path: Path, text: str, fragment: str) -> None:
    from xcam.chain.settings import profile_settings

    path = tmp_path / "plugins.toml"
    path.write_text(text)
    with pytest.raises(XcamError) as info:
        profile_settings(load_config(path), "x")
    assert fragment in str(info.value) and str(path) in str(info.value)


def test_config_command_reports_bad_file_in_one_line(tmp_path: Path, capsys) -> None:
    from conftest import run_xcam

    path = tmp_path / "plugins.toml"
    path.write_text("[options]\ndensenet121 = 3\n")
    code, _, err = run_xcam(["--config", str(path), "config"], capsys)
    assert code != 0 and err.strip() == f"error: {path}: [options] densenet121: must be a table ([options.NAME]) " \
                                        f"(got integer 3)"
