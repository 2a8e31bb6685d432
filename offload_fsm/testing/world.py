"""A virtual-time world for unit tests of sleep/wake code: no GPU, no real time.

One :class:`World` holds a :class:`~offload_fsm.timing.clock.VirtualClock`, fake GPUs of a chosen
count and size (:class:`~offload_fsm.sim.fake_gpus.FakeGpus`) probed through the fake NVML
backend, an :class:`~offload_fsm.orchestrator.Orchestrator` wired to them, and the run's
recorded event log. Add simulated SGLang or vLLM engines, simulated (strict) trainers, or
the user's own trainer callables; inject faults by name (:mod:`offload_fsm.testing.faults`);
then drive the pipeline under test and check the log with
:mod:`offload_fsm.testing.assertions`.

Virtual time jumps whenever every task is blocked, so a 60 s gate deadline costs
microseconds. The world runs on whichever anyio backend the test runs on (asyncio or trio).

Besides the events, the world watches what no event shows and records it as a
:class:`~offload_fsm.testing.log.Finding`: the memory the fake GPUs *really* hold whenever an
engine enters ``waking`` (a gate that said "under the threshold" must have been right), and
every direct call of a watched trainer's onload/offload.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

from offload_fsm.core.errors import ConfigError
from offload_fsm.core.lifecycle import State
from offload_fsm.events.bus import EventBus, Recorder
from offload_fsm.events.kinds import Event, GateFailOpen, Transition
from offload_fsm.orchestrator.orchestrator import EngineSpec, Orchestrator, OrchestratorConfig
from offload_fsm.probe.base import GIB, GpuDevice
from offload_fsm.settings import GatePolicy, gib_to_bytes, parse_positive_gib, parse_positive_int
from offload_fsm.sim.engine import SimEngine
from offload_fsm.sim.fake_backend import FakeBackend
from offload_fsm.sim.fake_devices import FakeDeviceSpec, make_mixed_devices
from offload_fsm.sim.fake_gpus import FakeGpus
from offload_fsm.sim.sim_model import Footprint
from offload_fsm.testing import faults as fault_names
from offload_fsm.testing.hooks import HookedEngine, RouterHook
from offload_fsm.testing.log import WAKE_OVER_THRESHOLD, EventLog, Finding
from offload_fsm.testing.trainers import UserHook, WatchedTrainer
from offload_fsm.timing.clock import VirtualClock

E = TypeVar("E", bound=Event)

# Per GPU, awake. Inference engines as in the reliability rig (a 0.5B-class model with a large
# KV cache); trainers as the demo's Megatron stand-in: ~2.4 GiB stays after an offload.
SGLANG_FOOTPRINT = Footprint.gib(weights=2.5, kv_cache=24.0, cuda_graph=1.5, context=0.6)
VLLM_FOOTPRINT = Footprint.gib(weights=2.5, kv_cache=24.0, cuda_graph=1.5, context=0.6)
TRAINER_FOOTPRINT = Footprint.gib(weights=36.0, kv_cache=0.0, context=2.4)
TRAINER_AWAKE_GIB = 38.4
TRAINER_RESIDUAL_GIB = 2.4


class WorldRecorder(Recorder):
    """Keeps every event in order, and checks the fake GPUs' truth at each wake."""

    def __init__(self, world: World, bus: EventBus, run_id: str) -> None:
        super().__init__(bus, run_id, world.clock)
        self.world = world
        self.events: list[Event] = []
        self.fail_open = False

    async def emit(self, kind: type[E], **fields: Any) -> E:
        event = await super().emit(kind, **fields)
        self.events.append(event)
        if isinstance(event, GateFailOpen):
            self.fail_open = True  # an unmeasured wake was allowed, loudly: no truth to check
        elif isinstance(event, Transition) and event.dst == State.WAKING.value:
            devices = tuple(self.world.gpus.device(k) for k in event.gpus)
            self.world.check_truth(event.engine_id or "?", devices, "transition gated -> waking")
        return event


class World:
    """Fake GPUs, simulated engines and an orchestrator in virtual time (module docstring).

    ``gpus``: how many GPUs, or one size in GiB per GPU (mixed models); ``gpu_gib``: their
    size when a count is given. ``threshold_gib``: the wake gate's whole-GPU limit (the
    library's default, 8 GiB). ``settle``: rounds the gate condition must hold.
    ``gate_timeout_s``: the wake gate's deadline (virtual seconds). ``config`` replaces the
    orchestrator settings built from those.
    """

    def __init__(
        self,
        *,
        gpus: int | Sequence[float] = 4,
        gpu_gib: float = 80.0,
        threshold_gib: float = 8.0,
        settle: int = 3,
        gate_timeout_s: float = 60.0,
        run_id: str = "test",
        config: OrchestratorConfig | None = None,
    ) -> None:
        self.clock = VirtualClock()
        self.gpus = FakeGpus(make_mixed_devices(_device_specs(gpus, gpu_gib)), self.clock)
        self.probe = FakeBackend(self.gpus)
        if config is None:
            config = OrchestratorConfig(
                threshold_bytes=gib_to_bytes(parse_positive_gib("threshold_gib", threshold_gib)),
                wake_gate=GatePolicy(
                    settle_samples=parse_positive_int("settle", settle),
                    deadline_s=gate_timeout_s,
                ),
                pid_namespace="host",  # fake pids: never compare them with this machine's /proc
            )
        self.config = config
        self.bus = EventBus()
        self.recorder = WorldRecorder(self, self.bus, run_id)
        self.orchestrator = Orchestrator(
            probe=self.probe, recorder=self.recorder, config=config, clock=self.clock
        )
        self.engines: dict[str, SimEngine] = {}
        self.trainers: dict[str, WatchedTrainer] = {}
        self.findings: list[Finding] = []
        self._next_pid = 5000
        self._started = False
        self._finished = False

    # --- what tests read ----------------------------------------------------------------------

    @property
    def threshold_bytes(self) -> int:
        return self.config.threshold_bytes

    @property
    def log(self) -> EventLog:
        """The recorded log so far (a live view: it grows as the world runs)."""
        return EventLog(self.recorder.events, self.findings)

    def device(self, index: int) -> GpuDevice:
        if not 0 <= index < len(self.gpus.devices):
            raise ConfigError("gpu", index, f"an index below {len(self.gpus.devices)}")
        return self.gpus.devices[index]

    def state(self, engine_id: str) -> State:
        return self.orchestrator.state(engine_id)

    def used_gib(self, gpu: int) -> float:
        """Whole-GPU used memory now (all processes, co-tenants included), in GiB."""
        return self.gpus.used(self.device(gpu)) / GIB

    # --- run --------------------------------------------------------------------------------

    async def start(self) -> None:
        """Log ``run_started`` (adding the first engine does it too)."""
        if not self._started:
            self._started = True
            await self.orchestrator.start_run(command="offload_fsm.testing")

    async def finish(self, status: str = "ok") -> EventLog:
        """Log ``run_finished``; the returned log is then complete for replay."""
        await self.start()
        if not self._finished:
            self._finished = True
            await self.orchestrator.finish_run(status)
        return self.log

    # --- engines ----------------------------------------------------------------------------

    async def sglang(
        self,
        engine_id: str,
        gpus: Sequence[int],
        *,
        pipeline: str | None = None,
        awake: bool = True,
        footprint: Footprint = SGLANG_FOOTPRINT,
        share_group: str | None = None,
        before_release: RouterHook | None = None,
        after_wake: RouterHook | None = None,
    ) -> SimEngine:
        """A simulated SGLang engine: strict (a second release, or a resume of a tag that
        is not released, fails as in the server) and it refuses to release before
        generation is paused. ``before_release`` / ``after_wake``: the user's router hooks
        (close admission, re-register), run around the engine's calls; one that raises
        stops the state change."""
        sim = await self._sim(engine_id, gpus, footprint, awake, strict=True, pause=True)
        await self._register(
            sim, engine_id, pipeline, "engine", awake, share_group, before_release, after_wake
        )
        return sim

    async def vllm(
        self,
        engine_id: str,
        gpus: Sequence[int],
        *,
        pipeline: str | None = None,
        awake: bool = True,
        footprint: Footprint = VLLM_FOOTPRINT,
        share_group: str | None = None,
        before_release: RouterHook | None = None,
        after_wake: RouterHook | None = None,
    ) -> SimEngine:
        """A simulated vLLM engine in sleep mode: ``/sleep`` aborts requests itself and a
        repeated sleep or wake is skipped, not refused (as the simulated vLLM server)."""
        sim = await self._sim(engine_id, gpus, footprint, awake, strict=False, pause=False)
        sim.name = "sim-vllm"
        await self._register(
            sim, engine_id, pipeline, "engine", awake, share_group, before_release, after_wake
        )
        return sim

    async def sim_trainer(
        self,
        engine_id: str,
        gpus: Sequence[int],
        *,
        pipeline: str | None = None,
        awake: bool = False,
        footprint: Footprint = TRAINER_FOOTPRINT,
    ) -> SimEngine:
        """A simulated Megatron-like trainer (starts offloaded): a resume of what is not
        offloaded fails, as a second torch_memory_saver resume does."""
        sim = await self._sim(engine_id, gpus, footprint, awake, strict=True, pause=False)
        await self._register(sim, engine_id, pipeline, "trainer", awake, None, None, None)
        return sim

    async def trainer(
        self,
        engine_id: str,
        gpus: Sequence[int],
        *,
        offload: UserHook | None = None,
        onload: UserHook | None = None,
        prepare: UserHook | None = None,
        finish: UserHook | None = None,
        pipeline: str | None = None,
        awake: bool = False,
        awake_gib: float = TRAINER_AWAKE_GIB,
        residual_gib: float = TRAINER_RESIDUAL_GIB,
    ) -> WatchedTrainer:
        """The user's own trainer: their ``offload``/``onload`` callables (sync or async,
        taking the tags or nothing) behind the library's TrainerAdapter and the kit's
        guards (:mod:`offload_fsm.testing.trainers`). Hand the returned handle to the
        pipeline under test wherever it would hold the trainer."""
        self._new_id(engine_id)
        devices = self._devices(engine_id, gpus)
        watched = WatchedTrainer(
            self,
            engine_id,
            devices,
            pid=self._pid(),
            offload=offload,
            onload=onload,
            prepare=prepare,
            finish=finish,
            awake_bytes=gib_to_bytes(parse_positive_gib("awake_gib", awake_gib)),
            residual_bytes=_residual_bytes(residual_gib),
            onloaded=awake,
        )
        await self._add_spec(
            EngineSpec(
                engine_id,
                watched.adapter,
                devices,
                pipeline_id=pipeline,
                role="trainer",
                initial=State.ACTIVE if awake else State.SLEPT,
                pids=_pids(watched.pid),
            )
        )
        self.trainers[engine_id] = watched
        return watched

    # --- faults -------------------------------------------------------------------------------

    def inject(self, fault: str, **where: Any) -> None:
        """Inject a fault by name (:data:`offload_fsm.testing.faults.FAULTS`)."""
        fault_names.inject(self, fault, **where)

    def fail(self, spec: str) -> None:
        """The demo's ``--fail ENGINE:CALL[:N]``: that engine's N-th call of CALL (counted
        from now; every one without N) fails like an HTTP 500."""
        fault_names.fail(self, spec)

    # --- what the world watches ---------------------------------------------------------------

    def find(self, rule: str, engine_id: str, what: str, message: str) -> Finding:
        """Record a broken rule the event log cannot show (and return it)."""
        last = self.recorder.last
        finding = Finding(rule, engine_id, what, last.seq if last else 0, self.clock.now(), message)
        self.findings.append(finding)
        return finding

    def check_truth(self, engine_id: str, devices: Sequence[GpuDevice], what: str) -> None:
        """A wake onto GPUs that really hold more than the threshold is a finding."""
        if self.recorder.fail_open:
            return
        limit = self.threshold_bytes
        over = [(d, self.gpus.used(d)) for d in devices if self.gpus.used(d) > limit]
        if over:
            held = ", ".join(f"GPU {d.index} held {b / GIB:.2f} GiB" for d, b in over)
            self.find(
                WAKE_OVER_THRESHOLD,
                engine_id,
                what,
                f"{held} > threshold {limit / GIB:.2f} GiB (what the fake GPUs really held)",
            )

    # --- internals ----------------------------------------------------------------------------

    def _new_id(self, engine_id: str) -> None:
        if not isinstance(engine_id, str) or not engine_id:
            raise ConfigError("engine_id", engine_id, "a non-empty string")
        if engine_id in self.orchestrator.engines:
            raise ConfigError("engine_id", engine_id, "an id not added to this world yet")

    def _pid(self) -> int:
        self._next_pid += 1
        return self._next_pid

    def _devices(self, engine_id: str, gpus: Sequence[int]) -> tuple[GpuDevice, ...]:
        if isinstance(gpus, (str, bytes)) or not gpus:
            raise ConfigError(f"{engine_id}.gpus", gpus, "a non-empty list of GPU indices")
        return tuple(self.device(i) for i in gpus)

    async def _sim(
        self,
        engine_id: str,
        gpus: Sequence[int],
        footprint: Footprint,
        awake: bool,
        *,
        strict: bool,
        pause: bool,
    ) -> SimEngine:
        self._new_id(engine_id)
        devices = self._devices(engine_id, gpus)
        sim = SimEngine(
            engine_id,
            self.gpus,
            devices,
            pid=self._pid(),
            footprint=footprint,
            require_pause=pause,
            strict=strict,
        )
        if not awake:  # starts asleep: set up before the test, so no fault counts it
            await sim.prepare_release(1.0)
            await sim.release(None)
        return sim

    async def _register(
        self,
        sim: SimEngine,
        engine_id: str,
        pipeline: str | None,
        role: str,
        awake: bool,
        share_group: str | None,
        before_release: RouterHook | None,
        after_wake: RouterHook | None,
    ) -> None:
        adapter: Any = sim
        if before_release is not None or after_wake is not None:
            adapter = HookedEngine(sim, before_release=before_release, after_wake=after_wake)
        await self._add_spec(
            EngineSpec(
                engine_id,
                adapter,
                sim.devices,
                pipeline_id=pipeline,
                role=role,
                share_group=share_group,
                initial=State.ACTIVE if awake else State.SLEPT,
                pids=_pids(sim.pid),
            )
        )
        self.engines[engine_id] = sim

    async def _add_spec(self, spec: EngineSpec) -> None:
        await self.start()
        await self.orchestrator.register(spec)


def _residual_bytes(gib: float) -> int:
    """What an offloaded trainer keeps per GPU: 0 is allowed (unlike a threshold)."""
    if isinstance(gib, bool) or not isinstance(gib, (int, float)) or not 0 <= gib < float("inf"):
        raise ConfigError("residual_gib", gib, "a finite number of GiB >= 0")
    return gib_to_bytes(gib)


def _pids(pid: int) -> Any:
    pids = frozenset({pid})
    return lambda: pids


def _device_specs(gpus: int | Sequence[float], gpu_gib: float) -> list[FakeDeviceSpec]:
    if isinstance(gpus, bool):
        raise ConfigError("gpus", gpus, "a GPU count or a list of sizes in GiB")
    if isinstance(gpus, int):
        count = parse_positive_int("gpus", gpus)
        sizes = [parse_positive_gib("gpu_gib", gpu_gib)] * count
    else:
        sizes = [parse_positive_gib("gpus[]", g) for g in gpus]
        if not sizes:
            raise ConfigError("gpus", gpus, "at least one GPU")
    return [
        FakeDeviceSpec(name=f"simulated {s:g} GiB GPU", total_bytes=gib_to_bytes(s)) for s in sizes
    ]
