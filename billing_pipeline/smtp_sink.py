"""A local SMTP server for the demo (aiosmtpd on loopback) that keeps each message it accepts
as an .eml file, so that a person can open the notification emails the demo sent."""

from __future__ import annotations

import re
import socket
import threading
from pathlib import Path
from types import TracebackType
from typing import Any


class _KeepAsFiles:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.count = 0
        self.lock = threading.Lock()

    async def handle_DATA(
        self, server: Any, session: Any, envelope: Any
    ) -> str:  # aiosmtpd's hook name
        content = bytes(envelope.original_content)
        match = re.search(rb"Message-ID: <delivery-(\d+)\.", content)
        with self.lock:
            self.count += 1
            ref = f"delivery-{match.group(1).decode()}" if match else "message"
            (self.folder / f"{self.count:04d}-{ref}.eml").write_bytes(content)
        return "250 OK"


class SmtpSink:
    """`with SmtpSink(folder) as sink:` an SMTP server on 127.0.0.1:`sink.port`."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = 0
        self._controller: Any = None

    def __enter__(self) -> SmtpSink:
        from aiosmtpd.controller import Controller

        self.folder.mkdir(parents=True, exist_ok=True)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self._controller = Controller(
            _KeepAsFiles(self.folder), hostname="127.0.0.1", port=self.port
        )
        self._controller.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._controller is not None:
            self._controller.stop()
