"""storybot-llama2c --serve's repeat penalty on the real default model, as llama.cpp's sampler chain applies it: to
the tokens generated so far, never to the prompt's (the prompt names the story's subject, which the story must go on
naming; penalizing it kept SmolLM2 from saying "robot" in a story about a robot)."""

from __future__ import annotations

from engines import protocol as p
from tests.test_llama2c_engine import Served, engine_path

PROMPT = (
    "<|im_start|>user\nCount with me: one, two, three, one, two, three, one, two,<|im_end|>\n<|im_start|>assistant\n"
)
MAX_TOKENS = 24


def _greedy(served: Served, request_id: int, repeat_penalty: float) -> list[str]:
    served.send({"type": "generate", "id": request_id, "prompt": PROMPT, "special": True, "temperature": 0,
                 "max_tokens": MAX_TOKENS, "top_k": 0, "top_p": 1.0, "repeat_penalty": repeat_penalty})  # fmt: skip
    tokens, done = served.until_done(request_id, timeout=300)
    assert isinstance(done, p.Done), done
    return [t.text for t in tokens]


def test_the_repeat_penalty_spares_the_prompt_and_acts_on_what_was_generated(smollm2_model):
    served = Served(engine_path(), smollm2_model, "--context", "256")
    try:
        served.next()  # ready
        plain = _greedy(served, 1, 1.0)
        penalized = _greedy(served, 2, 2.0)
    finally:
        served.close()
    assert plain and penalized
    # the greedy reply starts "One," and the comma is all over the prompt, but only "One" was generated before it:
    # the comma is not penalized (a penalty on the prompt turned the reply into "One is a unique ...")
    assert plain[1] != plain[0] and plain[1].strip() in PROMPT, plain
    assert penalized[:2] == plain[:2], (plain, penalized)
    # once the reply repeats itself the penalty steers it elsewhere
    assert penalized != plain, plain
