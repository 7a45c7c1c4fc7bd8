"""The state owner's fields are written by the state owner alone: the story's hooks (the engine resolved, the
speaker opened, a sentence starts) only post events, and events of an earlier telling do not touch the current one."""

from __future__ import annotations

import asyncio
import io

from robot.engine_host import EngineUnavailable
from robot.events import SentenceStarted, ShutdownRequested, Source, SpeakerOpened, State, StoryRequested
from robot.plumbing.config import load_config
from robot.plumbing.exits import Exit
from robot.plumbing.settings import RuntimeSettings
from robot.robot import Mode, Robot
from robot.story.resume import StoryStore
from tests.harness import RecordingTts
from tests.test_commands import STORY_PIECES, ScriptedHost, SlowSink, _until


class WatchedRobot(Robot):
    """Records which asyncio task sets each of its fields once it runs (None: a callback outside any task)."""

    def __init__(self, *args, **kwargs) -> None:
        self.writes: list[tuple[str, asyncio.Task | None]] | None = None
        super().__init__(*args, **kwargs)
        self.writes = []

    def __setattr__(self, name: str, value) -> None:
        writes = self.__dict__.get("writes")
        if writes is not None:
            writes.append((name, asyncio.current_task()))
        super().__setattr__(name, value)


class FailingHost:
    """An engine host whose model is bad for good."""

    async def get(self):
        await asyncio.sleep(0.05)
        raise EngineUnavailable("model.bin: not a model", is_permanent=True)

    async def close(self) -> None:
        pass


def _robot(tmp_path, host, sink, mode: Mode, story_out: io.StringIO) -> WatchedRobot:
    config = load_config(None, ["engine.max_tokens=40", "engine.seed=3"], use_system=False)
    return WatchedRobot(
        config,
        mode,
        engine_host=host,
        tts=RecordingTts(),
        open_sink=lambda: sink,
        story_out=story_out,
        diag_out=io.StringIO(),
        store=StoryStore(tmp_path / "story.json"),
        commands=None,
        settings=RuntimeSettings(0.6),
    )


def _foreign_writes(robot: WatchedRobot, owner: asyncio.Task) -> list[str]:
    return sorted({name for name, task in robot.writes if task is not owner})


def test_a_bad_model_sets_the_exit_status_through_an_event_in_the_state_owner(tmp_path):
    story_out = io.StringIO()
    robot = _robot(tmp_path, FailingHost(), SlowSink(0.0), Mode.TELL, story_out)

    async def go() -> int:
        owner = asyncio.create_task(robot.run())
        robot.post(StoryRequested("a dragon who loves tea", Source.TEXT, 0.0))
        code = await asyncio.wait_for(owner, 30)
        assert _foreign_writes(robot, owner) == []
        return code

    assert asyncio.run(go()) == Exit.BAD_MODEL  # told (canned), and the bad model reported
    assert robot.results[0].outcome.startswith("canned")
    assert story_out.getvalue().splitlines() == robot.results[0].sentences  # printed as spoken, in order


def test_the_speaker_and_the_sentences_reach_the_state_owner_as_events(tmp_path):
    sink = SlowSink(0.2)
    robot = _robot(tmp_path, ScriptedHost(), sink, Mode.DAEMON, io.StringIO())

    async def go() -> None:
        owner = asyncio.create_task(robot.run())
        try:
            robot.post(StoryRequested("a dragon who loves tea", Source.TEXT, 0.0))
            await _until(lambda: robot.state is State.SPEAKING)
            assert robot._sink is sink  # SpeakerOpened was handled before the first sentence made it audible
            assert list(robot._recently_said) == [robot._teller._tts.spoken[0]]
            robot.post(SpeakerOpened(robot._story_number - 1, object()))  # an earlier telling's speaker: ignored
            robot.post(SentenceStarted(robot._story_number - 1, 0, "an old sentence."))
            await _until(lambda: "an old sentence." in robot._recently_said)
            assert robot._sink is sink
            await _until(lambda: robot.state is State.IDLE, 20.0)
            assert robot._sink is None  # the finished story's speaker is forgotten by the state owner
            assert _foreign_writes(robot, owner) == []
        finally:
            robot.post(ShutdownRequested("test"))
            await asyncio.wait_for(owner, 10)
            await robot._engine_host.close()

    asyncio.run(asyncio.wait_for(go(), 60))
    assert robot.results[0].outcome == "finished"
    assert robot.results[0].sentences[-1] == STORY_PIECES[-1].strip()


def test_an_earlier_tellings_first_sentence_does_not_make_the_next_one_audible(tmp_path):
    robot = _robot(tmp_path, ScriptedHost(), SlowSink(0.0), Mode.DAEMON, io.StringIO())

    async def go() -> None:
        robot._story_number = 2
        robot.state = State.THINKING
        await robot._handle(SentenceStarted(1, 0, "The end of the last story."))
        assert robot.state is State.THINKING
        await robot._handle(SentenceStarted(2, 0, "Once upon a time."))
        assert robot.state is State.SPEAKING

    asyncio.run(go())
