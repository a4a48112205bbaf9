"""The ``kiln`` command's cache subcommands, in-process and as a console script."""

from __future__ import annotations

import os
import subprocess
import sys

import torch

import kiln
from kiln import cli, config
from kiln.cache import cache_dir, fresh_cache


def test_cache_info_and_clear(capsys):
    with fresh_cache(), config.patch(fx_graph_cache=True):
        kiln.compile(lambda x: x * 2 + 1)(torch.randn(4))
        assert cli.main(["cache", "info"]) == 0
        out = capsys.readouterr().out
        assert str(cache_dir()) in out and "fxgraph" in out and "     1 files" in out
        assert cli.main(["cache", "clear", "--kind", "fxgraph"]) == 0
        assert "cleared fxgraph" in capsys.readouterr().out
        assert not (cache_dir() / "fxgraph").exists()
        assert (cache_dir() / "cpp").exists()
        cli.main(["cache", "clear"])
        assert not (cache_dir() / "cpp").exists()


def test_the_module_runs_as_a_command(tmp_path):
    out = subprocess.run([sys.executable, "-m", "kiln.cli", "cache", "info"], text=True,
                         capture_output=True, check=True,
                         env={**os.environ, "KILN_CACHE_DIR": str(tmp_path)})
    assert f"kiln cache at {tmp_path}" in out.stdout
