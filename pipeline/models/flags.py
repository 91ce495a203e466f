"""Caption flags: what went wrong with a generated candidate, for users to filter on.

- `truncated`: generation hit `max_new_tokens` before the end-of-sequence token (the caption is cut);
- `repetition`: a loop — an n-gram (n = 1..6) repeated 3 or more times in a row ("on the on the on the");
- `empty`: no text; `short`: fewer new tokens than `min_new_tokens` (a model that stopped at once);
- `prompt_echo`: the prompt given back and nothing else (BLIP keeps its prompt by design: only a caption
  that adds nothing to it is flagged) or, for other families, the prompt repeated inside the caption;
- `refusal`: an instructed model's refusal ("I'm sorry, I cannot ...", "as an AI ...").

Computed from the token ids generate() returned where the captioner has them (truncation needs the
end-of-sequence token; text alone cannot tell a cut caption from a short one), from the text otherwise.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

FLAGS = ("truncated", "repetition", "empty", "short", "prompt_echo", "refusal")
MAX_NGRAM = 6
MIN_REPEATS = 3
REFUSALS = ("i'm sorry", "i am sorry", "i cannot", "i can't", "i can not", "as an ai", "i'm unable", "i am unable",
            "unable to help", "i won't", "i will not")


def repeated_run(ids: Sequence[int | str], max_n: int = MAX_NGRAM, min_repeats: int = MIN_REPEATS) -> bool:
    """Whether some n-gram (1 ≤ n ≤ max_n) occurs `min_repeats` or more times back to back."""
    seq = list(ids)
    for n in range(1, max_n + 1):
        for start in range(0, len(seq) - n * min_repeats + 1):
            gram = seq[start : start + n]
            if all(seq[start + k * n : start + (k + 1) * n] == gram for k in range(1, min_repeats)):
                return True
    return False


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip().lower())


def text_flags(text: str, prompt: str | None = None, family: str = "",
               words: Sequence[int | str] | None = None) -> list[str]:
    """The flags text alone can tell (no `truncated`, and `short` only via `words` being empty)."""
    flags = []
    t = _norm(text)
    if not t:
        flags.append("empty")
    if repeated_run(words if words is not None else t.split()):
        flags.append("repetition")
    if prompt:
        p = _norm(prompt)
        if (family == "blip" and t == p) or (family != "blip" and p and p in t):
            flags.append("prompt_echo")
    if any(t.startswith(r) or f" {r}" in f" {t}" for r in REFUSALS):
        flags.append("refusal")
    return flags


def candidate_flags(ids: Sequence[int], text: str, eos: Iterable[int], pad: int | None, special: Iterable[int],
                    min_new_tokens: int, prompt: str | None = None, family: str = "", prompt_tokens: int = 0) -> list[str]:
    """A generated sequence's flags. `ids`: what generate() returned for it (start token, prompt tokens,
    new tokens, end-of-sequence, padding); `prompt_tokens`: how many leading ids are not new (start token
    and prompt); `special`: the tokenizer's special ids (start, padding, image tokens, ...).

    Cut: the sequence's last token, trailing padding aside, is not an end-of-sequence token (generate
    pads a finished sequence after its EOS; one that ran out of tokens ends on a word). Where padding and
    EOS are one id (GPT-2), a finished sequence still ends on it."""
    eos, special = set(eos), set(special)
    seq = list(ids)
    if pad is not None and pad not in eos:
        while seq and seq[-1] == pad:
            seq.pop()
    new = seq[prompt_tokens:]
    words = [i for i in new if i not in special and i not in eos]
    flags = []
    if not seq or seq[-1] not in eos:
        flags.append("truncated")
    flags += text_flags(text, prompt, family, words)  # repetition: on the new tokens
    if len(words) < min_new_tokens and "empty" not in flags:
        flags.append("short")
    return sorted(flags, key=FLAGS.index)
