"""Watch NVML for XID and recovery-action events in a background thread.

:class:`XidWatcher` initialises NVML, registers ``nvmlEventTypeXidCriticalError`` on every GPU
that supports it, and waits on the event set; each XID becomes an :class:`XidEvent` handed to
``on_event``. NVML delivers every XID under that event type, application errors too, so
:attr:`XidEvent.critical` (from :mod:`nodeagent.gpu.xid`) is the filter. Given
``on_recovery``, it also registers ``nvmlEventTypeGpuRecoveryAction`` where the driver offers
it (NVIDIA's verdict on a GPU changed: reset, reboot, drain ...); the event carries no value,
so each becomes a :class:`RecoveryActionEvent` naming the GPU, and the receiver re-reads the
action (``NVML_FI_DEV_GET_GPU_RECOVERY_ACTION``) through a detection.

When NVML cannot be set up or the wait fails (driver not loaded, no GPU, the library went
away), ``on_error`` gets a one-line message naming the NVML error and the watcher tries again
with capped, jittered exponential backoff until it works or :meth:`XidWatcher.stop` is called.

Sharing NVML with :func:`nodeagent.gpu.nvml.detect`: pynvml keeps its library in a module
global, which ``detect(library=...)`` swaps under :func:`nvml.bound`. The watcher makes every
pynvml call under the same lock with its own library bound (and gives the global back
afterwards), so the two never see each other's library. The long wait does not hold the lock:
it calls ``nvmlEventSetWait_v2`` through a function pointer of the watcher's own library, so
detections run while it waits. NVML counts initialisations, so the watcher's ``nvmlInit``
stays valid across the ``nvmlInit``/``nvmlShutdown`` pairs of concurrent detections.

Talks to NVML only (no host file, no API server); the backoff between attempts is waited on
an injected :class:`~nodeagent.host.clock.Clock`.
"""

from __future__ import annotations

import ctypes
import dataclasses
import random
import threading
from collections.abc import Iterable
from typing import Any, Callable, Optional

from nodeagent.gpu import nvml, xid
from nodeagent.host.clock import REAL, Clock
from nodeagent.log import get_logger
from nodeagent.retry import backoff_s

log = get_logger(__name__)

# First retry waits up to this long (full jitter), doubling up to retry_max_s.
_RETRY_INITIAL_S = 1.0
_THREAD_NAME = "nodeagent-xid-watch"

# nvml.h (the nvidia-nvml-dev wheel): #define nvmlEventTypeGpuRecoveryAction 0x8000LL. For a
# pynvml older than the event type.
NVML_EVENT_TYPE_GPU_RECOVERY_ACTION = 0x8000


def _recovery_event_type() -> int:
    import pynvml

    return int(
        getattr(pynvml, "nvmlEventTypeGpuRecoveryAction", NVML_EVENT_TYPE_GPU_RECOVERY_ACTION)
    )


@dataclasses.dataclass(frozen=True)
class XidEvent:
    """One XID NVML reported."""

    gpu_index: Optional[int]  # nvmlDeviceGetIndex of the event's device; None if unreadable
    uuid: Optional[str]  # nvmlDeviceGetUUID of the event's device; None if unreadable
    xid: int
    critical: bool  # xid.is_critical with the watcher's extra/ignore
    description: str  # xid.describe(xid)


@dataclasses.dataclass(frozen=True)
class RecoveryActionEvent:
    """NVML said a GPU's recovery action changed (``nvmlEventTypeGpuRecoveryAction``)."""

    gpu_index: Optional[int]  # None if unreadable
    uuid: Optional[str]


class _SetupFailed(Exception):
    """NVML could not be initialised or watched; the message is for on_error."""


@dataclasses.dataclass
class _Session:
    """What one attempt set up, so that it can be taken down again."""

    lib: Optional[ctypes.CDLL] = None
    initialised: bool = False
    voided: bool = False  # NVML said UNINITIALIZED: our init no longer counts
    event_set: Any = None
    wait: Any = None  # nvmlEventSetWait_v2 of ``lib``


class XidWatcher:
    """Deliver NVML XID events to ``on_event`` from a daemon thread.

    ``library`` is the libnvidia-ml.so.1 to load (config key ``nvml_library``; None: the
    dynamic loader's search). ``on_recovery``, when given, receives the recovery-action
    events of the GPUs whose driver offers them (None: they are not registered).
    ``extra_critical`` / ``ignore`` adjust which XIDs are critical
    (:func:`nodeagent.gpu.xid.is_critical`). ``wait_ms`` is one NVML wait, so also how long
    :meth:`stop` may take to be noticed; ``retry_max_s`` caps the backoff between attempts
    after a failure, waited on ``clock``. ``on_error`` is called once per failed attempt, from
    the watcher thread. Exceptions raised by any callback are logged and do not stop the
    watcher.

    Thread ownership: the NVML session belongs to the watcher thread; :attr:`watching` and
    :attr:`last_error` are written by it alone and only read elsewhere; :meth:`start` and
    :meth:`stop` are called from one other thread (the daemon's) and meet the watcher thread
    only through the stop Event.
    """

    def __init__(
        self,
        on_event: Callable[[XidEvent], None],
        *,
        library: Optional[str] = None,
        on_error: Optional[Callable[[str], None]] = None,
        on_recovery: Optional[Callable[[RecoveryActionEvent], None]] = None,
        extra_critical: Iterable[int] = (),
        ignore: Iterable[int] = (),
        wait_ms: int = 500,
        retry_max_s: float = 30.0,
        clock: Clock = REAL,
    ) -> None:
        self._on_event = on_event
        self._on_error = on_error
        self._on_recovery = on_recovery
        self._library = library
        self._extra = frozenset(int(x) for x in extra_critical)
        self._ignore = frozenset(int(x) for x in ignore)
        self._wait_ms = max(1, int(wait_ms))
        self._retry_max_s = max(0.0, float(retry_max_s))
        self._clock = clock
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._watching = False
        self._last_error: Optional[str] = None
        self._rng = random.Random()

    @property
    def watching(self) -> bool:
        """True while an event set is registered and being waited on."""
        return self._watching

    @property
    def last_error(self) -> Optional[str]:
        """The message of the last failed attempt; None once watching (again)."""
        return self._last_error

    def start(self) -> None:
        """Start the watcher thread (a daemon). Raises RuntimeError if it is already running."""
        if self._thread is not None and self._thread.is_alive():
            raise RuntimeError("XID watcher already started")
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=_THREAD_NAME, daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 2.0) -> None:
        """Ask the thread to finish and join it for at most ``timeout_s`` seconds."""
        self._stop.set()
        thread = self._thread
        if thread is None or thread is threading.current_thread():
            return
        thread.join(timeout_s)
        if thread.is_alive():
            log.warning("nvml.xid_watch_stop_timeout", timeout_s=timeout_s)

    # -- the thread -------------------------------------------------------------------------

    def _run(self) -> None:
        attempt = 0
        while not self._stop.is_set():
            try:
                error, watched = self._attempt()
            except Exception as e:  # a bug, not NVML: keep watching all the same
                log.exception("nvml.xid_watch_crashed")
                error, watched = f"XID watch failed: {e!r}", False
            if error is None or self._stop.is_set():
                break
            attempt = 1 if watched else attempt + 1
            self._failed(error)
            delay = backoff_s(
                attempt, None, _RETRY_INITIAL_S, self._retry_max_s, self._rng.random()
            )
            log.info("nvml.xid_watch_retry", attempt=attempt, sleep_s=round(delay, 3))
            self._clock.wait(self._stop, delay)
        log.debug("nvml.xid_watch_stopped")

    def _failed(self, message: str) -> None:
        self._last_error = message
        log.warning("nvml.xid_watch_failed", error=message)
        if self._on_error is None:
            return
        try:
            self._on_error(message)
        except Exception:
            log.exception("nvml.xid_on_error_failed")

    def _attempt(self) -> tuple[Optional[str], bool]:
        """Set up, wait until stopped or failed, take down. Returns (error message or None
        when stopped, whether watching had started)."""
        session = _Session()
        watched = False
        try:
            gpus = self._setup(session)
            watched = True
            self._watching = True
            self._last_error = None
            log.info("nvml.xid_watch_started", gpus=gpus)
            return self._wait_loop(session), watched
        except _SetupFailed as e:
            return str(e), watched
        finally:
            self._watching = False
            self._teardown(session)

    def _setup(self, s: _Session) -> list[int]:
        """nvmlInit, an event set, XID registration on every GPU that takes it. Returns the
        registered GPU indices; raises _SetupFailed."""
        import pynvml

        lib: Optional[ctypes.CDLL] = None
        if self._library is not None:
            try:
                lib = ctypes.CDLL(self._library)
            except OSError:
                raise _SetupFailed(
                    f"NVML init failed: NVML_ERROR_LIBRARY_NOT_FOUND ({self._library} not found)"
                ) from None
        with nvml.bound(lib):
            try:
                pynvml.nvmlInit()
            except pynvml.NVMLError as e:
                raise _SetupFailed(f"NVML init failed: {nvml.error_text(e)}") from None
            s.lib = pynvml.nvmlLib
            s.initialised = True
            try:
                s.event_set = pynvml.nvmlEventSetCreate()
                registered = [i for i in range(pynvml.nvmlDeviceGetCount()) if self._register(s, i)]
                if s.lib is None:
                    raise _SetupFailed("NVML init failed: no library loaded")
                try:
                    s.wait = s.lib.nvmlEventSetWait_v2
                except AttributeError:
                    raise _SetupFailed(
                        "XID watch setup failed: NVML_ERROR_FUNCTION_NOT_FOUND "
                        "(nvmlEventSetWait_v2 missing: driver too old)"
                    ) from None
            except pynvml.NVMLError as e:
                if e.value == pynvml.NVML_ERROR_UNINITIALIZED:
                    s.voided = True
                raise _SetupFailed(f"XID watch setup failed: {nvml.error_text(e)}") from None
        if not registered:
            raise _SetupFailed("XID watch setup failed: no GPU accepts XID events")
        return registered

    def _register(self, s: _Session, index: int) -> bool:
        """Register XID events (and recovery-action events, when asked for and offered) on
        GPU ``index``; False (logged) for a GPU that cannot take XID events (NOT_SUPPORTED)
        or is lost (GPU_IS_LOST). Other NVML errors propagate."""
        import pynvml

        try:
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            supported = pynvml.nvmlDeviceGetSupportedEventTypes(handle)
            if not supported & pynvml.nvmlEventTypeXidCriticalError:
                log.warning("nvml.xid_not_supported", gpu=index)
                return False
            types = pynvml.nvmlEventTypeXidCriticalError
            recovery = _recovery_event_type()
            if self._on_recovery is not None and supported & recovery:
                types |= recovery
            pynvml.nvmlDeviceRegisterEvents(handle, types, s.event_set)
        except pynvml.NVMLError as e:
            if e.value in (pynvml.NVML_ERROR_NOT_SUPPORTED, pynvml.NVML_ERROR_GPU_IS_LOST):
                log.warning("nvml.xid_register_skipped", gpu=index, error=nvml.error_name(e))
                return False
            raise
        return True

    def _wait_loop(self, s: _Session) -> Optional[str]:
        """Wait for events until stopped (None) or NVML fails (the message)."""
        import pynvml

        data = pynvml.c_nvmlEventData_t()
        timeout = ctypes.c_uint(self._wait_ms)
        while not self._stop.is_set():
            # Not under nvml.bound(): the watcher's own function pointer, the GIL released.
            ret = s.wait(s.event_set, ctypes.byref(data), timeout)
            if ret == pynvml.NVML_ERROR_TIMEOUT:
                continue
            if ret != pynvml.NVML_SUCCESS:
                if ret == pynvml.NVML_ERROR_UNINITIALIZED:
                    s.voided = True
                with nvml.bound(s.lib):
                    return f"XID wait failed: {nvml.error_text(pynvml.NVMLError(ret))}"
            if data.eventType & pynvml.nvmlEventTypeXidCriticalError:
                self._deliver(s, data)
            elif data.eventType & _recovery_event_type() and self._on_recovery is not None:
                self._deliver_recovery(s, data, self._on_recovery)
            else:
                log.debug("nvml.event_ignored", event_type=int(data.eventType))
        return None

    def _device(self, s: _Session, data: Any) -> tuple[Optional[int], Optional[str]]:
        """The index and UUID of the event's device (None where NVML cannot say)."""
        import pynvml

        index: Optional[int] = None
        uuid: Optional[str] = None
        with nvml.bound(s.lib):
            try:
                index = int(pynvml.nvmlDeviceGetIndex(data.device))
            except pynvml.NVMLError as e:
                log.debug("nvml.event_index_unreadable", error=nvml.error_name(e))
            try:
                uuid = nvml.as_text(pynvml.nvmlDeviceGetUUID(data.device))
            except pynvml.NVMLError as e:
                log.debug("nvml.event_uuid_unreadable", error=nvml.error_name(e))
        return index, uuid

    def _deliver_recovery(
        self, s: _Session, data: Any, receiver: Callable[[RecoveryActionEvent], None]
    ) -> None:
        index, uuid = self._device(s, data)
        log.warning("nvml.recovery_action_changed", gpu=index, uuid=uuid)
        try:
            receiver(RecoveryActionEvent(gpu_index=index, uuid=uuid))
        except Exception:
            log.exception("nvml.recovery_on_event_failed", gpu=index)

    def _deliver(self, s: _Session, data: Any) -> None:
        code = int(data.eventData)
        index, uuid = self._device(s, data)
        event = XidEvent(
            gpu_index=index,
            uuid=uuid,
            xid=code,
            critical=xid.is_critical(code, self._extra, self._ignore),
            description=xid.describe(code),
        )
        log_fn = log.warning if event.critical else log.info
        log_fn(
            "nvml.xid",
            gpu=index,
            uuid=uuid,
            xid=code,
            critical=event.critical,
            description=event.description,
        )
        try:
            self._on_event(event)
        except Exception:
            log.exception("nvml.xid_on_event_failed", gpu=index, xid=code)

    def _teardown(self, s: _Session) -> None:
        """Free the event set and give back our nvmlInit (unless NVML already voided it)."""
        if not s.initialised:
            return
        import pynvml

        with nvml.bound(s.lib):
            if s.event_set is not None and not s.voided:
                try:
                    pynvml.nvmlEventSetFree(s.event_set)
                except pynvml.NVMLError as e:
                    log.debug("nvml.event_set_free_failed", error=nvml.error_name(e))
            if not s.voided:
                try:
                    pynvml.nvmlShutdown()
                except pynvml.NVMLError as e:
                    log.debug("nvml.shutdown_failed", error=nvml.error_name(e))
