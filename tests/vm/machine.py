"""Boot the test VM, run one command inside it, power it off.

The guest is Debian's stock kernel in QEMU (microvm) with the host's root filesystem as
its own: shared read-only over 9p, writable in the guest through a tmpfs overlay whose
changes vanish at power-off. So the host's programs, the project and its ``.venv`` run
inside unchanged, with ``vcan0`` up and the kernel's CAN modules loaded. The guest has
no network device: loopback only.

The command's stdout and stderr travel over two virtio-serial ports into pipes read
here; its exit status comes back in a file of the control share (a per-run temporary
directory). Interactive use (``tty=True``) puts the command on the serial console,
wired to this process's terminal.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Final, Literal

from tests.vm.image import VmImage

QEMU: Final = "qemu-system-x86_64"
#: Exit status when the guest never reported one (it hung, crashed or was killed).
NO_STATUS: Final = 125
Accel = Literal["kvm", "tcg"]
_ENV_DROPPED: Final = frozenset({"_", "PWD", "OLDPWD", "SHLVL", "TERMCAP", "COLUMNS", "LINES"})


def accelerator() -> Accel | None:
    """KVM where it can boot a stock kernel, else QEMU's emulation; ``None`` without QEMU.

    ``TOUCHPOINT_VM_ACCEL=kvm|tcg`` forces one. A PVM host's /dev/kvm (``kvm_pvm``, a
    nested sandbox) runs only PVM guest kernels, so there it is emulation.
    """
    if shutil.which(QEMU) is None:
        return None
    forced = os.environ.get("TOUCHPOINT_VM_ACCEL")
    if forced in ("kvm", "tcg"):
        return forced  # type: ignore[return-value]
    kvm_usable = os.access("/dev/kvm", os.R_OK | os.W_OK)
    return "kvm" if kvm_usable and not Path("/sys/module/kvm_pvm").exists() else "tcg"


@dataclass
class RunResult:
    """What a run inside the guest gave."""

    returncode: int
    #: Seconds from launching QEMU to the guest starting the command, if it got that far.
    boot_s: float | None
    total_s: float
    #: The tail of the guest's serial console when it did not report an exit status.
    console_tail: str = ""
    #: QEMU was SIGKILLed on the caller's word (``power_cut``): the guest lost power.
    power_cut: bool = False


@dataclass
class Machine:
    """A recipe for throwaway guests: each :meth:`run` boots a fresh one.

    Attributes:
        image: The kernel and initramfs.
        accel: KVM or emulation.
        cpus: Virtual CPUs.
        memory_mb: Guest memory.
        vcans: How many vcan interfaces (vcan0, vcan1, ...) are up at start.
        writable: Host directories the guest writes through to (the rest is throwaway).
        disks: Raw image files the guest sees as virtio-blk disks (/dev/vda, /dev/vdb...).
        boots: Guests booted so far.
    """

    image: VmImage
    accel: Accel
    cpus: int = 2
    memory_mb: int = 1024
    vcans: int = 1
    writable: Sequence[Path] = ()
    disks: Sequence[Path] = ()
    boots: int = field(default=0, init=False)

    def run(
        self,
        argv: Sequence[str],
        *,
        cwd: Path,
        env: Mapping[str, str] | None = None,
        timeout: float = 600.0,
        stdout: BinaryIO | None = None,
        stderr: BinaryIO | None = None,
        tty: bool = False,
        stdin: bytes | None = None,
        power_cut: Callable[[], bool] | None = None,
    ) -> RunResult:
        """Boot a guest, run ``argv`` in ``cwd`` with ``env``, power it off.

        Args:
            argv: The command (a program on the host's PATH, or a path).
            cwd: Where it runs (a host path: the guest sees the host's tree).
            env: Its environment (default: this process's).
            timeout: Seconds before QEMU is killed.
            stdout: Receives the command's stdout (default: this process's).
            stderr: Receives its stderr (default: this process's).
            tty: Wire the command to this terminal (interactive) instead of pipes.
            stdin: The command's standard input (default: none, /dev/null).
            power_cut: Asked every 10 ms while the guest runs; once it answers True, QEMU
                is SIGKILLed: the guest's power is cut (its page cache and the disk
                writes QEMU had not issued are lost; what QEMU wrote to the image file
                stays, as on a disk without a volatile cache).

        Returns:
            The command's exit status (:data:`NO_STATUS` if the guest gave none) and timings.
        """
        self.boots += 1
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="touchpoint-vm.") as tmp:
            ctl = Path(tmp)
            (ctl / "cmd").write_text(_script(argv, cwd, env, stdin is not None), encoding="utf-8")
            if stdin is not None:
                (ctl / "stdin").write_bytes(stdin)
            shares = [Path(p).resolve() for p in self.writable]
            (ctl / "mounts").write_text(
                "".join(f"rw{i} {p}\n" for i, p in enumerate(shares)), encoding="utf-8"
            )
            qemu = [*self._qemu_argv(ctl, shares, tty)]
            launched = time.time()
            if tty:
                proc = subprocess.Popen(qemu)
                cut = _wait(proc, timeout, power_cut)
            else:
                out_r, out_w = os.pipe()
                err_r, err_w = os.pipe()
                qemu += [
                    "-chardev", f"file,id=out,path=/proc/self/fd/{out_w}",
                    "-device", "virtserialport,chardev=out,name=out",
                    "-chardev", f"file,id=err,path=/proc/self/fd/{err_w}",
                    "-device", "virtserialport,chardev=err,name=err",
                ]  # fmt: skip
                relays = [
                    _relay(out_r, stdout or sys.stdout.buffer),
                    _relay(err_r, stderr or sys.stderr.buffer),
                ]
                proc = subprocess.Popen(qemu, stdin=subprocess.DEVNULL, pass_fds=(out_w, err_w))
                os.close(out_w)
                os.close(err_w)
                cut = _wait(proc, timeout, power_cut)
                for relay in relays:
                    relay.join()
            marker = ctl / "started"
            boot_s = marker.stat().st_mtime - launched if marker.exists() else None
            rc_file = ctl / "rc"
            rc_text = rc_file.read_text(encoding="utf-8").strip() if rc_file.exists() else ""
            console = ctl / "console.log"
            tail = ""
            if not rc_text and console.exists():
                lines = console.read_text(encoding="utf-8", errors="replace").splitlines()
                tail = "\n".join(lines[-30:])
        return RunResult(
            returncode=int(rc_text) if rc_text.isdigit() else NO_STATUS,
            boot_s=boot_s,
            total_s=time.monotonic() - started,
            console_tail=tail,
            power_cut=cut,
        )

    def _qemu_argv(self, ctl: Path, shares: Sequence[Path], tty: bool) -> list[str]:
        kernel_args = ["console=ttyS0", "panic=-1", f"TP_NVCAN={self.vcans}"]
        kernel_args += ["TP_TTY=1", "quiet", "loglevel=0"] if tty else ["quiet", "loglevel=1"]
        if self.accel == "kvm":
            accel = ["-accel", "kvm", "-cpu", "host"]
        else:
            # Emulation: a translation cache of 256 MiB rather than 1 GiB halves QEMU's
            # memory. The guest's rdtsc reads the host's TSC, and its PIT calibration under
            # emulation sometimes fails and hangs the boot: tell it the frequency instead.
            accel = ["-accel", "tcg,thread=multi,tb-size=256", "-cpu", "max"]
            kernel_args += [f"tsc_early_khz={_host_tsc_khz()}", "tsc=reliable"]
        serial = (
            ["-chardev", "stdio,id=con,signal=off", "-serial", "chardev:con"]
            if tty
            else ["-serial", f"file:{ctl / 'console.log'}"]
        )
        fs = [
            "-fsdev", "local,id=root,path=/,security_model=none,readonly=on,multidevs=remap",
            "-device", "virtio-9p-device,fsdev=root,mount_tag=hostroot",
            "-fsdev", f"local,id=ctl,path={ctl},security_model=none,multidevs=remap",
            "-device", "virtio-9p-device,fsdev=ctl,mount_tag=ctl",
        ]  # fmt: skip
        for i, disk in enumerate(self.disks):
            # The guest's flushes (fsync) reach the image file with fdatasync.
            fs += [
                "-drive", f"file={disk},format=raw,if=none,id=disk{i},cache=writeback",
                "-device", f"virtio-blk-device,drive=disk{i}",
            ]  # fmt: skip
        for i, path in enumerate(shares):
            fs += [
                "-fsdev", f"local,id=rw{i},path={path},security_model=none,multidevs=remap",
                "-device", f"virtio-9p-device,fsdev=rw{i},mount_tag=rw{i}",
            ]  # fmt: skip
        return [
            QEMU, "-M", "microvm", *accel,
            "-m", str(self.memory_mb), "-smp", str(self.cpus),
            "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
            "-kernel", str(self.image.kernel), "-initrd", str(self.image.initrd),
            "-append", " ".join(kernel_args),
            *serial, "-device", "virtio-serial-device", *fs,
        ]  # fmt: skip


def _script(argv: Sequence[str], cwd: Path, env: Mapping[str, str] | None, has_stdin: bool) -> str:
    environ = dict(os.environ if env is None else env)
    environ["TOUCHPOINT_IN_VM"] = "1"
    lines = [
        f"export {name}={shlex.quote(value)}"
        for name, value in sorted(environ.items())
        if name.isidentifier() and name not in _ENV_DROPPED
    ]
    lines.append(f"cd -- {shlex.quote(str(cwd))} || exit 126")
    lines.append("exec " + shlex.join(argv) + (" < /run/vm-ctl/stdin" if has_stdin else ""))
    return "\n".join(lines) + "\n"


def _relay(fd: int, sink: BinaryIO) -> threading.Thread:
    def copy() -> None:
        with os.fdopen(fd, "rb", buffering=0) as source:
            while chunk := source.read(65536):
                sink.write(chunk)
                sink.flush()

    thread = threading.Thread(target=copy, name="vm-relay", daemon=True)
    thread.start()
    return thread


def _wait(
    proc: subprocess.Popen[bytes], timeout: float, power_cut: Callable[[], bool] | None = None
) -> bool:
    """Wait for QEMU to end; True if ``power_cut`` had it SIGKILLed."""
    deadline = time.monotonic() + timeout
    try:
        while power_cut is not None and proc.poll() is None and time.monotonic() < deadline:
            if power_cut():
                proc.kill()
                proc.wait()
                return True
            time.sleep(0.01)
        proc.wait(max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return False


def _host_tsc_khz() -> int:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("cpu MHz"):
                return int(float(line.split(":")[1]) * 1000)
    except (OSError, ValueError, IndexError):
        pass
    return 2_000_000
