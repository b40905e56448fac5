"""Which RUNNING runs still have a process working on them.

A run that a process opens carries that process's heartbeat: the tag ``dfk.heartbeat/<host>/<pid>``
holds where it runs and when it last beat, rewritten every ``SETTINGS.heartbeat_interval`` seconds
by a background thread while the run is open. Ctrl-C and SIGTERM end runs KILLED themselves; a
SIGKILL, an out-of-memory kill, a power cut or a preempted machine cannot, and leave the run
RUNNING. :func:`end_orphaned_runs` (every dfk command that opens the store calls it first) ends such
a run KILLED once every process that beat on it is gone: on this machine, its pid no longer names the
same process (same boot, same pid namespace, same start time); elsewhere, it has been silent for
``SETTINGS.stale_run_after`` seconds. Runs without a heartbeat (other tools', older ones) are left
alone.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import socket
import threading
import time
from dataclasses import asdict, dataclass

from dfk.runs.lifecycle import FAILED, KILLED
from dfk.settings import SETTINGS

log = logging.getLogger(__name__)

#: Prefix of the heartbeat tags; one tag per process working on the run.
HEARTBEAT_PREFIX = "dfk.heartbeat/"
#: Tag naming why dfk ended a run KILLED on behalf of its vanished process.
ORPHANED_TAG = "dfk.orphaned"


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def _stat(pid: int) -> list[str]:
    """The fields of ``/proc/<pid>/stat`` after the command name (state, ppid, ...); [] where none."""
    return _read(f"/proc/{pid}/stat").rsplit(")", 1)[-1].split()


def _start_ticks(pid: int) -> str:
    """When process ``pid`` started (clock ticks since boot, Linux), '' when there is no such live
    process (a zombie, dead but not yet reaped by its parent, counts as none) or where unknown.
    Together with the pid it names one process: a pid reused after the process died has another
    start time."""
    fields = _stat(pid)
    return fields[19] if len(fields) > 19 and fields[0] not in ("Z", "X") else ""


def _namespace() -> str:
    try:
        return str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        return ""


@dataclass(frozen=True)
class Beat:
    """One process's heartbeat on a run."""

    host: str
    pid: int
    boot: str  # the kernel's boot id: a pid from before a reboot names nothing now
    ns: str  # pid namespace: containers sharing a hostname do not share pids
    start: str
    at: float

    @property
    def tag(self) -> str:
        return f"{HEARTBEAT_PREFIX}{self.host}/{self.pid}"

    def gone(self, now: float | None = None) -> bool:
        """Whether the process that wrote this beat can no longer be working on the run: on this
        machine since its boot and in this pid namespace, whether that pid still names the process
        that started then; anywhere else, whether it has been silent for ``stale_run_after``."""
        here = this_process()
        if self.boot and self.ns and (self.host, self.boot, self.ns) == (here.host, here.boot, here.ns):
            if not self.start:  # no /proc to tell by
                return False
            return _start_ticks(self.pid) != self.start
        return (now or time.time()) - self.at > SETTINGS.stale_run_after


@functools.lru_cache(maxsize=4)
def _identity(pid: int) -> tuple[str, int, str, str, str]:
    return (socket.gethostname() or "unknown", pid, _read("/proc/sys/kernel/random/boot_id"), _namespace(),
            _start_ticks(pid))


def this_process() -> Beat:
    """This process's beat, now (a forked worker is a process of its own)."""
    return Beat(*_identity(os.getpid()), time.time())


def beats(tags: dict[str, str]) -> list[Beat]:
    """The heartbeats recorded in a run's tags (unreadable ones skipped)."""
    out = []
    for key, value in tags.items():
        if key.startswith(HEARTBEAT_PREFIX):
            try:
                out.append(Beat(**json.loads(value)))
            except (TypeError, ValueError):
                continue
    return out


class Heartbeat:
    """This process's heartbeat on ``run_id`` while the block runs (now, then every ``interval`` s)."""

    def __init__(self, run_id: str, interval: float = SETTINGS.heartbeat_interval) -> None:
        self.run_id, self.interval = run_id, interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def beat(self) -> None:
        import mlflow

        me = this_process()
        try:
            mlflow.MlflowClient().set_tag(self.run_id, me.tag, json.dumps(asdict(me)))
        except Exception as exc:  # a blip of the store: the next beat tries again
            log.debug("heartbeat of run %s not written: %s", self.run_id, exc)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.beat()

    def __enter__(self) -> "Heartbeat":
        self.beat()
        self._thread = threading.Thread(target=self._loop, name=f"dfk-heartbeat-{self.run_id[:8]}", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.interval)


def orphaned(run, now: float | None = None) -> list[Beat] | None:
    """The heartbeats of a RUNNING ``run`` when all are from processes that are gone, else None."""
    found = beats(run.data.tags)
    if not found or not all(b.gone(now) for b in found):
        return None
    return found


def end_orphaned_runs(experiment_ids: list[str] | None = None) -> list[tuple[object, str]]:
    """End KILLED every RUNNING run whose processes are all gone; ``[(run, why)]`` for each."""
    import mlflow

    client = mlflow.MlflowClient()
    scope = {"experiment_ids": experiment_ids} if experiment_ids else {"search_all_experiments": True}
    running = mlflow.search_runs(filter_string="attributes.status = 'RUNNING'", output_format="list", **scope)
    ended = []
    for run in running:
        if orphaned(run) is None:
            continue
        run = client.get_run(run.info.run_id)  # as it is now: a process may have taken it up (a resume)
        if run.info.status != "RUNNING" or (found := orphaned(run)) is None:
            continue
        last = max(found, key=lambda b: b.at)
        why = f"process {last.pid} on {last.host} is gone (last heartbeat {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(last.at))})"
        client.set_tag(run.info.run_id, ORPHANED_TAG, why)
        client.set_terminated(run.info.run_id, KILLED, end_time=int(last.at * 1000))
        ended.append((run, why))
    return ended


#: Processes between a launcher and the command it runs (``mlflow run`` starts ``bash -c COMMAND``).
SHELLS = frozenset({"sh", "bash", "dash", "zsh"})


def _launcher() -> tuple[int, str] | None:
    """The pid and start time of the process that launched this one, shells in between skipped;
    None where /proc cannot tell."""
    pid = os.getppid()
    while _read(f"/proc/{pid}/comm") in SHELLS:
        fields = _stat(pid)
        if len(fields) < 2:
            return None
        pid = int(fields[1])
    start = _start_ticks(pid)
    return (pid, start) if start and pid > 1 else None


def stop_with_launcher(interval: float = 1.0) -> None:
    """Stop this process as SIGTERM does (runs end KILLED) when the process that launched it dies.

    ``mlflow run`` waits on its entry point's command; stopped by SIGTERM or SIGKILL, it dies alone
    and the command would train on as an orphan, its run RUNNING until it finished. The SIGTERM
    handler must be installed (:func:`dfk.runs.entry.command` does)."""
    import signal

    launcher = _launcher()
    if launcher is None:
        return
    pid, start = launcher

    def watch() -> None:
        while _start_ticks(pid) == start:
            time.sleep(interval)
        print(f"dfk: the process that launched this command (pid {pid}) is gone; stopping", flush=True)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="dfk-launcher-watch", daemon=True).start()


def keep_killed(run_id: str) -> None:
    """Keep ``run_id`` KILLED once the ``mlflow run`` that launched this process has exited.

    Interrupted, ``mlflow run`` stops its command and then marks the run FAILED whatever the command
    ended it as (its "already ended?" check compares a status name with status numbers, so it never
    sees one). A small detached process waits for it to exit and puts KILLED back."""
    import subprocess
    import sys

    launcher = _launcher()
    if launcher is None:
        return
    subprocess.Popen([sys.executable, "-m", "dfk.runs.liveness", run_id, str(launcher[0]), launcher[1]],
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                     start_new_session=True)


def _restore_killed(run_id: str, pid: int, start: str, wait: float = 30) -> None:
    deadline = time.time() + wait
    while _start_ticks(pid) == start and time.time() < deadline:
        time.sleep(0.1)
    import mlflow

    client = mlflow.MlflowClient()
    if client.get_run(run_id).info.status == FAILED:
        client.set_terminated(run_id, KILLED)


if __name__ == "__main__":  # python -m dfk.runs.liveness RUN_ID LAUNCHER_PID LAUNCHER_START (see keep_killed)
    import sys

    _restore_killed(sys.argv[1], int(sys.argv[2]), sys.argv[3])
