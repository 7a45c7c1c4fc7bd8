"""Configuration: every mistake names the file, the key or line, and what was expected; the CLI exits 78."""

from __future__ import annotations

import subprocess

import pytest

from robot.plumbing.config import EX_CONFIG, Config, ConfigError, check_semantics, load_config
from tests.conftest import STORYBOT


def test_the_documented_defaults_load_and_match_the_dataclass_defaults():
    assert load_config(use_system=False) == Config()


def test_a_file_and_overrides_layer_over_the_defaults(tmp_path):
    f = tmp_path / "board.toml"
    f.write_text("[engine]\nthreads = 1\nmax_tokens = 64\n")
    config = load_config(f, ["engine.max_tokens=32", "tts.backend=pyttsx3", "asr.grammar=['stop', 'go']"])
    assert config.engine.threads == 1
    assert config.engine.max_tokens == 32  # --set wins over the file
    assert config.tts.backend == "pyttsx3"  # a bare word is a string
    assert config.asr.grammar == ("stop", "go")
    assert config.engine.top_k == 40  # untouched keys keep their defaults


BAD_FILES = [
    # (TOML text, what the message must contain)
    ("[engine]\nthreads = 0\n", ["engine.threads", "is 0", "expected 1 to 64"]),
    ("[engine]\nthreads = 2.5\n", ["engine.threads", "2.5", "expected an integer"]),
    ("[engine]\nthreads = true\n", ["engine.threads", "a boolean", "expected an integer"]),
    ('[engine]\ntemperature = "hot"\n', ["engine.temperature", "'hot'", "expected a number"]),
    ("[engine]\nthread = 2\n", ["unknown key engine.thread", "threads"]),
    ("[engin]\nthreads = 2\n", ["unknown section [engin]", "engine"]),
    ('[tts]\nbackend = "espeak"\n', ["tts.backend", "'espeak'", "['flite', 'pyttsx3', 'espeak-ng']"]),
    ('[asr]\ngrammar = "stop"\n', ["asr.grammar", "a list of strings"]),
    ('[asr]\ngrammar = ["stop", 3]\n', ["asr.grammar", "a list of strings"]),
    ("[vad]\nend_silence_ms = 99999\n", ["vad.end_silence_ms", "99999", "200 to 5000"]),
    ("[audio]\nvolume = 1.5\n", ["audio.volume", "1.5", "0 to 1"]),
    ("engine = 3\n", ["engine must be a table"]),
    ("[engine]\nthreads = = 2\n", ["TOML syntax error", "line 2"]),
    ("[engine\nthreads = 2\n", ["TOML syntax error", "line 1"]),
]


@pytest.mark.parametrize("text,expected", BAD_FILES, ids=[b[0].replace("\n", " ")[:40] for b in BAD_FILES])
def test_a_bad_file_names_itself_the_key_and_the_expectation(tmp_path, text, expected):
    f = tmp_path / "bad.toml"
    f.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(f)
    message = str(e.value)
    assert str(f) in message
    for part in expected:
        assert part in message, message


BAD_OVERRIDES = [
    ("engine.threads", ["--set engine.threads", "section.key=value"]),
    ("threads=2", ["--set threads=2", "section.key=value"]),
    ("engine.threads=-3", ["--set engine.threads=-3", "engine.threads", "expected 1 to 64"]),
    ("engine.seed=1e99", ["engine.seed", "expected an integer"]),
    ("nope.key=1", ["unknown section [nope]"]),
]


@pytest.mark.parametrize("override,expected", BAD_OVERRIDES)
def test_a_bad_override_names_itself(override, expected):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override], use_system=False)
    for part in expected:
        assert part in str(e.value), str(e.value)


def test_a_missing_config_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"nothere\.toml: no such file"):
        load_config(tmp_path / "nothere.toml")


@pytest.mark.parametrize(
    "overrides,expected",
    [
        (["asr.backend=vosk"], "asr.vosk_model: required"),
        (["asr.vosk_model=/no/such/dir"], "/no/such/dir is not a directory"),
        (["engine.model=/no/such/model.gguf"], "/no/such/model.gguf: no such file"),
        (["asr.pocketsphinx_search=/no/grammar.jsgf"], "neither story-requests, general nor a JSGF file"),
        (["story.min_sentence_chars=300", "story.max_sentence_chars=300"], "min_sentence_chars must be below"),
    ],
)
def test_cross_key_mistakes_are_named(overrides, expected):
    config = load_config(None, overrides, use_system=False)
    with pytest.raises(ConfigError, match=expected):
        check_semantics(config)


@pytest.mark.parametrize("args", [["--set", "engine.threads=0"], ["--set", "engine.model=/missing.gguf"]])
def test_the_cli_exits_78_with_the_message_on_stderr(args):
    proc = subprocess.run(
        [STORYBOT, "tell", "a cat", *args], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL
    )
    assert proc.returncode == EX_CONFIG
    assert "configuration error" in proc.stderr
    assert proc.stdout == ""


def test_the_cli_reports_a_toml_syntax_error_with_file_and_line(tmp_path):
    f = tmp_path / "storybot.toml"
    f.write_text("[engine]\nthreads = 2\nmax_tokens = \n")
    proc = subprocess.run([STORYBOT, "devices", "--config", str(f)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == EX_CONFIG
    assert str(f) in proc.stderr and "line 3" in proc.stderr
