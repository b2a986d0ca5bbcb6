"""Every Python file is formatted by the project's one formatter (pyink, pyproject.toml)."""

import subprocess
import sys

from helpers import REPO  # pylint: disable=import-error


def test_every_python_file_is_pyink_formatted():
  result = subprocess.run(
      [sys.executable, "-m", "pyink", "--check", "--diff", "."],
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert result.returncode == 0, (
      "run `pyink .` in the repository root:\n"
      + result.stdout[:3000]
      + result.stderr[-2000:]
  )
