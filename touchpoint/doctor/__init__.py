"""``touchpoint doctor``: checks of a head unit's set-up, each OK, WARN or FAIL with a fix."""

from touchpoint.doctor.checkup import diagnose
from touchpoint.doctor.report import Check, Status, exit_status

__all__ = ["Check", "Status", "diagnose", "exit_status"]
