"""Where the shared fixtures are found: beside the checkout, or a copy inside it on a machine that gets only the checkout."""

from __future__ import annotations

from dllm_accel import paths


def test_shared_beside_the_checkout_wins_and_a_copy_inside_it_is_the_fallback(monkeypatch, tmp_path):
    repo = tmp_path / "repo"
    (repo / "shared").mkdir(parents=True)
    monkeypatch.delenv("DLLM_ACCEL_SHARED", raising=False)
    monkeypatch.setattr(paths, "REPO_ROOT", repo)
    assert paths.shared_dir() == repo / "shared"  # a lent GPU receives the checkout alone
    (tmp_path / "shared").mkdir()
    assert paths.shared_dir() == tmp_path / "shared"
    monkeypatch.setenv("DLLM_ACCEL_SHARED", str(tmp_path / "elsewhere"))
    assert paths.fixtures_dir() == tmp_path / "elsewhere" / "fixtures"


def test_without_either_the_error_names_the_folder_beside_the_checkout(monkeypatch, tmp_path):
    monkeypatch.delenv("DLLM_ACCEL_SHARED", raising=False)
    monkeypatch.setattr(paths, "REPO_ROOT", tmp_path / "repo")
    assert paths.shared_dir() == tmp_path / "shared"
