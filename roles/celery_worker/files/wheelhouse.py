"""Build the app's wheelhouse on the controller once per release, and reuse it on every later run.

Usage: python wheelhouse.py CACHE SOURCE PYTHON_VERSION PLATFORM...

A release is the app's source tree (every file but build output and caches), its pinned requirements, and
the hosts' Python version and platforms. Its digest names a folder under CACHE holding the app's wheel and
every pinned dependency, downloaded for the hosts' Python and platforms. When that folder exists the run
reuses it: no build and no download, so a run that changes nothing stays off the package index. A new
release is built in a temporary folder and renamed into place, so a build cut short is never reused, and
two runs building the same release at once both end with one complete folder. The
newest six are kept (three releases for each of two Pythons). Each release also has one archive of its wheels and pinned requirements
(release.tar), so that a host receives it in one transfer instead of one per file.
Prints JSON: {"path", "archive", "wheel", "checksum", "built"}.
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

SKIPPED = {"build", "dist", "__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache", ".venv", ".git"}
KEPT = 6  # three releases for each of two Pythons (Debian 12 and 13 hosts side by side)


def digest(source: Path, python_version: str, platforms: list[str]) -> str:
    """The release's digest: every source file's path and bytes, the Python version and the platforms."""
    sha = hashlib.sha256(f"{python_version} {' '.join(platforms)}\n".encode())
    for folder, dirs, files in os.walk(source):
        dirs[:] = sorted(d for d in dirs if d not in SKIPPED and not d.endswith(".egg-info"))
        for name in sorted(files):
            path = Path(folder, name)
            sha.update(f"{path.relative_to(source)}\n".encode())
            sha.update(path.read_bytes())
    return sha.hexdigest()[:16]


def build(source: Path, python_version: str, platforms: list[str], into: Path) -> None:
    """The app's wheel (hatchling's are reproducible) and its pinned dependencies, into one folder."""
    quiet = {"check": True, "stdout": subprocess.DEVNULL}
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(into), str(source)], **quiet
    )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--only-binary=:all:",
            "--python-version",
            python_version,
            "--implementation",
            "cp",
            "--dest",
            str(into),
            "--requirement",
            str(source / "requirements.txt"),
            *(f"--platform={platform}" for platform in platforms),
        ],
        **quiet,
    )


def archive(release: Path, source: Path) -> Path:
    """release.tar: the release's wheels and the pinned requirements, written once (atomically) per release."""
    target = release / "release.tar"
    if not target.is_file():
        handle, scratch = tempfile.mkstemp(dir=release, prefix=".release-", suffix=".tar")
        os.close(handle)
        with tarfile.open(scratch, "w") as tar:
            for wheel in sorted(release.glob("*.whl")):
                tar.add(wheel, arcname=wheel.name)
            tar.add(source / "requirements.txt", arcname="requirements.txt")
        os.chmod(scratch, 0o644)
        os.replace(scratch, target)
    return target


def main(cache: Path, source: Path, python_version: str, platforms: list[str]) -> dict:
    cache.mkdir(parents=True, exist_ok=True)
    release = cache / digest(source, python_version, platforms)
    built = not release.is_dir()
    if built:
        with tempfile.TemporaryDirectory(dir=cache, prefix=".building-") as scratch:
            build(source, python_version, platforms, Path(scratch, "wheelhouse"))
            try:
                os.rename(Path(scratch, "wheelhouse"), release)
            except OSError:
                # Another run (a play beside this one) built the same release meanwhile: use that one.
                if not release.is_dir():
                    raise
    release.touch()  # the newest used release is kept longest
    for old in sorted(
        (p for p in cache.iterdir() if p.is_dir() and not p.name.startswith(".")),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )[KEPT:]:
        shutil.rmtree(old, ignore_errors=True)
    wheels = sorted(release.glob("fetcher-*.whl"))
    if len(wheels) != 1:
        sys.exit(f"{release} holds {len(wheels)} fetcher wheels, expected one: delete it and run again")
    checksum = hashlib.sha1(wheels[0].read_bytes()).hexdigest()
    return {
        "path": str(release),
        "archive": str(archive(release, source)),
        "wheel": wheels[0].name,
        "checksum": checksum,
        "built": built,
    }


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4:])))
