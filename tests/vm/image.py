"""The test VM's kernel and initramfs, prepared once from Debian's packages and cached.

Debian's stock kernel has everything the SocketCAN suite needs (vcan, CAN_RAW, CAN_BCM,
CAN_ISOTP, can-gw, netem) as modules. Its package is downloaded and unpacked, never
installed: the host's /boot and /lib/modules stay as they are. The initramfs is busybox
(busybox-static) with the few modules the guest loads and :file:`init.sh` as its PID 1.

The cache (``~/.cache/touchpoint-vm``, or ``TOUCHPOINT_VM_CACHE``) keeps per kernel
version the uncompressed ``vmlinux`` (booted through its PVH entry: the bzImage's XZ
decompressor costs seconds under emulation), the modules and the initramfs, which is
rebuilt whenever :file:`init.sh` or :file:`modules.txt` changes.
"""

from __future__ import annotations

import gzip
import hashlib
import lzma
import os
import platform
import shutil
import stat
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Final

HERE: Final = Path(__file__).resolve().parent
INIT_SCRIPT: Final = HERE / "init.sh"
MODULE_LIST: Final = HERE / "modules.txt"
#: The package that depends on the current Debian kernel image.
KERNEL_META_PACKAGE: Final = "linux-image-amd64"
#: The programs preparing and booting the VM need, and the Debian package of each.
HOST_TOOLS: Final = {
    "qemu-system-x86_64": "qemu-system-x86",
    "busybox": "busybox-static",
    "dpkg-deb": "dpkg",
    "apt-get": "apt",
}
_XZ_MAGIC: Final = b"\xfd7zXZ\x00"


class PrepareError(Exception):
    """Something the VM needs cannot be had; the message says what and how to get it."""


@dataclass(frozen=True)
class VmImage:
    """A prepared kernel and initramfs."""

    kernel: Path
    initrd: Path
    version: str


def cache_dir() -> Path:
    """Where the prepared VM lives: ``TOUCHPOINT_VM_CACHE`` or ``~/.cache/touchpoint-vm``."""
    override = os.environ.get("TOUCHPOINT_VM_CACHE")
    if override:
        return Path(override).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "touchpoint-vm"


def missing_tools() -> dict[str, str]:
    """The host programs that are not installed, each with its Debian package."""
    return {tool: pkg for tool, pkg in HOST_TOOLS.items() if shutil.which(tool) is None}


def _busybox() -> Path:
    # The initramfs has no libc: only a static busybox runs there.
    for candidate in ("/bin/busybox", "/usr/bin/busybox"):
        path = Path(candidate)
        if path.is_file() and b"ld-linux" not in path.read_bytes()[:8192]:
            return path
    raise PrepareError("no static busybox for the VM's initramfs: apt-get install busybox-static")


def _wanted_modules() -> list[str]:
    lines = MODULE_LIST.read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def _initrd_recipe() -> str:
    digest = hashlib.sha256(INIT_SCRIPT.read_bytes() + MODULE_LIST.read_bytes())
    return digest.hexdigest()[:16]


def find_image() -> VmImage | None:
    """The prepared image in the cache, if it is complete and its initramfs is current."""
    root = cache_dir()
    current = root / "current"
    if not current.is_file():
        return None
    version = current.read_text(encoding="utf-8").strip()
    kdir = root / version
    kernel, initrd = kdir / "vmlinux", kdir / f"initrd-{_initrd_recipe()}.cpio.gz"
    if not (kernel.is_file() and initrd.is_file()):
        return None
    return VmImage(kernel=kernel, initrd=initrd, version=version)


def prepare(log: list[str] | None = None) -> VmImage:
    """Make sure the cache holds a bootable image; download and build what is missing.

    Args:
        log: Receives a line per step taken (for the caller to print).

    Raises:
        PrepareError: A tool, the kernel package or the network is missing.
    """
    steps = log if log is not None else []
    if platform.machine() != "x86_64":
        raise PrepareError(
            f"the test VM runs x86_64 guests only; this host is {platform.machine()}"
        )
    missing = missing_tools()
    if missing:
        pkgs = " ".join(sorted(set(missing.values())))
        raise PrepareError(
            f"missing {', '.join(sorted(missing))}: as root, apt-get install {pkgs} "
            "(make vcan-prepare does it when run as root)"
        )
    root = cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    image = find_image()
    if image is not None:
        return image
    current = root / "current"
    version = current.read_text(encoding="utf-8").strip() if current.is_file() else ""
    kdir = root / version if version else None
    if kdir is None or not (kdir / "vmlinux").is_file() or _modules_missing(kdir):
        version = _fetch_kernel(root, steps)
        kdir = root / version
    initrd = kdir / f"initrd-{_initrd_recipe()}.cpio.gz"
    _build_initrd(kdir, initrd)
    steps.append(f"built {initrd}")
    for old in kdir.glob("initrd-*.cpio.gz"):
        if old != initrd:
            old.unlink()
    current.write_text(version + "\n", encoding="utf-8")
    return VmImage(kernel=kdir / "vmlinux", initrd=initrd, version=version)


def _modules_missing(kdir: Path) -> bool:
    """Whether the cache lacks a module the list wants (the list grew since it was made)."""
    return any(not (kdir / "modules" / f"{m}.ko").is_file() for m in _wanted_modules())


def _run(argv: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False)


def _kernel_package() -> str:
    out = _run(["apt-cache", "depends", KERNEL_META_PACKAGE])
    for line in out.stdout.splitlines():
        name = line.strip().removeprefix("Depends:").strip()
        if line.strip().startswith("Depends:") and name.startswith("linux-image-"):
            return name
    raise PrepareError(
        f"apt knows no {KERNEL_META_PACKAGE} (is this Debian with its main archive in "
        f"sources.list? try apt-get update): {out.stderr.strip()}"
    )


def _download(package: str, into: Path, steps: list[str]) -> Path:
    steps.append(f"downloading {package} (Debian's kernel; unpacked, never installed)")
    out = _run(["apt-get", "download", "-q", package], cwd=into)
    if out.returncode != 0 and os.geteuid() == 0:
        # A stale package index names a file the mirror no longer has.
        steps.append("apt-get update (the package index was stale)")
        _run(["apt-get", "update", "-q"])
        out = _run(["apt-get", "download", "-q", package], cwd=into)
    debs = sorted(into.glob(f"{package}_*.deb"))
    if out.returncode != 0 or not debs:
        raise PrepareError(
            f"cannot download {package} from the Debian mirror: "
            f"{out.stderr.strip() or out.stdout.strip()}"
        )
    return debs[0]


def _fetch_kernel(root: Path, steps: list[str]) -> str:
    package = _kernel_package()
    with tempfile.TemporaryDirectory(dir=root, prefix="download.") as tmp:
        work = Path(tmp)
        deb = _download(package, work, steps)
        unpacked = work / "unpacked"
        out = _run(["dpkg-deb", "-x", str(deb), str(unpacked)])
        if out.returncode != 0:
            raise PrepareError(f"cannot unpack {deb.name}: {out.stderr.strip()}")
        versions = sorted(p.name for p in (unpacked / "lib" / "modules").iterdir())
        if not versions:
            raise PrepareError(f"{deb.name} has no kernel modules")
        version = versions[0]
        kdir = root / version
        shutil.rmtree(kdir, ignore_errors=True)
        (kdir / "modules").mkdir(parents=True)
        _extract_vmlinux(unpacked / "boot" / f"vmlinuz-{version}", kdir / "vmlinux")
        tree = unpacked / "lib" / "modules" / version
        found = {p.name.removesuffix(".ko"): p for p in tree.rglob("*.ko")}
        absent = [m for m in _wanted_modules() if m not in found]
        if absent:
            raise PrepareError(f"{deb.name} lacks the modules {', '.join(absent)}")
        for name, path in found.items():
            if name in _wanted_modules():
                shutil.copy2(path, kdir / "modules" / path.name)
        steps.append(f"kernel {version}: vmlinux and {len(_wanted_modules())} modules cached")
    return version


def _extract_vmlinux(vmlinuz: Path, target: Path) -> None:
    """The ELF kernel inside the bzImage (an XZ stream after the decompressor stub)."""
    blob = vmlinuz.read_bytes()
    start = blob.find(_XZ_MAGIC)
    if start < 0:
        raise PrepareError(f"{vmlinuz.name} is not an XZ-compressed bzImage")
    elf = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(blob[start:])
    if not elf.startswith(b"\x7fELF"):
        raise PrepareError(f"{vmlinuz.name} does not hold an ELF vmlinux")
    target.write_bytes(elf)


def _build_initrd(kdir: Path, target: Path) -> None:
    """A newc cpio archive, gzip-compressed, written by hand: no cpio tool needed."""
    version = kdir.name
    entries: list[tuple[str, int, bytes]] = [
        (d, stat.S_IFDIR | 0o755, b"")
        for d in ("bin", "dev", "proc", "sys", "lib", "lib/modules", f"lib/modules/{version}")
    ]
    entries.append(("bin/busybox", stat.S_IFREG | 0o755, _busybox().read_bytes()))
    entries.append(("init", stat.S_IFREG | 0o755, INIT_SCRIPT.read_bytes()))
    entries.append(("modules.txt", stat.S_IFREG | 0o644, MODULE_LIST.read_bytes()))
    entries += [
        (f"lib/modules/{version}/{m}.ko", stat.S_IFREG | 0o644,
         (kdir / "modules" / f"{m}.ko").read_bytes())
        for m in _wanted_modules()
    ]  # fmt: skip
    entries.append(("dev/console", stat.S_IFCHR | 0o600, b""))
    partial = target.with_suffix(".partial")
    with gzip.open(partial, "wb", compresslevel=1) as out:
        for ino, (name, mode, data) in enumerate(entries, start=1):
            out.write(_cpio_entry(ino, name, mode, data))
        out.write(_cpio_entry(0, "TRAILER!!!", 0, b""))
    partial.replace(target)


def _cpio_entry(ino: int, name: str, mode: int, data: bytes) -> bytes:
    raw_name = name.encode() + b"\0"
    rdev = (5, 1) if stat.S_ISCHR(mode) else (0, 0)  # /dev/console: char 5:1
    fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(raw_name), 0)
    header = b"070701" + b"".join(f"{f:08X}".encode() for f in fields)
    pad_name = b"\0" * (-(len(header) + len(raw_name)) % 4)
    return header + raw_name + pad_name + data + b"\0" * (-len(data) % 4)
