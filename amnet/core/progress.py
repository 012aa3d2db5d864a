"""Progress bars when tqdm is installed; plain iteration where it is not (the GPU check machines)."""
from __future__ import annotations

import logging
import os
from contextlib import contextmanager, redirect_stderr, redirect_stdout


def progress_bar(iterable, **kwargs):
    try:
        from tqdm import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, **kwargs)


@contextmanager
def quiet_output(quiet: bool):
    """Under --quiet, what a third-party step prints is dropped: NNCF's progress bars, ONNX Runtime's
    calibration lines and warnings. Errors still surface, as exceptions."""
    if not quiet:
        yield
        return
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with open(os.devnull, "w") as sink, redirect_stdout(sink), redirect_stderr(sink):
            yield
    finally:
        logging.disable(previous)


@contextmanager
def native_stderr_dropped():
    """What C/C++ libraries write straight to file descriptor 2 (libpng's "Read Error", the log lines of an
    OpenVINO frontend probing a damaged file) is dropped while a call runs whose failure we report in one line."""
    import sys

    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real descriptor 2 (an embedding host): nothing to silence
        yield
        return
    try:
        with open(os.devnull, "w") as sink:
            os.dup2(sink.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
