"""What a recorded number says made it: the commit, marked when the code had uncommitted changes."""

import subprocess

from tagcap.provenance import source_commit


def git(folder, *args):
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.org", *args], cwd=folder, check=True,
                   capture_output=True)


def test_a_number_from_uncommitted_code_says_so(tmp_path):
    repo, plain = tmp_path / "repo", tmp_path / "plain"
    repo.mkdir()
    plain.mkdir()
    git(repo, "init", "-q")
    (repo / "a.py").write_text("x = 1\n")
    git(repo, "add", "a.py")
    git(repo, "commit", "-qm", "one")
    clean = source_commit(repo)
    assert clean and "+" not in clean
    (repo / "a.py").write_text("x = 2\n")
    assert source_commit(repo) == clean + "+changes"
    git(repo, "commit", "-qam", "two")
    assert source_commit(repo) not in (None, clean) and "+" not in source_commit(repo)
    assert source_commit(plain) is None

