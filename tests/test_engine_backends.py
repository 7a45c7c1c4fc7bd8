"""The engine registry (engines/registry.py): the back ends robot/ asks for, and the `command` back end, which
launches any program that speaks docs/engine-protocol.md with its argv from engine.command."""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path

import pytest

from engines import registry
from robot.engine_host import EngineHost, EngineUnavailable
from robot.memory import plan as mp
from robot.plumbing.config import ConfigError, EngineConfig, check_semantics, load_config
from tests.conftest import write_wav
from tests.soundroom import Daemon, Recorder

SCRIPTED_ENGINE = str(Path(__file__).with_name("scripted_engine.py"))
PIECES = [" It", " drank", " warm", " milk", " by", " the", " fire", "."]


def command_setting(*argv: str) -> str:
    return "engine.command=" + json.dumps(list(argv))  # a JSON list of strings is a TOML array


def test_every_back_end_is_an_engine_backend_choice():
    config = load_config(None, [], use_system=False)
    field = {f.name: f for f in type(config.engine).__dataclass_fields__.values()}["backend"]
    assert set(field.metadata["choices"]) == set(registry.names()) >= {"llama2c", "llama.cpp", "command"}
    with pytest.raises(ConfigError, match=r"engine.backend is 'npu', expected one of"):
        load_config(None, ["engine.backend=npu"], use_system=False)


def test_the_command_back_end_needs_its_command_line():
    config = load_config(None, ["engine.backend=command"], use_system=False)
    with pytest.raises(ConfigError, match=r"--set engine.backend=command: engine.command: required"):
        check_semantics(config)
    with pytest.raises(ConfigError, match="expected a list of strings"):
        load_config(None, ["engine.backend=command", "engine.command=/opt/npu/engine"], use_system=False)
    check_semantics(load_config(None, ["engine.backend=command", command_setting("/bin/engine")], use_system=False))


def test_the_command_back_end_is_launched_as_configured_and_its_model_chooses_nothing(tmp_path):
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF" + bytes(64))  # another back end's file: for command, the program decides
    host = EngineHost(EngineConfig(backend="command", model=str(gguf), command=("/opt/npu/engine", "--serve")))
    assert host.resolve_model() == str(gguf)
    assert host.config.backend == "command"
    assert host.argv(str(gguf)) == ["/opt/npu/engine", "--serve"]
    assert host.chat_template() == ""
    with pytest.raises(EngineUnavailable, match="engine.command: required") as e:
        EngineHost(EngineConfig(backend="command")).resolve_model()
    assert e.value.is_permanent


def test_no_memory_plan_is_made_for_the_command_back_end():
    config = load_config(None, ["engine.backend=command", command_setting("/bin/engine")], use_system=False)
    with pytest.raises(mp.NoModelToPlan, match="'command' declares no memory footprint"):
        mp.plan_from_config(config)


def test_a_model_file_still_chooses_between_the_back_ends_that_read_model_files(tmp_path):
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF" + bytes(64))
    assert registry.backend_for_file(str(gguf)) == "llama.cpp"
    assert registry.backend_for_file(str(tmp_path / "missing.bin")) == ""
    (tmp_path / "ck.bin").write_bytes(bytes(300))
    assert registry.backend_for_file(str(tmp_path / "ck.bin")) == "llama2c"


@pytest.mark.soundroom
def test_the_daemon_tells_a_spoken_story_through_a_command_engine(sound_room, espeak, tmp_path):
    # the dragon request: from the sound-room daemons' warm cepstral mean (tests/soundroom.py warm_state_dir)
    # PocketSphinx hears "...a cat who likes milk" as "...a cats who like milk" (the grammar allows "a cats")
    request = write_wav(tmp_path / "request.wav", espeak("tell me a story about a dragon who loves tea"), 16000)
    recorder = Recorder()
    robot = Daemon(
        sound_room,
        tmp_path / "state",
        "engine.backend='command'",
        command_setting(sys.executable, SCRIPTED_ENGINE, json.dumps(PIECES)),
    )
    try:
        robot.wait_until(lambda: any("listening on" in line for line in robot.stderr), 60, "listening")
        engine = robot.engine_pid()
        assert engine is not None, "".join(robot.stderr)[-2000:]
        assert SCRIPTED_ENGINE in Path(f"/proc/{engine}/cmdline").read_bytes().decode().split("\0")
        time.sleep(0.5)  # room sound for the detector's calibration
        sound_room.play_into_room(request)
        robot.wait_until(lambda: len(robot.stdout) >= 2, 90, "the story")
        robot.wait_until(lambda: any("speaking -> idle" in line for line in robot.stderr), 30, "the story's end")
        robot.proc.send_signal(signal.SIGTERM)
        assert robot.proc.wait(15) == 0, "".join(robot.stderr)[-3000:]
    finally:
        robot.proc.kill()
        recorder.stop()
    assert [line.strip() for line in robot.stdout[:2]] == [
        "Once upon a time, there was a dragon who loved tea.",
        "It drank warm milk by the fire.",
    ]
    assert recorder.speech_seconds() >= 2.0, "the story was not heard from the speaker"


def test_the_state_owner_alone_acts_on_a_memory_guard_step(tmp_path):
    """A MemoryPressure event holds the engine stopped, and a lower level releases it with the planned context:
    the guard only posts; the robot applies the step (a real engine process through the command back end)."""
    import asyncio
    import io

    from robot.events import MemoryPressure, ShutdownRequested
    from robot.robot import Mode, Robot
    from tests.harness import NullSink, RecordingTts

    config = load_config(
        None, ["engine.backend=command", command_setting(sys.executable, SCRIPTED_ENGINE, "[]")], use_system=False
    )

    async def go() -> None:
        host = EngineHost(config.engine)
        robot = Robot(
            config,
            Mode.DAEMON,
            engine_host=host,
            tts=RecordingTts(),
            open_sink=NullSink,
            story_out=io.StringIO(),
            diag_out=io.StringIO(),
        )
        running = asyncio.create_task(robot.run())
        try:
            await host.get()
            pid = host.engine_pid
            assert pid is not None
            robot.post(MemoryPressure(4, "memory short", context_tokens=512, engine_hold="memory pressure (test)"))
            await asyncio.wait_for(_until(lambda: host.engine_pid is None), 10)
            assert robot.memory_level == 4 and robot.problems["memory"] == "memory short"
            with pytest.raises(EngineUnavailable, match=r"memory pressure \(test\)"):
                await host.get()
            robot.post(MemoryPressure(0, "", context_tokens=1024))
            await asyncio.wait_for(_until(lambda: "memory" not in robot.problems), 10)
            assert (await host.get()).is_running and host.config.context_tokens == 1024
        finally:
            robot.post(ShutdownRequested("test"))
            await asyncio.wait_for(running, 10)
            await host.close()

    asyncio.run(go())


async def _until(predicate) -> None:
    import asyncio

    while not predicate():
        await asyncio.sleep(0.02)
