"""Atomic writes: a failure mid-write leaves the old file and no temporary file; modes are applied."""

import json
import os
from pathlib import Path

import pytest

from fedpers import atomic
from fedpers.atomic import write_bytes, write_json, write_text


def _mode(path):
    return path.stat().st_mode & 0o777


def test_write_bytes_replaces_the_file_and_creates_parents(tmp_path):
    path = tmp_path / "a" / "b" / "item.bin"
    assert write_bytes(path, b"old") == path
    write_bytes(path, b"new")
    assert path.read_bytes() == b"new"
    assert os.listdir(path.parent) == ["item.bin"]


def test_a_failed_rename_keeps_the_old_content_and_removes_the_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "item.json"
    write_json(path, {"version": 1})
    seen = []

    def crash(src, dst):
        seen.append(Path(src).read_bytes())  # the new content was complete in the temp file
        raise OSError("power cut before the rename")

    monkeypatch.setattr(atomic.os, "replace", crash)
    with pytest.raises(OSError, match="power cut"):
        write_json(path, {"version": 2})
    assert json.loads(seen[0]) == {"version": 2}
    assert json.loads(path.read_text()) == {"version": 1}
    assert os.listdir(tmp_path) == ["item.json"]


def test_a_failure_mid_write_keeps_the_old_content_and_removes_the_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "item.txt"
    write_text(path, "complete old content\n")
    real_fsync = os.fsync

    def half_written(fd):
        os.write(fd, b"half of the ne")  # part of the new data has reached the temp file
        raise OSError("disk full")

    monkeypatch.setattr(atomic.os, "fsync", half_written)
    with pytest.raises(OSError, match="disk full"):
        write_text(path, "complete new content\n")
    monkeypatch.setattr(atomic.os, "fsync", real_fsync)
    assert path.read_text() == "complete old content\n"
    assert os.listdir(tmp_path) == ["item.txt"]


def test_an_interrupt_also_cleans_up(tmp_path, monkeypatch):
    path = tmp_path / "item.bin"
    write_bytes(path, b"old")

    def interrupted(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(atomic.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_bytes(path, b"new")
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["item.bin"]


@pytest.mark.parametrize("mode", [0o600, 0o644, 0o640])
def test_mode_is_applied_to_new_and_replaced_files(tmp_path, mode):
    path = tmp_path / "secret.key"
    write_bytes(path, b"first", mode=mode)
    assert _mode(path) == mode
    path.chmod(0o666)
    write_bytes(path, b"second", mode=mode)
    assert _mode(path) == mode and path.read_bytes() == b"second"


def test_without_a_mode_files_are_private(tmp_path):
    path = write_json(tmp_path / "plan.json", {"noise": 1.0})
    assert _mode(path) == 0o600


def test_write_json_and_write_text_content(tmp_path):
    path = write_json(tmp_path / "x.json", {"b": [1, 2], "p": tmp_path}, indent=None)
    assert json.loads(path.read_text()) == {"b": [1, 2], "p": str(tmp_path)}
    text = write_text(tmp_path / "x.txt", "Grüße\r\n")
    assert text.read_bytes() == "Grüße\r\n".encode()
