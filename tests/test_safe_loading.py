"""Untrusted files are never unpickled or evaluated (a scan of the package's own source)."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import torch

from lmid.checkpoint import load_checkpoint
from lmid.errors import InputFileError

PACKAGE = Path(__file__).resolve().parents[1] / "lmid"
SOURCES = sorted(PACKAGE.rglob("*.py"))


def _calls(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
            owner = getattr(f.value, "id", "") if isinstance(f, ast.Attribute) else ""
            yield node, owner, name


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_unsafe_loading(path):
    tree = ast.parse(path.read_text())
    for node, owner, name in _calls(tree):
        where = f"{path}:{node.lineno}"
        if owner == "torch" and name == "load":
            kw = {k.arg: k.value for k in node.keywords}
            assert "weights_only" in kw and getattr(kw["weights_only"], "value", None) is True, where
        if owner == "np" and name == "load":
            kw = {k.arg: k.value for k in node.keywords}
            assert getattr(kw.get("allow_pickle"), "value", False) is False, where
        assert not (owner == "yaml" and name in ("load", "unsafe_load", "full_load")), where
        assert not (owner == "pickle" and name in ("load", "loads")), where
        # builtin eval/exec (module.eval() of torch is a method call, not this)
        assert not (isinstance(node.func, ast.Name) and name in ("eval", "exec")), where


def test_checkpoint_with_a_pickled_object_is_refused(tmp_path):
    """A file that needs arbitrary unpickling is rejected with the file named, not executed."""
    path = tmp_path / "evil.pt"
    torch.save({"step": 1, "payload": np.dtype("float32")}, path)  # a non-tensor object
    with pytest.raises(InputFileError) as info:
        load_checkpoint(path)
    assert "evil.pt" in str(info.value)


def test_equal_weights_give_byte_identical_checkpoints(tmp_path):
    """torch.save to a path records the temporary file's name; lmid's checkpoints must not, or DVC
    sees a change on every run."""
    import torch

    from lmid.checkpoint import save_checkpoint

    state = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3), "step": 3}
    save_checkpoint(tmp_path / "a.pt", state)
    save_checkpoint(tmp_path / "b.pt", {k: (v.clone() if hasattr(v, "clone") else v) for k, v in state.items()})
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "b.pt").read_bytes()


def test_outputs_honour_the_umask(tmp_path):
    import os

    from lmid.io import write_text

    old = os.umask(0o022)
    try:
        write_text(tmp_path / "shared.txt", "x")
        os.umask(0o077)
        write_text(tmp_path / "private.txt", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "shared.txt").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "private.txt").stat().st_mode & 0o777 == 0o600
