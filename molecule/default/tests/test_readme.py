"""README.md's test-bed commands run as written, from the repository's root, on the converged test bed."""

import os
import subprocess
from pathlib import Path

PROJECT = Path(os.environ["MOLECULE_PROJECT_DIRECTORY"])


def test_readme_test_bed_commands_run_as_written():
    done = subprocess.run(
        [str(PROJECT / "scripts" / "check-readme")],
        cwd=PROJECT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=1800,
        check=False,
    )
    assert done.returncode == 0, done.stdout
