"""The Ray backend: runs train on a Ray cluster, one actor per training slot, behind the job manager's interface.

Ray's own waiting list has no order and no positions, and an actor holds its CPUs for life: so the job manager keeps
its fair queue, a run is handed to an actor only when the cluster has a free slot (its CPUs and GPUs re-read as
nodes join or leave), and actors are kept warm between runs (a cold one takes 1.7-4.7 s to start here). What
crosses to the cluster is plain data: the validated config as a dict, checkpoints and weights as raw bytes.

Ray runs any code for whoever reaches it, so a cluster that is not on this machine is used only with Ray's token
authentication on.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayError

from drill.backends import Followers, Handle, Job, OnEvent, Outcome, job_to_wire, train_wire_job
from drill.data import Mnist, load_mnist

log = logging.getLogger(__name__)

POLL_S = 0.25  # how often a run's events are fetched from its actor: the Train page polls every 1-4 s
SLOTS_FRESH_S = 2.0  # the cluster's resources are re-read at most this often
RETRY_S = 15.0  # a cluster out of reach is tried again at most this often
CONNECT_TIMEOUT_S = 5.0


@ray.remote
class Trainer:
    """One training slot on the cluster: trains one job at a time and answers poll/stop/pause meanwhile (it is a
    threaded actor: with one thread, poll would wait until the run ended)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._events: list[tuple[str, dict]] = []
        self._stops: dict[str, threading.Event] = {}
        self._pauses: dict[str, threading.Event] = {}
        self._data: Mnist | None = None

    def warm(self) -> int:
        """Load MNIST from this node's cache (fetching it there if missing, with the same sources and hash checks)."""
        self._data = self._data or load_mnist()
        return os.getpid()

    def where(self) -> tuple[int, str]:
        """This actor's process id and the id of the node it runs on."""
        return os.getpid(), ray.get_runtime_context().get_node_id()

    def run(self, job: dict) -> dict:
        """Train one job; its outcome as plain data."""
        stop, pause = self._flags(job["run_id"])
        with self._lock:
            self._events = []
        try:
            self.warm()
            return train_wire_job(job, self._data, self._record, stop, pause)
        except Exception as error:  # MNIST missing on this node, say: a reason, not a remote traceback
            return Outcome.of_error(error).to_wire()
        finally:
            with self._lock:
                self._stops.pop(job["run_id"], None)
                self._pauses.pop(job["run_id"], None)

    def poll(self) -> list[tuple[str, dict]]:
        """The events recorded since the last poll."""
        with self._lock:
            events, self._events = self._events, []
        return events

    def stop(self, run_id: str) -> None:
        self._flags(run_id)[0].set()

    def want_pause(self, run_id: str, wanted: bool) -> None:
        pause = self._flags(run_id)[1]
        (pause.set if wanted else pause.clear)()

    def _flags(self, run_id: str) -> tuple[threading.Event, threading.Event]:
        # A stop may land before its run does (the actor's threads take calls in any order): keep it for the run.
        with self._lock:
            return self._stops.setdefault(run_id, threading.Event()), self._pauses.setdefault(run_id, threading.Event())

    def _record(self, event: str, payload: dict) -> None:
        with self._lock:
            self._events.append((event, payload))


class _RayHandle(Handle):
    def __init__(self, run_id: str, pause_now: bool):
        super().__init__(pause_now)
        self.run_id = run_id
        self.actor = None  # set once the run has an actor

    def _relay(self, command: str, value: bool) -> None:
        actor = self.actor
        if actor is None:
            return
        if command == "stop":
            actor.stop.remote(self.run_id)
        else:
            actor.want_pause.remote(self.run_id, value)


def is_loopback(host: str) -> bool:
    """Whether an address's host is this machine's loopback."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class RayBackend:
    """Trains runs on the Ray cluster at address, asking each run's actor for cpus (and a fraction of a GPU)."""

    name = "ray"

    def __init__(self, address: str, cpus_per_run: float = 1.0, gpus_per_run: float = 0.0, warm: int = 2):
        self.address = address
        self.cpus_per_run = cpus_per_run
        self.gpus_per_run = gpus_per_run
        self.threads_per_job = max(1, int(cpus_per_run))
        self._warm = warm
        self._lock = threading.Lock()
        self._idle: list = []
        self._followers = Followers()
        self._actors: set = set()
        self._problem: str | None = None
        self._retry_at = 0.0
        self._connected = False
        self._slots, self._slots_at = 0, -float("inf")
        self._connect()

    @classmethod
    def from_environment(cls) -> RayBackend:
        """The backend $RAY_ADDRESS, $DRILL_RAY_CPUS (per run, default 1) and $DRILL_RAY_GPUS (default 0) set."""
        return cls(
            os.environ.get("RAY_ADDRESS", ""),
            _number("DRILL_RAY_CPUS", 1.0, 0.1, 64.0),
            _number("DRILL_RAY_GPUS", 0.0, 0.0, 8.0),
        )

    # -- the backend interface ------------------------------------------------------------------------------------
    def problem(self) -> str | None:
        """Why runs cannot train on the cluster now. The connection is tried again now and then, in a thread of its
        own, so no page (nor the job manager's lock) waits on a cluster out of reach."""
        with self._lock:
            retry = not self._connected and self._problem is not None and time.monotonic() >= self._retry_at
            if retry:
                self._retry_at = float("inf")  # this call claims the retry; _connect sets the next one
        if retry:
            threading.Thread(target=self._connect, name="drill-ray-connect", daemon=True).start()
        return self._problem

    def slots(self) -> int:
        """Runs the cluster can train at once: per live node, its CPUs (and GPUs) over what a run asks for."""
        if self.problem() is not None:
            return 0
        now = time.monotonic()
        if now - self._slots_at >= SLOTS_FRESH_S:
            try:
                nodes = [node for node in ray.nodes() if node.get("Alive")]
            except RayError:  # the head itself is gone: no slots until it answers again
                log.exception("the Ray cluster at %s did not answer", self.address)
                nodes = []
            self._slots, self._slots_at = sum(self._node_slots(node["Resources"]) for node in nodes), now
        return self._slots

    def device_type(self, config) -> str:
        """The device type a run trains on in its actor: Ray shows an actor only the GPUs it was given."""
        name = config.train.device
        return "cuda" if name == "cuda" or (name == "auto" and self.gpus_per_run > 0) else "cpu"

    def start(self, job: Job, on_event: OnEvent, on_end: Callable[[Outcome], None]) -> Handle:
        """Follow the job from a thread that hands it to a warm actor (or a new one) and fetches its events."""
        handle = _RayHandle(job.run_id, job.pause_now)
        self._followers.start(job.run_id, self._follow, job, handle, on_event, on_end)
        return handle

    def shutdown(self, timeout: float) -> None:
        """Wait for the followed runs (the manager has stopped them), end every actor, and leave the cluster."""
        self._followers.join(timeout)
        with self._lock:
            actors, self._idle = list(self._actors), []
            self._actors.clear()
        for actor in actors:
            ray.kill(actor)
        if self._connected:
            ray.shutdown()
            self._connected = False

    # -- internals ----------------------------------------------------------------------------------------------
    def _node_slots(self, resources: dict) -> int:
        runs = int(resources.get("CPU", 0) // self.cpus_per_run)
        if self.gpus_per_run:
            runs = min(runs, int(resources.get("GPU", 0) // self.gpus_per_run))
        return runs

    def _connect(self) -> None:
        """Join the cluster, or record why not (and when to try again)."""
        problem = self._refusal()
        if problem is None:
            try:
                ray.init(
                    address=self.address,
                    # The workers need only the packages; the drill code itself travels with the job.
                    runtime_env={"py_modules": [str(Path(__file__).parent)]},
                    log_to_driver=False,
                    logging_level=logging.WARNING,
                )
                self._connected = True
                problem = self._unguarded_nodes()
            except Exception as error:  # Ray raises several kinds (refused token, version mismatch, timeouts)
                problem = (
                    f"The Ray cluster at {self.address} refused this app or failed to connect ({error}). "
                    "Check that RAY_AUTH_MODE and the token match the cluster's, and that its Ray version is 2.60.0."
                )
            if problem is not None and self._connected:
                ray.shutdown()
                self._connected = False
        with self._lock:
            self._problem = problem
            self._retry_at = time.monotonic() + RETRY_S
        if problem is not None:
            log.error("%s", problem)
            return
        log.info("training on the Ray cluster at %s", self.address)
        for _ in range(min(self._warm, self.slots())):
            actor = self._new_actor()
            actor.warm.remote()
            with self._lock:
                self._idle.append(actor)

    def _unguarded_nodes(self) -> str | None:
        """Why a cluster reached on loopback is refused after all: without a token, its nodes must all be here too
        (a head binds every interface, so machines elsewhere can join it)."""
        if os.environ.get("RAY_AUTH_MODE") == "token":
            return None
        away = sorted({n["NodeManagerAddress"] for n in ray.nodes() if not is_loopback(n["NodeManagerAddress"])})
        if not away:
            return None
        return (
            f"The Ray cluster at {self.address} has nodes on other machines ({', '.join(away)}), and Ray runs any code "
            "for anyone who reaches it: this app uses such a cluster only with token authentication. Start every "
            "node and this server with RAY_AUTH_MODE=token and the cluster's token in RAY_AUTH_TOKEN."
        )

    def _refusal(self) -> str | None:
        """Why this app will not use the configured cluster (before talking Ray to it), if it will not."""
        if not self.address:
            return (
                "DRILL_BACKEND=ray needs RAY_ADDRESS: the head node's host:port (for example 10.0.0.5:6379); "
                "see the README's 'A class on a Ray cluster'."
            )
        host, _, port = self.address.rpartition(":")
        if not host or not port.isdigit():
            return f"RAY_ADDRESS={self.address!r} is not allowed: host:port of the cluster's head, e.g. 10.0.0.5:6379"
        if not is_loopback(host) and os.environ.get("RAY_AUTH_MODE") != "token":
            return (
                f"The Ray cluster at {self.address} is on another machine, and Ray runs any code for anyone who "
                "reaches it: this app uses such a cluster only with token authentication. Start every node and this "
                "server with RAY_AUTH_MODE=token and the cluster's token in RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH."
            )
        try:
            socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
        except OSError as error:
            return (
                f"The Ray cluster at {self.address} (RAY_ADDRESS) can't be reached: {error}. New runs can't start "
                "until it answers; start its head node (see the README), or unset DRILL_BACKEND to train on this "
                "server."
            )
        return None

    def _new_actor(self):
        actor = Trainer.options(
            num_cpus=self.cpus_per_run, num_gpus=self.gpus_per_run, max_concurrency=4, max_restarts=0
        ).remote()
        with self._lock:
            self._actors.add(actor)
        return actor

    def _take_actor(self):
        """A warm actor that still answers, else a new one."""
        while True:
            with self._lock:
                actor = self._idle.pop() if self._idle else None
            if actor is None:
                return self._new_actor()
            try:
                ray.get(actor.where.remote(), timeout=30)
                return actor
            except (RayError, GetTimeoutError):
                self._drop(actor)

    def _drop(self, actor) -> None:
        with self._lock:
            self._actors.discard(actor)
        try:
            ray.kill(actor)
        except RayError:
            pass

    def _follow(self, job: Job, handle: _RayHandle, on_event: OnEvent, on_end) -> None:
        actor, outcome, ended = None, None, False
        try:
            actor = self._take_actor()
            handle.actor = actor
            # What the manager asked while the actor was being found, the relay had nobody to tell.
            actor.want_pause.remote(job.run_id, handle.pause_event.is_set())
            if handle.stop_event.is_set():
                actor.stop.remote(job.run_id)
            done_ref = actor.run.remote(job_to_wire(job))
            done = False
            while not done:
                done = bool(ray.wait([done_ref], timeout=POLL_S)[0])
                for event, payload in ray.get(actor.poll.remote()):
                    on_event(event, payload)
            outcome = Outcome.from_wire(ray.get(done_ref), job.config)
            ended = True
        except RayActorError as error:
            log.error("the actor training run %s was lost: %s", job.run_id, error)
            outcome = Outcome.of_lost_run(f"the machine training it was lost ({type(error).__name__})")
        except Exception as error:
            log.exception("run %s failed on the cluster", job.run_id)
            outcome = Outcome.of_error(error)
        finally:
            handle.actor = None  # a Stop or pause from here on must not reach the actor's next run
            if actor is not None:
                if ended:
                    with self._lock:
                        self._idle.append(actor)
                else:  # lost, or still training a run nobody follows any more
                    self._drop(actor)
        on_end(outcome)


def _number(name: str, default: float, low: float, high: float) -> float:
    """A number from the environment, refused with what is allowed when it is not one in range."""
    text = os.environ.get(name, "")
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not low <= value <= high:
        raise ValueError(f"{name}={text!r} is not allowed: a number from {low:g} to {high:g}")
    return value
