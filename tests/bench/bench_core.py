"""Core benchmark: lifecycle transition + bus publish, bus throughput, JSONL encode/decode.

    python -m tests.bench.bench_core [--quick]

Every figure is printed next to its baselines from the same run (same machine, same load):
a dict lookup in TABLE and a bare ``transitions.Machine`` trigger for the transition; stdlib
``json`` and ``orjson`` next to the msgspec codec for JSONL (orjson is a bench-only import,
not a project dependency).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import platform
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import msgspec
import transitions

from offload_fsm.core.lifecycle import TABLE, Lifecycle, State, Trigger, next_state
from offload_fsm.events import codec
from offload_fsm.events.bus import EventBus, Recorder, Subscription
from offload_fsm.events.eventlog import EventLogWriter, read_events
from offload_fsm.events.kinds import (
    AdapterCallFinished,
    AdapterCallStarted,
    AttributionReport,
    Event,
    GateDecision,
    MemorySample,
    ProcessEntry,
    Transition,
)

try:
    import orjson
except ImportError:  # bench-only: the figures just leave it out
    orjson = None

CYCLE = (Trigger.RELEASE, Trigger.RELEASED, Trigger.REQUEST_WAKE, Trigger.GATE_OPEN, Trigger.WOKEN)
SUBSCRIBERS = 4
GIB = 1 << 30


def machine_info() -> str:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"nproc={os.cpu_count()} cpu={cpu!r} load average={load} "
        f"python={platform.python_version()} "
        f"transitions={transitions.__version__} msgspec={msgspec.__version__} "
        f"orjson={getattr(orjson, '__version__', 'absent')} anyio={_version('anyio')} "
        f"trio={_version('trio')}"
    )


def _version(dist: str) -> str:
    from importlib.metadata import version

    return version(dist)


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def row(name: str, value: str, note: str = "") -> None:
    print(f"  {name:<52} {value:>16}  {note}")


# --- 1. one transition + publish to 4 subscribers -------------------------------------------


def per_call_us(fn: Callable[[], object], n: int) -> float:
    """Mean µs per call over ``n`` calls (for ops too small to time one at a time)."""
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n * 1e6


def bare_machine_trigger_us(n: int) -> list[float]:
    """A plain transitions.Machine (string states, same edges) firing the same cycle."""

    class Model:
        pass

    model = Model()
    machine = transitions.Machine(
        model=model,
        states=[s.value for s in State],
        transitions=[
            {"trigger": t.value, "source": s.value, "dest": d.value}
            for (s, t), dsts in TABLE.items()
            for d in dsts
            if len(dsts) == 1
        ],
        initial="active",
        auto_transitions=False,
    )
    samples = []
    clock = time.perf_counter_ns
    for i in range(n):
        name = CYCLE[i % 5].value
        t0 = clock()
        machine.events[name].trigger(model)
        samples.append((clock() - t0) / 1e3)
    return samples


def lifecycle_fire_us(n: int) -> list[float]:
    lc = Lifecycle("e0")
    samples = []
    clock = time.perf_counter_ns
    for i in range(n):
        trigger = CYCLE[i % 5]
        t0 = clock()
        lc.fire(trigger)
        samples.append((clock() - t0) / 1e3)
    return samples


async def fire_and_publish_us(n: int, *, fire: bool, publish: bool) -> list[float]:
    """p50 input: one ``Lifecycle.fire`` and/or one ``Recorder.emit`` to 4 subscribers.

    Subscribers are parked in ``receive`` when the clock starts (the realistic case: an idle
    subscriber waiting for the next event, which the publish wakes) and drain between
    iterations, outside the timed part.
    """
    bus = EventBus()
    rec = Recorder(bus, "bench")
    lc = Lifecycle("e0")
    counts = [0] * SUBSCRIBERS
    samples: list[float] = []
    clock = time.perf_counter_ns

    async def drain(i: int, sub: Subscription) -> None:
        async for _ in sub:
            counts[i] += 1

    async with anyio.create_task_group() as tg:
        subs = [bus.subscribe(f"s{i}") for i in range(SUBSCRIBERS)]
        for i, sub in enumerate(subs):
            tg.start_soon(drain, i, sub)
        while not all(s._reader for s in subs):  # parked in receive
            await anyio.lowlevel.checkpoint()
        expected = 0
        for i in range(n):
            trigger = CYCLE[i % 5]
            t0 = clock()
            if fire:
                step = lc.fire(trigger)
            if publish:
                await rec.emit(
                    Transition,
                    engine_id="e0",
                    gpus=("GPU-0",),
                    src=step.src.value if fire else "active",
                    dst=step.dst.value if fire else "releasing",
                    trigger=trigger.value,
                )
            samples.append((clock() - t0) / 1e3)
            if publish:
                expected += 1
                # Untimed: every subscriber takes the event and parks for the next one.
                while min(counts) < expected or not all(s._reader for s in subs):
                    await anyio.lowlevel.checkpoint()
        bus.close()
    return samples


def best_round(rounds: int, run: Callable[[], list[float]]) -> tuple[float, float]:
    """(p50, p95) of the round with the lowest p50: the others ran while this shared
    machine was busier (the same idea as best-of-N for the throughput figures)."""
    results = [run() for _ in range(rounds)]
    best = min(results, key=lambda r: pct(r, 0.5))
    return pct(best, 0.5), pct(best, 0.95)


def bench_transition(backends: Sequence[str], n: int, rounds: int) -> None:
    print(
        f"\n1. one transition + publish to 4 subscribers (µs per operation; {n} each, best of "
        f"{rounds} rounds by p50)"
    )
    print(f"  {'':<52} {'p50':>7} {'p95':>8}")
    lookup = min(
        per_call_us(lambda: next_state(State.ACTIVE, Trigger.RELEASE), n * 5) for _ in range(rounds)
    )
    row("dict lookup in TABLE (next_state), mean", f"{lookup:7.2f}", "baseline")
    for name, bench in (
        ("bare transitions.Machine trigger", bare_machine_trigger_us),
        ("Lifecycle.fire (Machine behind the table)", lifecycle_fire_us),
    ):
        p50, p95 = best_round(rounds, lambda b=bench: b(n))
        row(name, f"{p50:7.2f} {p95:8.2f}", "tight loop, warm caches")
    for backend in backends:
        for label, fire, publish in (
            ("Recorder.emit to 4 subscribers", False, True),
            ("Lifecycle.fire + Recorder.emit to 4 subscribers", True, True),
        ):

            def one_round(f: bool = fire, p: bool = publish, b: str = backend) -> list[float]:
                return anyio.run(lambda: fire_and_publish_us(n, fire=f, publish=p), backend=b)

            p50, p95 = best_round(rounds, one_round)
            row(
                f"[{backend}] {label}",
                f"{p50:7.2f} {p95:8.2f}",
                "target <= 40 µs p50" if fire else "",
            )


# --- 1b. what an engine's lifecycle and an event cost ----------------------------------


def bytes_per(make: Callable[[int], object], count: int) -> float:
    """Bytes allocated and kept per object, over ``count`` of them (tracemalloc)."""
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    kept = [make(i) for i in range(count)]
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert len(kept) == count
    return (after - before) / count


def machine_per_engine(i: int) -> object:
    """The baseline: a transitions.Machine of its own per engine (same states and edges)."""

    class Model:
        pass

    model = Model()
    transitions.Machine(
        model=model,
        states=list(State),
        transitions=[
            {"trigger": t.value, "source": s, "dest": d}
            for (s, t), dsts in TABLE.items()
            for d in dsts
        ],
        initial=State.ACTIVE,
        auto_transitions=False,
    )
    return model


def unfrozen_copy(kind: type[Event]) -> type:
    """The same fields as ``kind`` in a dataclass that is not frozen (the baseline)."""
    fields = [
        (f.name, f.type, dataclasses.field(default=f.default))
        if f.default is not dataclasses.MISSING
        else (f.name, f.type)
        for f in dataclasses.fields(kind)
    ]
    return dataclasses.make_dataclass(f"Unfrozen{kind.__name__}", fields, slots=True, kw_only=True)


BASE = "baseline"


EVENT_FIELDS: dict[type[Event], dict[str, Any]] = {
    Transition: dict(
        engine_id="e", pipeline_id="p", gpus=("g",), src="active", dst="releasing",
        trigger="release", reason=None, evidence=None,
    ),
    GateDecision: dict(
        engine_id="e", pipeline_id="p", gpus=("g",), gate="release", passed=True, opened=False,
        observed_bytes=(1,), limit_bytes=2, settle_count=1, settle_required=3, attempt=1,
        elapsed_s=0.1, detail="x",
    ),
}  # fmt: skip


def bench_costs(n: int, rounds: int) -> None:
    print("\n1b. what an engine's lifecycle and an event cost")
    shared = bytes_per(lambda i: Lifecycle(f"e{i}"), 1_000)
    own = bytes_per(machine_per_engine, 200)
    row("memory per Lifecycle (one shared machine)", f"{shared / 1024:7.2f} KiB", "as shipped")
    row("memory per engine with a Machine of its own", f"{own / 1024:7.2f} KiB", "baseline")
    for kind, fields in EVENT_FIELDS.items():
        variants = (
            (kind, f"build a {kind.__name__} (frozen, as shipped), mean", ""),
            (unfrozen_copy(kind), "build the same fields, not frozen, mean", BASE),
        )
        for cls, label, note in variants:
            us = min(
                per_call_us(lambda k=cls, f=fields: k(seq=1, ts=1.0, run_id="r", **f), n)
                for _ in range(rounds)
            )
            row(label, f"{us:7.2f} µs", note)


# --- 2. bus throughput ------------------------------------------------------------------


async def bus_throughput(n: int, *, stamp: bool) -> float:
    """Events/s published to 4 subscribers that drain concurrently (BLOCK, capacity 1024)."""
    bus = EventBus()
    rec = Recorder(bus, "bench")
    event = Transition(seq=1, ts=0.0, run_id="bench", src="active", dst="releasing", trigger="r")
    done = [0] * SUBSCRIBERS

    async def drain(i: int, sub: Subscription) -> None:
        async for _ in sub:
            done[i] += 1

    async with anyio.create_task_group() as tg:
        for i in range(SUBSCRIBERS):
            tg.start_soon(drain, i, bus.subscribe(f"s{i}"))
        await anyio.lowlevel.checkpoint()
        t0 = time.perf_counter()
        if stamp:
            for _ in range(n):
                await rec.emit(
                    Transition, engine_id="e0", src="active", dst="releasing", trigger="r"
                )
        else:
            for _ in range(n):
                await bus.publish(event)
        bus.close()
    elapsed = time.perf_counter() - t0
    assert done == [n] * SUBSCRIBERS, done
    return n / elapsed


def bench_bus(backends: Sequence[str], n: int, repeats: int) -> None:
    print(f"\n2. bus throughput, 4 subscribers draining (events/s, best of {repeats})")
    for backend in backends:
        for label, stamp in (
            ("bus.publish (pre-built event)", False),
            ("Recorder.emit (builds + stamps the event)", True),
        ):
            best = max(
                anyio.run(lambda s=stamp: bus_throughput(n, stamp=s), backend=backend)
                for _ in range(repeats)
            )
            row(f"[{backend}] {label}", f"{best:>10,.0f}")


# --- 3. JSONL encode / decode -----------------------------------------------------------


def corpus(n: int) -> list[Event]:
    """A run-like mix: memory samples and gate decisions dominate, as in a real log."""
    out: list[Event] = []
    env: dict[str, Any] = {"run_id": "bench-run", "pipeline_id": "p1", "engine_id": "engine0"}
    gpus = ("GPU-3f1c2a8e-0000-0000-0000-000000000001",)
    for i in range(n):
        seq, ts = i + 1, 1_700_000_000.0 + i * 0.01
        k = i % 10
        if k < 4:
            e: Event = MemorySample(
                seq=seq,
                ts=ts,
                **env,
                gpus=gpus,
                backend="nvml",
                used_bytes=5 * GIB + i,
                free_bytes=75 * GIB - i,
                total_bytes=80 * GIB,
                reserved_bytes=512 << 20,
            )
        elif k < 7:
            e = GateDecision(
                seq=seq,
                ts=ts,
                **env,
                gpus=gpus,
                gate="wake",
                passed=True,
                opened=k == 6,
                observed_bytes=(5 * GIB + i,),
                limit_bytes=7 * GIB,
                settle_count=k - 3,
                settle_required=3,
                attempt=k - 3,
                elapsed_s=0.2 * (k - 3),
            )
        elif k == 7:
            e = Transition(
                seq=seq, ts=ts, **env, gpus=gpus, src="gated", dst="waking", trigger="gate_open"
            )
        elif k == 8:
            e = AdapterCallStarted(
                seq=seq, ts=ts, **env, gpus=gpus, call="resume", detail="tags=weights,kv_cache"
            )
        elif i % 20 == 9:
            e = AdapterCallFinished(seq=seq, ts=ts, **env, gpus=gpus, call="resume", elapsed_s=1.25)
        else:
            e = AttributionReport(
                seq=seq,
                ts=ts,
                **env,
                gpus=gpus,
                used_bytes=(5 * GIB,),
                engine_resident_bytes=(int(2.5 * GIB),),
                unattributed_bytes=(GIB,),
                processes=(
                    ProcessEntry(gpu=gpus[0], pid=4242, used_bytes=int(2.5 * GIB), owner="engine0"),
                    ProcessEntry(gpu=gpus[0], pid=777, used_bytes=int(1.5 * GIB), owner="foreign"),
                ),
                context="after_release",
            )
        out.append(e)
    return out


def _plain(obj: Any) -> Any:
    """stdlib json ``default=``: a dataclass as a dict, ``kind`` first for events."""
    fields = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    return {"kind": obj.kind, **fields} if isinstance(obj, Event) else fields


_KINDS = {cls.kind: cls for cls in (type(e) for e in corpus(20))}
_NESTED = {"processes": ProcessEntry}


def _build(obj: dict[str, Any]) -> Event:
    """dict -> event for the stdlib/orjson paths (lists back to tuples; no validation)."""
    cls = _KINDS[obj.pop("kind")]
    for key, value in obj.items():
        if type(value) is list:
            if key in _NESTED:
                obj[key] = tuple(_NESTED[key](**v) for v in value)
            else:
                obj[key] = tuple(value)
    return cls(**obj)


def rate(fn: Callable[[], object], items: int, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        gc.collect()
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return items / best


def bench_codec(n: int, repeats: int) -> None:
    events = corpus(n)
    lines = [codec.encode(e) for e in events]
    size = sum(map(len, lines)) / len(lines)
    print(
        f"\n3. JSONL encode / decode ({n} events, mean line {size:.0f} B, events/s, best of "
        f"{repeats})"
    )
    json_dumps = json.JSONEncoder(separators=(",", ":"), default=_plain).encode

    def orjson_encode(e: Event) -> bytes:
        assert orjson is not None
        body = orjson.dumps(e)
        return b'{"kind":"%s",%s' % (e.kind.encode(), body[1:])

    encoders: list[tuple[str, Callable[[], object]]] = [
        ("codec.encode (msgspec)", lambda: [codec.encode(e) for e in events]),
        ("stdlib json.dumps (default= hook)", lambda: [json_dumps(e).encode() for e in events]),
    ]
    if orjson is not None:
        encoders.append(("orjson.dumps", lambda: [orjson_encode(e) for e in events]))
    for label, fn in encoders:
        row(f"encode  {label}", f"{rate(fn, n, repeats):>10,.0f}")

    # The other encoders must write lines the codec reads back to the same events.
    assert [codec.decode(json_dumps(e)) for e in events[:50]] == events[:50]
    if orjson is not None:
        assert [codec.decode(orjson_encode(e)) for e in events[:50]] == events[:50]
    assert [_build(json.loads(line)) for line in lines[:50]] == events[:50]

    generic = msgspec.json.Decoder()
    decoders: list[tuple[str, Callable[[], object]]] = [
        ("codec.decode (msgspec, typed + validated)", lambda: [codec.decode(x) for x in lines]),
        (
            "stdlib json.loads -> event (no validation)",
            lambda: [_build(json.loads(x)) for x in lines],
        ),
    ]
    if orjson is not None:
        decoders.append(
            (
                "orjson.loads -> event (no validation)",
                lambda: [_build(orjson.loads(x)) for x in lines],
            )
        )
    decoders += [
        ("parse only: msgspec -> dict", lambda: [generic.decode(x) for x in lines]),
        ("parse only: stdlib json.loads -> dict", lambda: [json.loads(x) for x in lines]),
    ]
    if orjson is not None:
        decoders.append(
            ("parse only: orjson.loads -> dict", lambda: [orjson.loads(x) for x in lines])
        )
    for label, fn in decoders:
        note = "target >= 200k" if label.startswith("codec") else ""
        row(f"decode  {label}", f"{rate(fn, n, repeats):>10,.0f}", note)

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.jsonl"
        t0 = time.perf_counter()
        with EventLogWriter(path) as log:
            for e in events:
                log.write(e)
        write_rate = n / (time.perf_counter() - t0)
        row("eventlog  EventLogWriter.write (one write(2) each)", f"{write_rate:>10,.0f}")

        def read_all() -> None:
            count = sum(1 for _ in read_events(path))
            assert count == n

        row(
            "eventlog  read_events (streamed from the file)",
            f"{rate(read_all, n, repeats):>10,.0f}",
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.bench_core")
    parser.add_argument("--quick", action="store_true", help="fewer iterations (smoke run)")
    args = parser.parse_args(argv)
    n, repeats = (2_000, 2) if args.quick else (10_000, 3)
    print(machine_info())
    bench_transition(("asyncio", "trio"), n, repeats)
    bench_costs(n * 5, repeats)
    bench_bus(("asyncio", "trio"), n * 2, repeats)
    bench_codec(n * 2, repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
