"""Crafted checkpoints that run code when fully unpickled, and a loopback HTTP server to serve them."""

from __future__ import annotations

import contextlib
import functools
import http.server
import os
import threading
from pathlib import Path
from typing import Iterator

import torch


class RunsCode:
    """Unpickled in full, this creates the folder ``marker``: proof that the file's code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def code_running_checkpoint(path: Path, marker: Path) -> Path:
    """A checkpoint-shaped file (a state_dict and hyper-parameters) whose unpickling creates ``marker``."""
    torch.save({"state_dict": {"w": torch.zeros(1)}, "hyper_parameters": {"x": RunsCode(marker)}}, path)
    return path


@contextlib.contextmanager
def served(folder: Path) -> Iterator[str]:
    """Serve ``folder`` on 127.0.0.1 (a free port) for the ``with`` block; yields the base URL."""
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass
