"""The whole check-up: the settings as ``touchpoint run`` reads them, then every part."""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from agent.settings import VehicleSettings
from touchpoint.doctor.can_checks import SYSFS_NET, check_can
from touchpoint.doctor.cloud_checks import check_cloud
from touchpoint.doctor.dbus_checks import POLICY_DIRS, check_dbus, check_dbus_limits
from touchpoint.doctor.health_checks import check_health
from touchpoint.doctor.kernel_filter_checks import check_kernel_filter
from touchpoint.doctor.report import Check, fail, guarded, ok, warn
from touchpoint.doctor.store_checks import check_store
from touchpoint.settings import ConfigError, DaemonSettings, load_settings

_FIX_VALUE = "correct the value in the file (or the TOUCHPOINT_* environment variable)"


def diagnose(
    config: Path | None,
    *,
    listen: float = 0.0,
    timeout: float = 3.0,
    sysfs: Path = SYSFS_NET,
    policy_dirs: Sequence[Path] = POLICY_DIRS,
    progress: Callable[[Check], None] | None = None,
) -> list[Check]:
    """Every check, in order; a check that cannot run is a FAIL, never an exception.

    Args:
        config: The TOML settings (``None``: defaults and the environment, as ``run``).
        listen: Seconds to listen on each live CAN bus for the mapped frames (0: not).
        timeout: Seconds to wait for the D-Bus daemon and the broker.
        sysfs: Where network interfaces are listed (``/sys/class/net``).
        policy_dirs: Where the system bus reads policy files.
        progress: Called with each finding as it is made (to print as it goes).
    """
    checks: list[Check] = []

    def record(found: Sequence[Check]) -> None:
        for check in found:
            checks.append(check)
            if progress is not None:
                progress(check)

    settings: DaemonSettings | None = None

    def configuration() -> Iterator[Check]:
        nonlocal settings
        unreadable = list(_check_file(config))
        yield from unreadable
        if unreadable:
            return  # said already, as a FAIL; the daemon would stop on it (exit 2)
        try:
            settings = load_settings(config)
        except ConfigError as err:
            # The same words the daemon logs before it stops with exit status 2.
            for problem in str(err).splitlines():
                yield fail("config", f"the daemon will not start: {problem}", _FIX_VALUE)
            return
        yield ok("config", f"{config or 'defaults and the environment'}: settings are valid")
        if settings.vehicle.id == VehicleSettings().id:
            yield warn(
                "config",
                f"[vehicle] id is the development default {settings.vehicle.id!r}",
                "set it to the car's provisioned identity (its certificate's CN)",
            )

    record(guarded("config", configuration))
    if settings is None:
        return checks
    chosen: DaemonSettings = settings
    record(guarded("store", lambda: check_store(chosen.store, time_settings=chosen.time)))
    record(guarded("daemon", lambda: check_health(chosen.store.path)))
    record(guarded("can", lambda: check_can(chosen.can, listen=listen, timeout=timeout,
                                            sysfs=sysfs)))  # fmt: skip
    record(guarded("can.bcm", lambda: check_kernel_filter(chosen.can, chosen.store.path)))
    record(guarded("dbus", lambda: check_dbus(chosen.dbus, timeout=timeout,
                                              policy_dirs=policy_dirs)))  # fmt: skip
    if chosen.dbus is not None:
        record(guarded("dbus.limits", lambda: check_dbus_limits(chosen.store.path)))
    record(guarded("cloud", lambda: check_cloud(chosen.cloud, chosen.vehicle.id,
                                                timeout=timeout)))  # fmt: skip
    return checks


def _check_file(config: Path | None) -> Iterator[Check]:
    if config is None:
        return
    try:
        tomllib.loads(config.read_text(encoding="utf-8"))
    except OSError as err:
        yield fail(
            "config",
            f"{config}: cannot be read ({err.strerror}); the daemon will not start (exit 2)",
            "give the path of the daemon's settings file, readable by this user",
        )
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        yield fail(
            "config",
            f"{config}: not valid TOML ({err}); the daemon will not start (exit 2)",
            "fix the syntax at the line named",
        )
