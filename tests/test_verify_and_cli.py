"""``transferkit data list|verify`` and the CLI's error contract."""

from __future__ import annotations

import numpy as np
import pytest
from fakes import random_images, write_idx, write_image_zip, write_manifest

from transferkit.cli import main


@pytest.fixture
def mirror_root(tmp_path):
    write_idx(tmp_path / "mnist", "train", random_images(5, 28, 1), np.arange(5))
    write_idx(tmp_path / "mnist", "t10k", random_images(3, 28, 1), np.arange(3))
    write_image_zip(tmp_path / "syn_signs" / "train.zip", random_images(4, 40, 3), [0, 1, 42, 7])
    write_manifest(tmp_path, sorted(tmp_path.rglob("*.gz")) + [tmp_path / "syn_signs" / "train.zip"])
    return tmp_path


def test_help_explains_the_commands(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    assert "data" in capsys.readouterr().out


def test_verify_reports_intact_and_missing_data_sets(mirror_root, capsys):
    assert main(["data", "verify", "syn_signs", "svhn", "--root", str(mirror_root)]) == 0
    out = capsys.readouterr().out
    assert "syn_signs     intact   train 4  (sha256)" in out
    assert "svhn          missing" in out


def test_verify_names_a_corrupted_file_and_fails(mirror_root, capsys):
    target = mirror_root / "syn_signs" / "train.zip"
    data = bytearray(target.read_bytes())
    data[100] ^= 0xFF
    target.write_bytes(bytes(data))
    assert main(["data", "verify", "syn_signs", "--root", str(mirror_root)]) == 1
    out = capsys.readouterr().out
    assert "syn_signs     CORRUPT" in out and str(target) in out and "sha256" in out


def test_verify_without_checksums_decodes_and_counts(tmp_path, capsys):
    write_image_zip(tmp_path / "syn_signs" / "train.zip", random_images(3, 40, 3), [1, 2, 3])
    assert main(["data", "verify", "syn_signs", "--root", str(tmp_path)]) == 0
    assert "train 3  (decode)" in capsys.readouterr().out


def test_verify_flags_a_wrong_sample_count(tmp_path, capsys):
    write_image_zip(tmp_path / "mnist_m" / "test.zip", random_images(3, 32, 3), [1, 2, 3])
    assert main(["data", "verify", "mnist_m", "--root", str(tmp_path)]) == 1
    assert "test has 3 samples, expected 9001" in capsys.readouterr().out


def test_list_shows_where_each_data_set_was_found(mirror_root, capsys):
    assert main(["data", "list", "--data-root", str(mirror_root)]) == 0
    out = capsys.readouterr().out
    assert f"mnist         {mirror_root / 'mnist'}" in out
    assert "splits: train 5 · test 3" in out


def test_user_error_is_one_line_on_stderr_with_exit_code_2(tmp_path, capsys):
    assert main(["data", "verify", "--root", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nope: no such directory" in err
    assert "Traceback" not in err


def test_debug_shows_the_traceback(tmp_path):
    from transferkit.errors import TransferkitError

    with pytest.raises(TransferkitError):
        main(["--debug", "data", "verify", "--root", str(tmp_path / "nope")])


def test_console_script_exits_2_on_bad_input(tmp_path):
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "transferkit", "data", "verify", "no_such_set"],
        capture_output=True, text=True,
    )
    assert result.returncode == 2
    assert "unknown data set(s) no_such_set" in result.stderr


def test_offline_mirror_verifies_with_its_published_counts(shared_data, capsys):
    assert main(["data", "verify", "mnist_m", "syn_signs", "--root", str(shared_data)]) == 0
    out = capsys.readouterr().out
    assert "mnist_m       intact   train 59001 · test 9001" in out
    assert "syn_signs     intact   train 1982" in out
