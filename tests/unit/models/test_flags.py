"""Caption flags on crafted token sequences (EOS 102, padding 0, start token 101, as BERT's ids)."""

import pytest

from pipeline.models.flags import candidate_flags, repeated_run, text_flags

EOS, PAD, START = 102, 0, 101
SPECIAL = {PAD, START, EOS}


def flags(ids, text="a dog on a beach", min_new=0, prompt=None, family="", lead=1, pad=PAD, eos=(EOS,)):
    return candidate_flags(ids, text, eos, pad, SPECIAL, min_new, prompt, family, lead)


def test_a_finished_caption_has_no_flags_even_when_padded():
    assert flags([START, 7, 8, 9, EOS]) == []
    assert flags([START, 7, 8, 9, EOS, PAD, PAD]) == []


def test_truncated_when_the_last_token_is_a_word():
    assert flags([START, 7, 8, 9, 10]) == ["truncated"]
    assert flags([START, 7, 8, 9, 10], pad=EOS) == ["truncated"]  # GPT-2: padding is EOS
    assert flags([START, 7, 8, EOS, EOS, EOS], pad=EOS) == []


def test_repetition_loops_of_one_to_six_tokens():
    assert flags([START, 7, 7, 7, EOS]) == ["repetition"]
    assert flags([START, 5, 7, 8, 7, 8, 7, 8, EOS]) == ["repetition"]
    assert flags([START, *([1, 2, 3, 4, 5, 6] * 3), EOS]) == ["repetition"]
    assert flags([START, 7, 8, 7, 8, 9, EOS]) == []  # twice is not a loop
    assert not repeated_run([1, 2, 3, 4, 5, 6, 7] * 3)  # a 7-gram is past the window
    assert repeated_run("on the on the on the beach".split())


def test_empty_and_short():
    assert flags([START, EOS], text="") == ["empty"]
    assert flags([START, 7, EOS], text="dog", min_new=3) == ["short"]
    assert flags([START, 7, 8, 9, EOS], min_new=3) == []


def test_the_prompt_given_back():
    # BLIP keeps its prompt by design: only a caption that adds nothing is an echo
    assert flags([START, 11, 12, EOS], text="a photography of", prompt="a photography of", family="blip",
                 lead=3) == ["prompt_echo"]
    assert flags([START, 11, 12, 7, 8, EOS], text="a photography of a dog", prompt="a photography of", family="blip",
                 lead=3) == []
    assert flags([7, 8, EOS], text="Question: what is this? Answer: a dog", prompt="Question: what is this? Answer:",
                 family="blip-2", lead=0) == ["prompt_echo"]


def test_refusals():
    assert flags([START, 7, 8, EOS], text="I'm sorry, I cannot describe this image.") == ["refusal"]
    assert flags([START, 7, 8, EOS], text="As an AI, I do not see images") == ["refusal"]
    assert flags([START, 7, 8, EOS], text="a sorry looking dog") == []


@pytest.mark.parametrize("text, expected", [("", ["empty"]), ("the the the end", ["repetition"]), ("a cat", [])])
def test_text_alone_tells_what_it_can(text, expected):
    assert text_flags(text) == expected
