"""systemd's notify protocol: READY, STATUS, WATCHDOG, STOPPING, EXTEND_TIMEOUT_USEC.

The socket address is taken from NOTIFY_SOCKET once and the variable removed from the environment, so that no
child (the engine, the synthesizer) can speak for the service (the unit has NotifyAccess=main anyway). Without
NOTIFY_SOCKET every call does nothing. A datagram that cannot be sent is logged once, never raised: the robot
must not stop telling a story because its supervisor went away.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self, environ: dict[str, str] | os._Environ = os.environ) -> None:
        address = environ.pop("NOTIFY_SOCKET", "")
        usec = environ.pop("WATCHDOG_USEC", "")
        pid = environ.pop("WATCHDOG_PID", "")
        # '@' names a socket in the abstract namespace
        self._address = "\0" + address[1:] if address.startswith("@") else address
        is_ours = not pid or pid == str(os.getpid())
        self.watchdog_s = int(usec) / 1e6 if usec.isdigit() and int(usec) > 0 and is_ours else 0.0
        self._socket: socket.socket | None = None
        self._has_warned = False
        self._status = ""

    @property
    def is_enabled(self) -> bool:
        return bool(self._address)

    def send(self, *assignments: str) -> None:
        if not self._address:
            return
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._socket.sendto("\n".join(assignments).encode(), self._address)
        except OSError as e:
            if not self._has_warned:
                log.warning("cannot notify systemd at %s: %s", self._address.replace("\0", "@"), e)
                self._has_warned = True

    def status(self, text: str) -> None:
        """STATUS=text, when it changed."""
        if text != self._status:
            self._status = text
            self.send(f"STATUS={text}")

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
