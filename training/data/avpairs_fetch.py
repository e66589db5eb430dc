"""Fetch, verify and unpack the Debian packages the ``avpairs`` benchmark is built from.

Nothing is installed: each package is downloaded with ``apt-get download NAME=VERSION`` into the
cache, its SHA-256 is checked against the value pinned in :data:`PACKAGES`, and its file tree is
unpacked with ``dpkg-deb -x`` into a folder of the cache. The pins are Debian 12 (bookworm)
versions; the hashes are the ones the bookworm archive index lists (and that a download gave).

Cache layout (``$STREAMLOC_CACHE_DIR`` or ``$XDG_CACHE_HOME/streamloc`` or ``~/.cache/streamloc``)::

    debs/NAME_VERSION_all.deb          the verified package (':' in VERSION written '%3a')
    debs/root/NAME/                    its unpacked tree (usr/share/...)
    debs/root/NAME/.streamloc-unpacked.json   name, version, sha256 of what was unpacked
    avpairs/...                        derived files (rendered notes, rasterised SVG stamps)

A ``.deb`` already in ``debs/`` with the pinned hash is used as is, so a machine without
``apt-get`` can be served by copying the files there.

Build-time tools (never needed at run time): ``apt-get`` and ``dpkg-deb`` for the fetch;
``fluidsynth`` (Debian package ``fluidsynth``) to render instrument notes from the soundfont and
``rsvg-convert`` (``librsvg2-bin``) to rasterise the few SVG-only stamps. Without the last two
the instrument pairs / SVG stamps are left out, and :func:`tool_status` says so.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable

from streamloc.errors import StreamlocError

__all__ = [
    "DebPackage",
    "PACKAGES",
    "FetchError",
    "PackageMissingError",
    "PackageHashError",
    "cache_root",
    "deb_cache_dir",
    "derived_cache_dir",
    "deb_filename",
    "sha256_file",
    "verify_deb",
    "download_deb",
    "unpack_deb",
    "fetch",
    "unpacked_root",
    "require_unpacked",
    "is_unpacked",
    "tool_status",
]


@dataclass(frozen=True)
class DebPackage:
    """One pinned Debian package: what to download, how to check it, and its licence."""

    name: str
    version: str
    sha256: str
    size: int  # bytes of the .deb
    installed_kib: int  # Debian's Installed-Size (KiB): the unpacked tree, for the progress bar
    role: str
    license: str  # SPDX-like summary of the media files used
    license_note: str  # where the licence facts come from

    @property
    def spec(self) -> str:
        return f"{self.name}={self.version}"

    def as_dict(self) -> dict:
        return asdict(self)


#: Pinned packages (Debian 12 bookworm, main). SHA-256 = the archive index value, confirmed by
#: downloading (``sha256sum``) on 2024-11 for this table.
PACKAGES: dict[str, DebPackage] = {
    p.name: p
    for p in (
        DebPackage(
            name="tuxpaint-stamps-default",
            version="2022.06.04-1",
            sha256="6db6c1bfc870a47f1499d6203b083522eacb57c5f9c87d468f2e92eb6d9d5f34",
            size=160880444,
            installed_kib=217739,
            role="object images with alpha (usr/share/tuxpaint/stamps/**.png|svg) and their sounds (.ogg)",
            license="GPL-2.0-or-later",
            license_note=(
                "usr/share/doc/tuxpaint-stamps-default/copyright: 'Files: * Copyright: 2002-2022 by "
                "Bill Kendrick' under 'License: GPL-2' whose text grants 'version 2 of the License, "
                "or (at your option) any later version'"
            ),
        ),
        DebPackage(
            name="fluid-soundfont-gm",
            version="3.1-5.3",
            sha256="6f531493ac4e4d9772fd96b2488ea1790af81c196135fbdd25997da0781fc60e",
            size=119610208,
            installed_kib=145172,
            role="FluidR3 General MIDI soundfont (usr/share/sounds/sf2/FluidR3_GM.sf2): instrument notes",
            license="MIT",
            license_note=(
                "usr/share/doc/fluid-soundfont-gm/copyright: 'Copyright (c) 2000-2002, 2008 Frank Wen', "
                "'I hereby release Fluid under the MIT license' (Debian packaging GPL-2+)"
            ),
        ),
        DebPackage(
            name="plasma-workspace-wallpapers",
            version="4:5.27.5-2",
            sha256="32cd18b71c8c938a18b3b351f217c02ac590e323caa3cf322fbb875ce8892f8b",
            size=94047772,
            installed_kib=93207,
            role="photographic backgrounds (usr/share/wallpapers/NAME/contents/images/2560x1600.jpg)",
            license="LGPL-3.0 (per wallpaper) / GPL-2.0-or-later (Debian copyright)",
            license_note=(
                "each used wallpaper's metadata.json says 'License: LGPLv3' and names its author; "
                "usr/share/doc/plasma-workspace-wallpapers/copyright: 'Files: * Copyright: 2014 KDE "
                "Visual Design Group, License: GPL-2+'"
            ),
        ),
    )
}


class FetchError(StreamlocError, RuntimeError):
    """A source package that cannot be fetched, verified or unpacked."""


class PackageMissingError(FetchError):
    """The pinned package (or its unpacked tree) is not available."""


class PackageHashError(FetchError):
    """A downloaded or cached ``.deb`` whose SHA-256 is not the pinned one."""

    def __init__(self, pkg: DebPackage, path: Path, actual: str) -> None:
        self.package = pkg.name
        self.expected = pkg.sha256
        self.actual = actual
        self.path = str(path)
        super().__init__(
            f"{pkg.spec}: SHA-256 mismatch for {path}: expected {pkg.sha256}, got {actual}. "
            f"The file is corrupt or is not the pinned build: delete it and run "
            f"`python -m training.data.avpairs_cli fetch` again; if the archive now serves a "
            f"different build, update the pin in training/data/avpairs_fetch.py (PACKAGES) after "
            f"checking the new package's licence."
        )


# --------------------------------------------------------------------------------------------
# cache paths


def cache_root() -> Path:
    """``$STREAMLOC_CACHE_DIR``, else ``$XDG_CACHE_HOME/streamloc``, else ``~/.cache/streamloc``."""
    env = os.environ.get("STREAMLOC_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "streamloc"


def deb_cache_dir(cache: Path | None = None) -> Path:
    return (Path(cache) if cache is not None else cache_root()) / "debs"


def derived_cache_dir(cache: Path | None = None) -> Path:
    return (Path(cache) if cache is not None else cache_root()) / "avpairs"


def deb_filename(pkg: DebPackage) -> str:
    """The name ``apt-get download`` gives the file (epoch colon written ``%3a``)."""
    return f"{pkg.name}_{pkg.version.replace(':', '%3a')}_all.deb"


def _pkg(name: str | DebPackage) -> DebPackage:
    if isinstance(name, DebPackage):
        return name
    try:
        return PACKAGES[name]
    except KeyError:
        raise FetchError(f"unknown source package {name!r}; pinned: {', '.join(PACKAGES)}") from None


# --------------------------------------------------------------------------------------------
# hashing and verification


def sha256_file(path: Path, *, progress: bool = False, desc: str | None = None) -> str:
    h = hashlib.sha256()
    size = path.stat().st_size
    bar = _bar(progress, total=size, desc=desc or f"sha256 {path.name}", unit="B")
    with open(path, "rb") as fh:
        while True:
            chunk = fh.read(1 << 22)
            if not chunk:
                break
            h.update(chunk)
            bar.update(len(chunk))
    bar.close()
    return h.hexdigest()


def verify_deb(pkg: str | DebPackage, path: Path, *, progress: bool = False) -> Path:
    """Raise :class:`PackageHashError` unless ``path`` has the pinned SHA-256."""
    pkg = _pkg(pkg)
    actual = sha256_file(path, progress=progress, desc=f"verify {pkg.name}")
    if actual != pkg.sha256:
        raise PackageHashError(pkg, path, actual)
    return path


# --------------------------------------------------------------------------------------------
# download


def download_deb(pkg: str | DebPackage, cache: Path | None = None, *, progress: bool = True) -> Path:
    """The verified ``.deb`` of ``pkg`` in the cache, downloading it first when absent."""
    pkg = _pkg(pkg)
    debs = deb_cache_dir(cache)
    debs.mkdir(parents=True, exist_ok=True)
    target = debs / deb_filename(pkg)
    if target.is_file():
        return verify_deb(pkg, target, progress=progress)
    apt = shutil.which("apt-get")
    if apt is None:
        raise PackageMissingError(
            f"{pkg.spec}: not in the cache ({target}) and `apt-get` is not available on this machine. "
            f"Fix: on a Debian 12 (bookworm) machine run `apt-get download {pkg.spec}` and copy "
            f"the file to {target} (expected SHA-256 {pkg.sha256})."
        )
    with tempfile.TemporaryDirectory(prefix=".download-", dir=debs) as tmp:
        tmpdir = Path(tmp)
        # apt's sandbox user must be able to write the folder, or apt warns and goes unsandboxed.
        os.chmod(tmpdir, 0o777)
        cmd = [apt, "download", "-q", pkg.spec]
        bar = _bar(progress, total=pkg.size, desc=f"download {pkg.name}", unit="B")
        proc = subprocess.Popen(cmd, cwd=tmpdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        out, err = _poll_progress(proc, bar, lambda: _tree_bytes(tmpdir))
        bar.close()
        got = tmpdir / deb_filename(pkg)
        if proc.returncode != 0 or not got.is_file():
            msg = (err or out).strip().splitlines()
            detail = " | ".join(line for line in msg if not line.startswith("W:"))[-600:]
            raise PackageMissingError(
                f"{pkg.spec}: `apt-get download {pkg.spec}` failed (exit {proc.returncode}): {detail}. "
                f"Fix: run `apt-get update` (the pin is a Debian 12 bookworm version, component main); "
                f"if your distribution does not carry this exact version, get "
                f"{deb_filename(pkg)} from a Debian bookworm mirror and place it at {target} "
                f"(expected SHA-256 {pkg.sha256})."
            )
        verify_deb(pkg, got, progress=progress)
        os.replace(got, target)
    return target


def _tree_bytes(root: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(root):
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_size
            except OSError:
                pass
    return total


def _poll_progress(proc: subprocess.Popen, bar, measure) -> tuple[str, str]:
    """Wait for ``proc`` while moving ``bar`` to ``measure()``; returns (stdout, stderr)."""
    result: dict[str, str] = {}

    def _drain() -> None:
        o, e = proc.communicate()
        result["out"], result["err"] = o or "", e or ""

    t = threading.Thread(target=_drain, daemon=True)
    t.start()
    last = 0
    while t.is_alive():
        t.join(0.3)
        now = measure()
        if now > last:
            bar.update(now - last)
            last = now
    if bar.total and last < bar.total and proc.returncode == 0:
        bar.update(bar.total - last)
    return result.get("out", ""), result.get("err", "")


# --------------------------------------------------------------------------------------------
# unpacking


_MARKER = ".streamloc-unpacked.json"


def unpacked_root(pkg: str | DebPackage, cache: Path | None = None) -> Path:
    """Folder holding the unpacked tree of ``pkg`` (whether or not it is there yet)."""
    return deb_cache_dir(cache) / "root" / _pkg(pkg).name


def is_unpacked(pkg: str | DebPackage, cache: Path | None = None) -> bool:
    pkg = _pkg(pkg)
    marker = unpacked_root(pkg, cache) / _MARKER
    if not marker.is_file():
        return False
    try:
        meta = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    return meta.get("version") == pkg.version and meta.get("sha256") == pkg.sha256


def unpack_deb(pkg: str | DebPackage, deb: Path, cache: Path | None = None, *, progress: bool = True) -> Path:
    """``dpkg-deb -x`` the verified ``deb`` into :func:`unpacked_root` (nothing is installed)."""
    pkg = _pkg(pkg)
    root = unpacked_root(pkg, cache)
    if is_unpacked(pkg, cache):
        return root
    dpkg_deb = shutil.which("dpkg-deb")
    if dpkg_deb is None:
        raise FetchError(
            f"{pkg.spec}: `dpkg-deb` is not available to unpack {deb}. Fix: install Debian's "
            f"`dpkg` package (present on every Debian/Ubuntu system), or unpack the .deb by hand "
            f"(`ar x` then `tar -xf data.tar.*`) into {root} and write {root / _MARKER}."
        )
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{pkg.name}-", dir=root.parent))
    try:
        bar = _bar(progress, total=pkg.installed_kib * 1024, desc=f"unpack {pkg.name}", unit="B")
        proc = subprocess.Popen(
            [dpkg_deb, "-x", str(deb), str(staging)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        _, err = _poll_progress(proc, bar, lambda: _tree_bytes(staging))
        bar.close()
        if proc.returncode != 0:
            raise FetchError(f"{pkg.spec}: `dpkg-deb -x {deb}` failed (exit {proc.returncode}): {err.strip()[-600:]}")
        (staging / _MARKER).write_text(
            json.dumps({"name": pkg.name, "version": pkg.version, "sha256": pkg.sha256}, indent=1)
        )
        if root.exists():
            shutil.rmtree(root)
        os.replace(staging, root)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return root


def fetch(
    names: Iterable[str] | None = None,
    cache: Path | None = None,
    *,
    progress: bool = True,
    keep_debs: bool = True,
) -> dict[str, Path]:
    """Download, verify and unpack the pinned packages (all by default); name → unpacked root.

    Already unpacked packages (marker with the pinned hash) are not touched again.
    ``keep_debs=False`` deletes each ``.deb`` after unpacking it.
    """
    out: dict[str, Path] = {}
    for name in (list(names) if names is not None else list(PACKAGES)):
        pkg = _pkg(name)
        if is_unpacked(pkg, cache):
            out[pkg.name] = unpacked_root(pkg, cache)
            continue
        deb = download_deb(pkg, cache, progress=progress)
        out[pkg.name] = unpack_deb(pkg, deb, cache, progress=progress)
        if not keep_debs:
            deb.unlink(missing_ok=True)
    return out


def require_unpacked(name: str, cache: Path | None = None) -> Path:
    """The unpacked root of ``name``, or :class:`PackageMissingError` saying how to fetch it."""
    pkg = _pkg(name)
    if not is_unpacked(pkg, cache):
        raise PackageMissingError(
            f"{pkg.spec} is not in the cache ({unpacked_root(pkg, cache)}). Fix: run "
            f"`python -m training.data.avpairs_cli fetch` (downloads {pkg.size / 1e6:.0f} MB with "
            f"apt-get, checks SHA-256 {pkg.sha256[:12]}…, unpacks without installing)."
        )
    return unpacked_root(pkg, cache)


# --------------------------------------------------------------------------------------------
# build-time tools


def tool_status() -> dict[str, str | None]:
    """Path (or None) of each build-time tool: apt-get, dpkg-deb, fluidsynth, rsvg-convert."""
    return {t: shutil.which(t) for t in ("apt-get", "dpkg-deb", "fluidsynth", "rsvg-convert")}


def _bar(enabled: bool, **kw):
    if enabled:
        try:
            from tqdm import tqdm

            kw.setdefault("unit_scale", True)
            kw.setdefault("leave", True)
            kw.setdefault("dynamic_ncols", True)
            return tqdm(**kw)
        except ImportError:  # tqdm is in the [train] extra; run without bars otherwise
            pass
    return _NullBar(kw.get("total"))


class _NullBar:
    def __init__(self, total=None) -> None:
        self.total = total

    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass
