"""Run configuration files: strict loading, and a driver run with real HTTP engines."""

from __future__ import annotations

import contextlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from offload_fsm.core.errors import ConfigError, EngineError
from offload_fsm.drivers.config_file import load_hook, load_run_config
from offload_fsm.drivers.config_world import build_config_world
from offload_fsm.drivers.runner import RunOptions, run_configured
from offload_fsm.probe.base import GIB
from offload_fsm.replay import replay_path
from offload_fsm.sim.fake_backend import FakeBackend
from offload_fsm.sim.fake_devices import make_devices
from offload_fsm.sim.fake_gpus import FakeGpus
from offload_fsm.sim.sim_model import Footprint
from offload_fsm.sim.sim_proc import ledger_dir_source
from offload_fsm.sim.sim_server import SimServerProcess
from tests import config_hooks
from tests.conftest import ASYNCIO

ENGINES = """
[[pipeline]]
name = "p1"
train = [0]
infer = [0, 1]

[[engine]]
id = "p1.engine0"
pipeline = "p1"
role = "engine"
adapter = "sglang"
url = "URL0"
root_pid = PID0
gpus = [0]

[[engine]]
id = "p1.engine1"
pipeline = "p1"
role = "engine"
adapter = "sglang"
url = "URL1"
root_pid = PID1
gpus = [1]

[[engine]]
id = "p1.trainer"
pipeline = "p1"
role = "trainer"
adapter = "trainer"
offload = "tests.config_hooks:offload"
onload = "tests.config_hooks:onload"
gpus = [0]
"""


def _write(tmp_path: Path, text: str, name: str = "run.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_valid_toml_and_json(tmp_path: Path) -> None:
    text = ENGINES.replace("PID0", "11").replace("PID1", "12")
    cfg = load_run_config(_write(tmp_path, "[run]\nsettle = 2\n" + text))
    assert cfg.run == {"settle": 2}
    assert [e.id for e in cfg.engines] == ["p1.engine0", "p1.engine1", "p1.trainer"]
    data = {
        "pipeline": [{"name": "p", "train": [0], "infer": [0]}],
        "engine": [
            {
                "id": "e",
                "pipeline": "p",
                "role": "engine",
                "adapter": "vllm",
                "url": "http://x",
                "gpus": ["GPU-abc"],
            }
        ],
    }
    cfg = load_run_config(_write(tmp_path, json.dumps(data), "run.json"))
    assert cfg.engines[0].gpus == ("GPU-abc",)


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda t: t.replace('url = "URL0"', 'urll = "URL0"'), r"engine\[0\]\.urll"),
        (lambda t: t.replace("root_pid = PID0", 'root_pid = "x"'), r"engine\[0\]\.root_pid"),
        (lambda t: t.replace('adapter = "sglang"', 'adapter = "triton"', 1), "sglang | vllm"),
        (lambda t: t.replace('url = "URL1"\n', ""), r"engine\[1\]\.url"),
        (lambda t: t.replace("gpus = [1]", "gpus = []"), r"engine\[1\]\.gpus"),
        (lambda t: t.replace('id = "p1.engine1"', 'id = "p1.engine0"'), "distinct ids"),
        (
            lambda t: t.replace(
                'pipeline = "p1"\nrole = "trainer"', 'pipeline = "p9"\nrole = "trainer"'
            ),
            "one of the pipelines",
        ),
        (lambda t: t + "\n[extra]\nx = 1\n", "extra"),
        (lambda t: t.replace("[[pipeline]]", "[[pipeline"), "valid TOML"),
    ],
)
def test_bad_config_names_the_key(tmp_path: Path, edit, match: str) -> None:  # type: ignore[no-untyped-def]
    text = edit(ENGINES).replace("PID0", "11").replace("PID1", "12")
    with pytest.raises(ConfigError, match=match):
        load_run_config(_write(tmp_path, text))


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="readable file"):
        load_run_config(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match=r"\.toml or \.json"):
        load_run_config(_write(tmp_path, "x", "run.yaml"))
    with pytest.raises(ConfigError, match="at least one"):
        load_run_config(_write(tmp_path, "[run]\nsteps = 1\n"))


def test_load_hook() -> None:
    assert load_hook("tests.config_hooks:offload", "h") is config_hooks.offload
    for spec, match in [
        ("nocolon", "module:function"),
        ("tests.config_hooks:nope", "importable"),
        ("no_such_module_x:f", "importable"),
        ("tests.config_hooks:not_callable", "a callable"),
    ]:
        with pytest.raises(ConfigError, match=match):
            load_hook(spec, "h")


@pytest.mark.parametrize("anyio_backend", [ASYNCIO])
async def test_driver_runs_real_http_engines_from_a_config(tmp_path: Path) -> None:
    devices = make_devices(2)
    ledger = tmp_path / "ledger"
    ledger.mkdir()
    fp = Footprint.gib(weights=2, kv_cache=20, cuda_graph=0.5)
    gpus = FakeGpus(devices)
    gpus.add_source(ledger_dir_source(ledger))
    config_hooks.LEDGER[:] = [gpus]
    config_hooks.calls.clear()
    gpus.set_usage(config_hooks.TRAINER_PID, 0, int(0.6 * GIB))  # the trainer starts offloaded
    with (
        SimServerProcess.start(ledger, [devices[0].key], fp) as s0,
        SimServerProcess.start(ledger, [devices[1].key], fp) as s1,
    ):
        text = (
            ENGINES.replace("URL0", s0.url)
            .replace("URL1", s1.url)
            .replace("PID0", str(s0.pid))
            .replace("PID1", str(s1.pid))
        )
        config = load_run_config(_write(tmp_path, "[run]\nsteps = 2\n" + text))
        opts = RunOptions(
            topologies=(),
            threshold_bytes=8 * GIB,
            out_dir=tmp_path,
            run_id="cfg",
            steps=2,
            rollout_s=0.1,
            train_s=0.1,
            progress=False,
        )
        outcome = await run_configured(opts, config, probe=FakeBackend(gpus), pid_namespace="host")
    assert outcome.status == "ok", outcome.error
    assert config_hooks.calls == ["onload", "offload", "onload", "offload"]
    result = replay_path(outcome.log_path)
    assert result.ok, result.violations
    assert {e: t.state for e, t in result.engines.items()} == {
        "p1.engine0": "slept",
        "p1.engine1": "slept",
        "p1.trainer": "slept",
    }


def _with_key(url: str, key: str, adapter: str = "sglang") -> str:
    text = ENGINES.replace("URL0", url).replace("URL1", "http://127.0.0.1:2")
    text = text.replace("PID0", "11").replace("PID1", "12")
    engine0 = 'adapter = "sglang"\nurl = "' + url + '"'
    assert engine0 in text
    return text.replace(engine0, f'adapter = "{adapter}"\nurl = "{url}"\napi_key = "{key}"', 1)


def test_api_key_is_read_kept_out_of_reprs_and_checked(tmp_path: Path) -> None:
    cfg = load_run_config(_write(tmp_path, _with_key("http://127.0.0.1:1", "Kq-key-1234")))
    assert cfg.engines[0].api_key == "Kq-key-1234"
    assert "Kq-key-1234" not in repr(cfg)  # a repr in a traceback or a debugger stays clean
    for url, key, says in [
        ("http://127.0.0.1:1", " Kq-key-1234", "without spaces"),
        ("http://127.0.0.1:1", "", "non-empty"),
        ("http://u:Kq-pw-5678@127.0.0.1:1", "Kq-key-1234", "not both"),
    ]:
        with pytest.raises(ConfigError, match=says) as info:
            load_run_config(_write(tmp_path, _with_key(url, key)))
        assert "Kq-key-1234" not in str(info.value) and "Kq-pw-5678" not in str(info.value)
    trainer_key = ENGINES.replace(
        'onload = "tests.config_hooks:onload"',
        'api_key = "Kq-x-999"\nonload = "tests.config_hooks:onload"',
    )
    with pytest.raises(ConfigError, match="only for adapter"):
        load_run_config(_write(tmp_path, trainer_key.replace("PID0", "1").replace("PID1", "2")))


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.parametrize("adapter", ["sglang", "vllm"])
async def test_api_key_is_sent_as_a_bearer_token(tmp_path: Path, adapter: str) -> None:
    """What SGLang's and vLLM's ``--api-key`` check (docs/integration.md), on a real socket."""
    seen: list[str | None] = []

    class Recorder(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            seen.append(self.headers.get("Authorization"))
            self.send_response(200)
            self.send_header("Content-Length", "4")
            self.end_headers()
            self.wfile.write(b"null")

        do_GET = do_POST = _answer

        def log_message(self, *args: object) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        cfg = load_run_config(_write(tmp_path, _with_key(url, "Kq-key-1234", adapter)))
        world = await build_config_world(cfg, FakeBackend(FakeGpus(make_devices(2))), "host")
        try:
            with contextlib.suppress(EngineError):  # what it answers does not matter here
                await world.adapters[0].release(None)
        finally:
            await world.aclose()
    finally:
        server.shutdown()
        server.server_close()
    assert seen and set(seen) == {"Bearer Kq-key-1234"}
