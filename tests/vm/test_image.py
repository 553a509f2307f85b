"""The VM image's cache and initramfs, checked on the host (no guest booted)."""

from __future__ import annotations

import gzip
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.vm import image


def test_the_cache_lives_where_touchpoint_vm_cache_says(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("TOUCHPOINT_VM_CACHE", str(tmp_path / "vm"))
    assert image.cache_dir() == tmp_path / "vm"
    assert image.find_image() is None  # nothing prepared there
    monkeypatch.delenv("TOUCHPOINT_VM_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert image.cache_dir() == tmp_path / ".cache" / "touchpoint-vm"


def test_the_initramfs_is_a_newc_archive_with_init_busybox_and_the_modules(
    tmp_path: Path,
) -> None:
    if shutil.which("busybox") is None:
        pytest.skip("no busybox to list the archive with")
    kdir = tmp_path / "6.1.0-test-amd64"
    (kdir / "modules").mkdir(parents=True)
    wanted = image._wanted_modules()
    for name in wanted:
        (kdir / "modules" / f"{name}.ko").write_bytes(name.encode() * 3)
    target = kdir / "initrd.cpio.gz"
    image._build_initrd(kdir, target)
    listing = subprocess.run(
        ["busybox", "cpio", "-t"], input=gzip.decompress(target.read_bytes()),
        capture_output=True, check=True,
    ).stdout.decode().split()  # fmt: skip
    assert {"init", "bin/busybox", "modules.txt", "dev/console"} <= set(listing)
    assert {f"lib/modules/6.1.0-test-amd64/{m}.ko" for m in wanted} <= set(listing)
    assert {"can-isotp", "vcan", "9p", "overlay"} <= set(wanted)


def test_a_changed_init_script_means_a_new_initramfs(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    script = tmp_path / "init.sh"
    script.write_text("#!/bin/busybox sh\n")
    monkeypatch.setattr(image, "INIT_SCRIPT", script)
    before = image._initrd_recipe()
    script.write_text("#!/bin/busybox sh\necho changed\n")
    assert image._initrd_recipe() != before


def test_a_cache_made_before_the_module_list_grew_is_made_again(tmp_path: Path) -> None:
    kdir = tmp_path / "6.1.0-test-amd64"
    (kdir / "modules").mkdir(parents=True)
    wanted = image._wanted_modules()
    for name in wanted[:-1]:
        (kdir / "modules" / f"{name}.ko").write_bytes(b"ko")
    assert image._modules_missing(kdir)
    (kdir / "modules" / f"{wanted[-1]}.ko").write_bytes(b"ko")
    assert not image._modules_missing(kdir)
    assert {"sch_netem", "sch_prio", "cls_u32", "virtio_blk", "ext4"} <= set(wanted)
