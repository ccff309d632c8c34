"""Two data-parallel ranks write the same files (config, task YAMLs); neither may fail or tear."""

import os

from dllm_accel import atomic
from dllm_accel.atomic import atomic_write_text


def test_a_second_writer_between_write_and_rename_does_not_break_the_first(tmp_path, monkeypatch):
    """The interleaving that failed CI's two-rank run: with one shared temporary name the
    first writer's rename found its file already moved by the second writer."""
    target = tmp_path / "config.yaml"
    real_replace = os.replace
    interleaved = []

    def replace_after_other_rank(src, dst):
        if not interleaved:
            interleaved.append(True)
            atomic_write_text(target, "from rank 1\n")
        real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", replace_after_other_rank)
    atomic_write_text(target, "from rank 0\n")
    assert target.read_text() == "from rank 0\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]  # no temporary left behind


def test_a_failed_write_leaves_the_old_content_and_no_temporary(tmp_path, monkeypatch):
    target = atomic_write_text(tmp_path / "sub" / "summary.json", "old")

    def fail(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(atomic.os, "replace", fail)
    try:
        atomic_write_text(target, "new")
    except OSError as error:
        assert "disk full" in str(error)
    assert target.read_text() == "old" and [p.name for p in target.parent.iterdir()] == ["summary.json"]


def test_written_files_get_the_umask_mode_not_mkstemps_private_one(tmp_path):
    """Result files were 0600: a collaborator in the same group could not read them."""
    old = os.umask(0o022)
    try:
        import importlib

        importlib.reload(atomic)
        path = atomic.atomic_write_text(tmp_path / "summary.json", "{}")
    finally:
        os.umask(old)
        importlib.reload(atomic)
    assert path.stat().st_mode & 0o777 == 0o644
