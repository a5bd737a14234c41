"""Python interface to the DMTCP-rs checkpointer.

The functions call into libdmtcp.so, which dmtcp_launch preloads into the
process; they are looked up in the running process, so nothing needs to be
configured. Without the checkpointer, ``is_enabled()`` is False and the
other calls do nothing (``checkpoint()`` returns ``NOT_PRESENT``).
"""

import contextlib
import ctypes

__all__ = [
    "RESUMED", "RESTARTED", "NOT_PRESENT", "is_enabled", "checkpoint",
    "disable_checkpoints", "enable_checkpoints", "checkpoints_disabled",
    "generation", "checkpoint_dir", "set_checkpoint_dir", "coordinator_status",
]

#: checkpoint() returned in the process that went on after the checkpoint.
RESUMED = 1
#: checkpoint() returned in a process restarted from that checkpoint.
RESTARTED = 2
#: the program does not run under the checkpointer.
NOT_PRESENT = 3

_process = ctypes.CDLL(None)


def _fn(name, restype, argtypes):
    f = getattr(_process, name, None)
    if f is None:
        return None
    f.restype = restype
    f.argtypes = argtypes
    return f


_is_enabled = _fn("dmtcp_is_enabled", ctypes.c_int, [])
_checkpoint = _fn("dmtcp_checkpoint", ctypes.c_int, [])
_disable = _fn("dmtcp_disable_ckpt", ctypes.c_int, [])
_enable = _fn("dmtcp_enable_ckpt", ctypes.c_int, [])
_generation = _fn("dmtcp_get_generation", ctypes.c_int, [])
_get_dir = _fn("dmtcp_get_ckpt_dir", ctypes.c_char_p, [])
_set_dir = _fn("dmtcp_set_ckpt_dir", ctypes.c_int, [ctypes.c_char_p])
_status = _fn("dmtcp_get_coordinator_status", ctypes.c_int,
              [ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_int)])


def is_enabled():
    """True when the program runs under dmtcp_launch / dmtcp_restart."""
    return bool(_is_enabled and _is_enabled())


def checkpoint():
    """Checkpoint the whole computation; return RESUMED or RESTARTED.

    Raises RuntimeError if the checkpoint failed; returns NOT_PRESENT
    without the checkpointer. Do not call it with checkpoints disabled.
    """
    if not is_enabled():
        return NOT_PRESENT
    r = _checkpoint()
    if r not in (RESUMED, RESTARTED):
        raise RuntimeError("the checkpoint failed (see the coordinator's messages)")
    return r


def disable_checkpoints():
    """Hold checkpoints off until enable_checkpoints() (nests)."""
    if is_enabled():
        _disable()


def enable_checkpoints():
    """End a section started by disable_checkpoints()."""
    if is_enabled():
        _enable()


@contextlib.contextmanager
def checkpoints_disabled():
    """``with dmtcp.checkpoints_disabled(): ...``: no checkpoint happens
    inside; one requested meanwhile happens right after."""
    disable_checkpoints()
    try:
        yield
    finally:
        enable_checkpoints()


def generation():
    """Checkpoint generation of the computation (0 before the first; -1 without the checkpointer)."""
    return _generation() if is_enabled() else -1


def checkpoint_dir():
    """Directory the next image of this process goes to (None without the checkpointer)."""
    if not is_enabled():
        return None
    d = _get_dir()
    return d.decode() if d else None


def set_checkpoint_dir(path):
    """Send the next images of this process to ``path``."""
    if is_enabled() and _set_dir(str(path).encode()) != 1:
        raise ValueError("bad checkpoint directory: %r" % (path,))


def coordinator_status():
    """(number of processes, all running?) from the coordinator, or None."""
    if not is_enabled():
        return None
    n, running = ctypes.c_int(-1), ctypes.c_int(-1)
    if _status(ctypes.byref(n), ctypes.byref(running)) != 1:
        return None
    return n.value, bool(running.value)
