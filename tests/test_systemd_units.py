"""The systemd packaging in ``systemd/``: the unit loads, its sandbox scores, the accounts exist.

- ``systemd-analyze verify`` on the unit. The unit runs ``/usr/bin/touchpoint``, which a
  development checkout does not have (verify refuses a command that is not there), so
  the copy verified here runs this virtualenv's ``touchpoint`` instead; every other
  line is the file's own. The unchanged file is verified too, to show that the missing
  command is its only complaint.
- ``systemd-analyze security --offline=yes``: the exposure score stays below 2.0, and
  the checks it fails are the ones docs/systemd.md explains.
- ``systemd-sysusers`` creates the accounts in an empty root directory, and the users
  and groups the D-Bus policy names are among them.
- MemoryDenyWriteExecute=: the daemon serves (READY=1) under the seccomp rule systemd
  installs for it, rebuilt here, so a dependency that starts to need writable and
  executable memory fails this test rather than the car.

The systemd tools come with Debian's ``systemd`` package (``make deb-deps``); the tests
that need them skip, saying so, when they are missing.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import pytest

from agent.settings import DEFAULT_STATE_DIR, StoreSettings
from ui_bridge.reference.private_bus import private_bus

REPO_ROOT: Final = Path(__file__).resolve().parent.parent
SYSTEMD_DIR: Final = REPO_ROOT / "systemd"
UNIT: Final = SYSTEMD_DIR / "touchpoint.service"
SYSUSERS: Final = SYSTEMD_DIR / "touchpoint.sysusers"
BUS_POLICY: Final = SYSTEMD_DIR / "org.touchpoint.Agent1.conf"
INSTALLED_COMMAND: Final = "/usr/bin/touchpoint"

#: The exposure `systemd-analyze security` must stay below (0 = fully locked down, 10 = not).
MAX_EXPOSURE: Final = 2.0
#: The checks the unit fails on purpose, each explained in docs/systemd.md.
ACCEPTED_FAILURES: Final = frozenset(
    {
        "RootDirectory=/RootImage=",  # the agent runs from the host's /usr
        "PrivateNetwork=",  # CAN interfaces and the MQTT broker are on the host's network
        "IPAddressDeny=",  # the broker's addresses are not known in advance
        "DeviceAllow=",  # char-rtc:r, which ProtectClock= itself adds
        "RestrictAddressFamilies=~AF_(INET|INET6)",  # MQTT
        "RestrictAddressFamilies=~AF_UNIX",  # D-Bus, sd_notify, the journal
        "RestrictAddressFamilies=~AF_NETLINK",  # glibc's getaddrinfo
        "RestrictAddressFamilies=~…",  # AF_CAN counts as exotic
    }
)


def _tool(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/bin:/bin")
    if path is None:
        pytest.skip(f"{name} is not installed (Debian package: systemd; `make deb-deps`)")
    return path


@pytest.fixture(scope="module")
def analyze() -> str:
    """The ``systemd-analyze`` binary; skips when it is missing."""
    return _tool("systemd-analyze")


def _run(argv: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    # No colour, no pager, English messages: the output is parsed.
    env = {**os.environ, "SYSTEMD_COLORS": "0", "SYSTEMD_PAGER": "", "LC_ALL": "C.UTF-8"}
    return subprocess.run(
        argv, capture_output=True, text=True, env=env, cwd=cwd, timeout=120, check=False
    )


# -- the unit file -------------------------------------------------------------------------


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """Sections -> keys -> every value in order (a unit may repeat a key; empty resets)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        assert not line.endswith("\\"), f"continuation lines are not parsed here: {line}"
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"a setting outside any section: {line}"
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


@pytest.fixture(scope="module")
def unit() -> dict[str, dict[str, list[str]]]:
    """The unit file, parsed."""
    return parse_unit(UNIT.read_text(encoding="utf-8"))


def _console_script() -> Path:
    """The ``touchpoint`` command this test session's interpreter installed."""
    found = shutil.which("touchpoint", path=str(Path(sys.executable).parent))
    assert found is not None, f"no touchpoint command beside {sys.executable} (pip install -e .)"
    return Path(found).absolute()


@pytest.fixture
def runnable_unit(tmp_path: Path) -> Path:
    """A copy of the unit, with the same name, running the installed ``touchpoint``."""
    text = UNIT.read_text(encoding="utf-8")
    prefix = f"ExecStart={INSTALLED_COMMAND} "
    assert text.count(prefix) == 1, f"expected one {prefix!r} line"
    copy = tmp_path / UNIT.name
    copy.write_text(text.replace(prefix, f"ExecStart={_console_script()} "), encoding="utf-8")
    return copy


def _about(output: str, unit_path: Path) -> list[str]:
    """The lines of verify's output that concern this unit (not the host's units)."""
    return [line for line in output.splitlines() if unit_path.name in line or "touchpoint" in line]


def test_the_unit_verifies(analyze: str, runnable_unit: Path) -> None:
    """Loads with no error and no warning: syntax, dependencies, the command."""
    result = _run([analyze, "verify", "--man=no", str(runnable_unit)], cwd=runnable_unit.parent)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert _about(output, runnable_unit) == [], output


def test_the_installed_command_is_the_only_complaint(analyze: str, tmp_path: Path) -> None:
    """The unchanged file, where ``/usr/bin/touchpoint`` is not installed: nothing else."""
    copy = tmp_path / UNIT.name
    shutil.copyfile(UNIT, copy)
    result = _run([analyze, "verify", "--man=no", str(copy)], cwd=tmp_path)
    complaints = _about(result.stdout + result.stderr, copy)
    if Path(INSTALLED_COMMAND).exists():  # installed from a package: the file itself verifies
        assert result.returncode == 0, complaints
        assert complaints == []
    else:
        assert len(complaints) == 1, complaints
        assert f"Command {INSTALLED_COMMAND} is not executable" in complaints[0]


def test_the_sandbox_exposure_is_below_two(analyze: str, runnable_unit: Path) -> None:
    """`systemd-analyze security` scores the unit file offline, as it would the service."""
    result = _run(
        [analyze, "security", "--offline=yes", "--no-pager", str(runnable_unit)],
        cwd=runnable_unit.parent,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    found = re.search(rf"Overall exposure level for {UNIT.name}: (\d+\.\d+)", output)
    assert found is not None, output
    assert float(found.group(1)) < MAX_EXPOSURE, output
    failed = {line.split()[1] for line in output.splitlines() if line.startswith("✗")}
    assert failed, output  # the table was parsed
    new = failed - ACCEPTED_FAILURES
    assert not new, f"exposures docs/systemd.md does not explain: {sorted(new)}\n{output}"


def test_the_unit_matches_the_daemon(unit: dict[str, dict[str, list[str]]]) -> None:
    """The directories, the command and the watchdog are the ones the code expects."""
    service = unit["Service"]
    assert service["Type"] == ["notify"]
    assert service["NotifyAccess"] == ["main"]
    assert "DynamicUser" not in service  # a dynamic user could not own the D-Bus name
    assert service["WatchdogSec"] != ["0"]
    # The store's default path is in the state directory, the only writable place.
    assert service["ProtectSystem"] == ["strict"]
    assert service["StateDirectory"] == [DEFAULT_STATE_DIR.name]
    assert DEFAULT_STATE_DIR.parent == Path("/var/lib")
    assert StoreSettings().path.parent == DEFAULT_STATE_DIR
    # The command reads its file from the configuration directory.
    [command] = service["ExecStart"]
    argv = command.split()
    assert argv[:2] == [INSTALLED_COMMAND, "run"]
    config = Path(argv[argv.index("--config") + 1])
    assert config.parent == Path("/etc") / service["ConfigurationDirectory"][0]
    # Exit status 2 (settings it cannot run with) is not restarted.
    assert service["Restart"] == ["on-failure"]
    assert "2" in service["RestartPreventExitStatus"][0].split()
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


# -- the accounts --------------------------------------------------------------------------


@dataclass(frozen=True)
class Accounts:
    """The users and groups a sysusers.d file declares."""

    users: frozenset[str]
    groups: frozenset[str]


def parse_sysusers(text: str) -> Accounts:
    """``u NAME`` makes a user and its group, ``g NAME`` a group (sysusers.d(5))."""
    users: set[str] = set()
    groups: set[str] = set()
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        kind, name = line.split()[:2]
        if kind == "u":
            users.add(name)
            groups.add(name)
        elif kind == "g":
            groups.add(name)
        else:
            assert kind == "m", f"unexpected line: {line}"
    return Accounts(frozenset(users), frozenset(groups))


def test_the_bus_policy_names_accounts_the_package_creates(
    unit: dict[str, dict[str, list[str]]],
) -> None:
    """A policy for a user or group the bus cannot resolve is dropped: both must exist."""
    accounts = parse_sysusers(SYSUSERS.read_text(encoding="utf-8"))
    policies = ET.parse(BUS_POLICY).getroot().findall("policy")
    policy_users = {p.get("user") for p in policies} - {None}
    policy_groups = {p.get("group") for p in policies} - {None}
    assert policy_users == {"touchpoint"}
    assert policy_groups == {"hmi", "touchpoint-settings"}
    assert policy_users <= accounts.users
    assert policy_groups <= accounts.groups
    assert unit["Service"]["User"] == ["touchpoint"]
    assert unit["Service"]["Group"] == ["touchpoint"]
    assert {"touchpoint"} <= accounts.users


def _table(path: Path) -> dict[str, list[str]]:
    """``/etc/passwd`` or ``/etc/group``: name -> the other fields."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return {fields[0]: fields[1:] for fields in (line.split(":") for line in lines if line)}


def test_systemd_sysusers_creates_the_accounts(tmp_path: Path) -> None:
    """The file as systemd-sysusers reads it, applied to an empty root directory."""
    sysusers = _tool("systemd-sysusers")
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    dry = _run([sysusers, "--dry-run", f"--root={root}", str(SYSUSERS)])
    assert dry.returncode == 0, dry.stderr
    assert not (root / "etc" / "passwd").exists()
    result = _run([sysusers, f"--root={root}", str(SYSUSERS)])
    assert result.returncode == 0, result.stderr
    passwd = _table(root / "etc" / "passwd")
    group = _table(root / "etc" / "group")
    assert set(passwd) == {"touchpoint"}
    assert set(group) == {"touchpoint", "hmi", "touchpoint-settings"}
    _, uid, gid, _, home, shell = passwd["touchpoint"]
    assert gid == group["touchpoint"][1]  # its own group is its primary group
    assert int(uid) < 1000  # a system user, IDs from the system range
    assert shell.endswith("nologin")
    assert home == "/"
    assert all(fields[-1] == "" for fields in group.values())  # no members added here


# -- MemoryDenyWriteExecute= ---------------------------------------------------------------

#: Per machine: the audit architecture, and the numbers of mmap, mprotect,
#: pkey_mprotect and shmat.
_SYSCALLS: Final = {
    "x86_64": (0xC000003E, 9, 10, 329, 30),
    "aarch64": (0xC00000B7, 222, 226, 288, 196),
}
_PROT_WRITE: Final = 0x2
_PROT_EXEC: Final = 0x4
_SHM_EXEC: Final = 0o100000
_EPERM: Final = 1


def mdwe_filter(machine: str) -> bytes:
    """systemd's MemoryDenyWriteExecute= rule (seccomp-util.c), as a classic BPF program.

    EPERM for mmap with PROT_WRITE and PROT_EXEC both, for mprotect and pkey_mprotect
    with PROT_EXEC, and for shmat with SHM_EXEC; everything else, and every call of
    another architecture, is allowed.
    """
    arch, mmap, mprotect, pkey_mprotect, shmat = _SYSCALLS[machine]
    ld_abs, jeq, and_k, ret = 0x20, 0x15, 0x54, 0x06
    allow, deny = 0x7FFF0000, 0x00050000 | _EPERM
    prot = 32  # offsetof(struct seccomp_data, args[2]): its low word on little endian
    program: list[tuple[int, int, int | str, int | str]] = [
        (ld_abs, 4, 0, 0),  # arch
        (jeq, arch, 0, "allow"),
        (ld_abs, 0, 0, 0),  # syscall number
        (jeq, mmap, "wx", 0),
        (jeq, mprotect, "x", 0),
        (jeq, pkey_mprotect, "x", 0),
        (jeq, shmat, "shm", 0),
        (ret, allow, 0, 0),
    ]
    labels: dict[str, int] = {}
    for label, mask in (("wx", _PROT_WRITE | _PROT_EXEC), ("x", _PROT_EXEC), ("shm", _SHM_EXEC)):
        labels[label] = len(program)
        program += [(ld_abs, prot, 0, 0), (and_k, mask, 0, 0), (jeq, mask, "deny", "allow")]
    labels["allow"] = len(program)
    program.append((ret, allow, 0, 0))
    labels["deny"] = len(program)
    program.append((ret, deny, 0, 0))

    def offset(target: int | str, at: int) -> int:
        return target if isinstance(target, int) else labels[target] - at - 1

    return b"".join(
        struct.pack("=HBBI", code, offset(jt, at), offset(jf, at), k)
        for at, (code, k, jt, jf) in enumerate(program)
    )


#: Installs the filter given in hex (after PR_SET_NO_NEW_PRIVS, as systemd does), then
#: executes the rest of the command line; exit status 3: the kernel refused the filter.
_MDWE_WRAPPER: Final = """
import ctypes, os, sys
program = bytes.fromhex(sys.argv[1])
libc = ctypes.CDLL(None, use_errno=True)
libc.prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4
class FProg(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
code = ctypes.create_string_buffer(program, len(program))
fprog = FProg(len(program) // 8, ctypes.addressof(code))
if libc.prctl(38, 1, 0, 0, 0) or libc.prctl(22, 2, ctypes.addressof(fprog), 0, 0):
    print("seccomp:", os.strerror(ctypes.get_errno()), file=sys.stderr)
    sys.exit(3)
os.execv(sys.argv[2], sys.argv[2:])
"""


@pytest.fixture(scope="module")
def under_mdwe() -> list[str]:
    """The command prefix that runs a command under the rule; skips where it cannot."""
    machine = platform.machine()
    if sys.platform != "linux" or machine not in _SYSCALLS:
        pytest.skip(f"the seccomp rule is written out for x86_64 and aarch64, not {machine}")
    prefix = [sys.executable, "-c", _MDWE_WRAPPER, mdwe_filter(machine).hex()]
    # The control: a writable and executable mapping must be refused under the rule.
    probe = "import mmap; mmap.mmap(-1, 4096, prot=mmap.PROT_WRITE | mmap.PROT_EXEC)"
    result = _run([*prefix, sys.executable, "-c", probe])
    if result.returncode == 3:
        pytest.skip(f"this kernel has no seccomp filters: {result.stderr.strip()}")
    assert result.returncode == 1, result.stderr
    assert "PermissionError: [Errno 1] Operation not permitted" in result.stderr
    return prefix


#: What the cloud link needs that the daemon run below does not load: the MQTT client,
#: Ed25519 (cryptography, Rust and OpenSSL) and a TLS context with a certificate and key.
_CLOUD_PROBE: Final = """
import datetime, ssl, sys, tempfile, pathlib
import cloud_sync.sync, paho.mqtt.client
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
signer = Ed25519PrivateKey.generate()
signer.public_key().verify(signer.sign(b"document"), b"document")
key = ec.generate_private_key(ec.SECP256R1())
name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "veh-0001")])
now = datetime.datetime.now(datetime.timezone.utc)
cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(1).not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
with tempfile.TemporaryDirectory() as directory:
    crt, pem = pathlib.Path(directory, "c.crt"), pathlib.Path(directory, "c.key")
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem.write_bytes(key.private_bytes(serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(crt))
    context.load_cert_chain(str(crt), str(pem))
print("cloud ok")
"""


def test_the_cloud_libraries_work_under_mdwe(under_mdwe: list[str]) -> None:
    """cryptography, OpenSSL and paho need no writable and executable memory."""
    result = _run([*under_mdwe, sys.executable, "-c", _CLOUD_PROBE])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "cloud ok"


@pytest.fixture
def notify_socket() -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket standing in for systemd's, in the abstract namespace."""
    name = f"@touchpoint-mdwe-{os.getpid()}-{time.monotonic_ns()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name[1:])
    sock.settimeout(1.0)
    yield sock, name
    sock.close()


def test_the_daemon_serves_under_mdwe(
    under_mdwe: list[str],
    notify_socket: tuple[socket.socket, str],
    rav4_dir: Path,
    tmp_path: Path,
) -> None:
    """``touchpoint run`` with CAN replay, the store and D-Bus: READY=1, then a clean stop."""
    sock, address = notify_socket
    with private_bus() as bus:
        config = tmp_path / "touchpoint.toml"
        config.write_text(
            f"""
[store]
path = "{tmp_path / "touchpoint.db"}"
[can]
mapping = "{REPO_ROOT / "docs" / "cars" / "rav4_2016" / "mapping.yaml"}"
dbc = [{{file = "{rav4_dir / "toyota_new_mc_pt.dbc"}"}}]
replay = "{rav4_dir / "drive_seg40_excerpt.log"}"
replay_speed = 0
[consent.defaults]
vehicle_health = true
[dbus]
address = "{bus}"
""",
            encoding="utf-8",
        )
        log = tmp_path / "daemon.log"
        env = {**os.environ, "NOTIFY_SOCKET": address, "PYTHONFAULTHANDLER": "1"}
        env.pop("WATCHDOG_USEC", None)
        with log.open("w", encoding="utf-8") as stderr:
            daemon = subprocess.Popen(
                [*under_mdwe, str(_console_script()), "run", "--config", str(config)],
                stdout=stderr, stderr=stderr, env=env,
            )  # fmt: skip
        try:
            ready = _wait_for_ready(sock, daemon, timeout=60.0)
            assert ready, log.read_text(encoding="utf-8")
            daemon.send_signal(signal.SIGTERM)
            assert daemon.wait(timeout=30) == 0, log.read_text(encoding="utf-8")
        finally:
            if daemon.poll() is None:
                daemon.kill()
                daemon.wait()
    text = log.read_text(encoding="utf-8")
    assert "Traceback" not in text, text
    assert "serving org.touchpoint.Agent1" in text, text


def _wait_for_ready(sock: socket.socket, daemon: subprocess.Popen[bytes], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and daemon.poll() is None:
        try:
            fields = sock.recv(4096).decode().split("\n")
        except TimeoutError:
            continue
        if "READY=1" in fields:
            return True
    return False
