"""Pack the release zip: bin/, the example config, web/, docs/, README.md and LICENSE.

``python build/release_zip.py flaskrtc-bin-<version>.zip`` (``make release`` / ``make zip``).
Files are picked by name, never by folder, so a generated TLS key, certificate or TURN secret
in configs/ can never end up in the zip; a final check refuses any that slipped in anyway.
"""

from __future__ import annotations

import stat
import sys
import zipfile
from pathlib import Path, PurePosixPath

ROOT = Path(__file__).resolve().parent.parent
# configs/ ships its example only: certs/ and turn_secret are generated per machine.
CONFIG_FILES = ("configs/config.ini",)
TOP_FILES = ("README.md", "LICENSE")
# Folders shipped whole: the web demo, and the docs the README links to (protocol, screenshots).
FOLDERS = ("web", "docs")
SECRET_NAMES = ("turn_secret",)
SECRET_SUFFIXES = (".pem", ".key", ".crt", ".p12", ".pfx")


class ReleaseError(Exception):
    """The tree cannot make a release zip; the message says why."""


def is_secret(name: str) -> bool:
    """Whether an archive path looks like a private key, certificate or secret."""
    path = PurePosixPath(name)
    return (
        path.name in SECRET_NAMES
        or path.suffix.lower() in SECRET_SUFFIXES
        or "certs" in path.parts[:-1]
    )


def release_files(root: Path) -> list[tuple[Path, str]]:
    """(source file, path in the zip) for every file of the release, sorted by zip path."""
    binaries = sorted(p for p in (root / "bin").glob("flaskrtc-*") if p.is_file())
    if not binaries:
        raise ReleaseError(f"no binaries in {root / 'bin'}: run make linux|darwin|windows first")
    missing = [name for name in (*CONFIG_FILES, *TOP_FILES) if not (root / name).is_file()]
    if missing or not (root / "web" / "index.html").is_file():
        raise ReleaseError(f"missing from {root}: {', '.join(missing) or 'web/index.html'}")
    files = [(path, f"bin/{path.name}") for path in binaries]
    files += [(root / name, name) for name in (*CONFIG_FILES, *TOP_FILES)]
    for path in sorted(p for folder in FOLDERS for p in (root / folder).rglob("*")):
        relative = path.relative_to(root).as_posix()
        if path.is_file() and not any(part.startswith(".") for part in path.parts):
            files.append((path, relative))
    files.sort(key=lambda item: item[1])
    leaked = [name for _, name in files if is_secret(name)]
    if leaked:
        raise ReleaseError(f"refusing to pack key, certificate or secret files: {leaked}")
    return files


def write_zip(root: Path, output: Path) -> list[str]:
    """Write the release zip ``output`` (one top folder named after it); return its names."""
    top = output.name.removesuffix(".zip")
    files = release_files(root)  # before opening: a refused tree leaves no zip behind
    names = []
    with zipfile.ZipFile(output, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        for path, name in files:
            info = zipfile.ZipInfo.from_file(path, f"{top}/{name}")
            # Unzip tools restore these bits: the binaries stay executable.
            mode = 0o755 if name.startswith("bin/") else 0o644
            info.external_attr = (stat.S_IFREG | mode) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            with path.open("rb") as source, archive.open(info, "w") as target:
                while chunk := source.read(1 << 20):
                    target.write(chunk)
            names.append(info.filename)
    return names


def main(argv: list[str]) -> int:
    """Command line: ``release_zip.py OUTPUT.zip``."""
    if len(argv) != 1 or not argv[0].endswith(".zip"):
        print("usage: release_zip.py flaskrtc-bin-<version>.zip", file=sys.stderr)
        return 2
    output = ROOT / argv[0]
    try:
        names = write_zip(ROOT, output)
    except ReleaseError as err:
        print(f"make release: {err}", file=sys.stderr)
        return 1
    print(f"wrote {output.name}: {len(names)} files")
    for name in names:
        print(f"  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
