"""Build the app's wheelhouse on the controller once per release, and reuse it on every later run.

Usage: python wheelhouse.py CACHE RUNTIME APP PYTHON_VERSION PLATFORM...

RUNTIME is the bundled fetcher package (the project's runtime every app imports, `fetcher.runtime`); APP is the
app to deploy: the same folder for the bundled app, or an operator's own project. An APP with a pyproject.toml
(or setup.py) is built into a wheel; one without (a Django project as `django-admin startproject` makes it:
manage.py, the project's package, requirements.txt) is shipped as its source tree, which the host puts on the
virtualenv's path. The requirements of both (RUNTIME's requirements.txt and wheel, APP's requirements.txt and
wheel) are resolved here, together, for the hosts' Python and platforms, into wheels: the hosts install from
these and need no package index. The pinned result is the release's requirements.txt.

A release is the sources of both (every file but build output and caches). Its name is the app's name and
version and a digest of its sources ("harvest-1.2.0-3fa2c1d9e0"), the same on every host; the wheelhouse of a
release for one Python and platform is a folder under CACHE named by a digest that adds those. When that folder
exists the run reuses it: no build and no download. A new wheelhouse is built in a temporary folder and renamed
into place, so a build cut short is never reused, and two runs building the same one at once both end with one
complete folder. The newest six are kept (three releases for each of two Pythons). Each has one archive
(release.tar: the wheels, the pinned requirements, and the source tree where the app ships as one) so that a
host receives it in one transfer.
Prints JSON: {"path", "archive", "release", "checksum", "built"}.
"""

import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import tomllib
from pathlib import Path

SKIPPED = {"build", "dist", "__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache", ".venv", ".git", "tests"}
KEPT = 6  # three releases for each of two Pythons (Debian 12 and 13 hosts side by side)
SOURCE = "source"  # the folder of the archive holding an app shipped as its source tree


def files(folder: Path):
    """Every file of a source tree that makes the release, in a stable order."""
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if d not in SKIPPED and not d.endswith(".egg-info"))
        for name in sorted(names):
            if not name.endswith((".pyc", ".sqlite3")):
                yield Path(root, name)


def source_digest(sources: list[Path]) -> str:
    """The digest of the sources alone: the release, whatever Python a host runs."""
    sha = hashlib.sha256()
    for source in sources:
        for path in files(source):
            sha.update(f"{path.relative_to(source)}\n".encode())
            sha.update(path.read_bytes())
    return sha.hexdigest()


def digest(sources: list[Path], python_version: str, platforms: list[str]) -> str:
    """The wheelhouse's digest: the release's sources, the Python version and the platforms."""
    return hashlib.sha256(f"{source_digest(sources)} {python_version} {' '.join(platforms)}".encode()).hexdigest()[:16]


def packaged(app: Path) -> bool:
    """Whether the app builds into a wheel of its own (else it ships as its source tree)."""
    return (app / "pyproject.toml").is_file() or (app / "setup.py").is_file()


def name_and_version(app: Path) -> tuple[str, str]:
    """The app's name and version from its pyproject.toml, or its folder's name for a source tree."""
    pyproject = app / "pyproject.toml"
    if pyproject.is_file():
        project = tomllib.loads(pyproject.read_text()).get("project", {})
        if project.get("name") and isinstance(project.get("version"), str):
            return re.sub(r"[^A-Za-z0-9.]+", "_", project["name"]), project["version"]
    return re.sub(r"[^A-Za-z0-9.]+", "_", app.resolve().name), "source"


def sources_of(runtime: Path, app: Path) -> list[Path]:
    return [runtime] if runtime.resolve() == app.resolve() else [runtime, app]


def run(what: str, command: list[str]) -> None:
    """Run one build step; if it fails, stop saying what it was doing, with the end of what it said."""
    done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        said = "\n".join(done.stderr.strip().splitlines()[-15:])
        raise BuildError(f"Failed {what}:\n{said}")


class BuildError(Exception):
    """A build step failed; the message says which, and why."""


def build(runtime: Path, app: Path, python_version: str, platforms: list[str], into: Path) -> None:
    """The wheels of the runtime (and of the app, where it has its own) and every dependency they and the
    requirements files pin, resolved together for one Python and its platforms."""
    into.mkdir()
    built = into / ".built"
    for source in sources_of(runtime, app):
        if packaged(source):
            # The runtime's build backend (hatchling) is in the controller's toolchain; an app's own is fetched
            # into an isolated build environment, as pip would.
            isolation = ["--no-isolation"] if source == runtime else []
            run(
                f"building the wheel of {source}",
                [sys.executable, "-m", "build", "--wheel", *isolation, "--outdir", str(built), str(source)],
            )
    requirements = [
        argument
        for source in sources_of(runtime, app)
        if (source / "requirements.txt").is_file()
        for argument in ("--requirement", str(source / "requirements.txt"))
    ]
    run(
        f"resolving the requirements of {' and '.join(str(source) for source in sources_of(runtime, app))} for Python "
        f"{python_version} ({', '.join(platforms)}); the runtime pins its own (app/requirements.txt), and the app's"
        " must agree with them",
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--only-binary=:all:",
            "--python-version",
            python_version,
            "--implementation",
            "cp",
            "--dest",
            str(into),
            *requirements,
            *(str(wheel) for wheel in sorted(built.glob("*.whl"))),
            *(f"--platform={platform}" for platform in platforms),
        ],
    )
    shutil.rmtree(built)


def pinned(release: Path) -> str:
    """requirements.txt of the release: every wheel in it, as name==version."""
    lines = []
    for wheel in sorted(release.glob("*.whl")):
        name, version = wheel.name.split("-")[:2]
        lines.append(f"{name}=={version}\n")
    return "".join(lines)


def archive(release: Path, app: Path | None) -> Path:
    """release.tar: the wheels, the pinned requirements and (for an app without a wheel) its source tree,
    written once (atomically) per wheelhouse."""
    target = release / "release.tar"
    if not target.is_file():
        handle, scratch = tempfile.mkstemp(dir=release, prefix=".release-", suffix=".tar")
        os.close(handle)
        with tarfile.open(scratch, "w") as tar:
            for wheel in sorted(release.glob("*.whl")):
                tar.add(wheel, arcname=wheel.name)
            requirements = tarfile.TarInfo("requirements.txt")
            text = pinned(release).encode()
            requirements.size = len(text)
            tar.addfile(requirements, fileobj=io.BytesIO(text))
            if app is not None:
                for path in files(app):
                    tar.add(path, arcname=f"{SOURCE}/{path.relative_to(app)}")
        os.chmod(scratch, 0o644)
        os.replace(scratch, target)
    return target


def checksum(release: Path, sources: list[Path]) -> str:
    """What the hosts install, by content: every wheel (name and bytes) and the sources."""
    sha = hashlib.sha1(source_digest(sources).encode())
    for wheel in sorted(release.glob("*.whl")):
        sha.update(f"{wheel.name}\n".encode())
        sha.update(wheel.read_bytes())
    return sha.hexdigest()


def main(cache: Path, runtime: Path, app: Path, python_version: str, platforms: list[str]) -> dict:
    cache.mkdir(parents=True, exist_ok=True)
    sources = sources_of(runtime, app)
    release = cache / digest(sources, python_version, platforms)
    built = not release.is_dir()
    if built:
        with tempfile.TemporaryDirectory(dir=cache, prefix=".building-") as scratch:
            build(runtime, app, python_version, platforms, Path(scratch, "wheelhouse"))
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
    if not list(release.glob("fetcher-*.whl")):
        sys.exit(f"{release} holds no fetcher wheel (the runtime every app imports): delete it and run again")
    tar = archive(release, None if packaged(app) else app)
    name, version = name_and_version(app)
    return {
        "path": str(release),
        "archive": str(tar),
        "release": f"{name}-{version}-{source_digest(sources)[:10]}",
        "checksum": checksum(release, sources),
        "built": built,
    }


if __name__ == "__main__":
    try:
        print(json.dumps(main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4], sys.argv[5:])))
    except BuildError as error:
        sys.exit(str(error))
