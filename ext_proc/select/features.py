"""What selection needs to know about one request, computed once: estimated prompt and output
tokens, the capabilities it needs, and its task category.

The task category comes from a cheap, local heuristic (`classify`: keyword sets and a few
guarded substring marks over the first 600 characters of the last user message, 5-15 us);
any callable with the same signature can replace it (`SelectContext.classify`). Its accuracy
on the labelled prompt set `tests/data/task_categories.jsonl` is measured by
`tests/unit/test_select_category.py` and reported in docs/decisions.md.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from switchyard.contract import CAPABILITIES, TASK_CATEGORIES

#: Task categories, in the order the heuristic tests them. `chat` is the fallback.
CATEGORIES = TASK_CATEGORIES
#: Rough characters per token (no tokenizer on the hot path).
CHARS_PER_TOKEN = 4
#: Prompts above this many estimated tokens are `long_context`.
LONG_CONTEXT_TOKENS = 8000
#: Expected output tokens when the request sets no max_tokens; the estimate is capped here.
DEFAULT_OUTPUT_TOKENS = 256
MAX_OUTPUT_ESTIMATE = 1024
#: Only this much of the last user message is looked at by the classifier.
_SCAN_CHARS = 600

def _words(text: str) -> frozenset[bytes]:
    return frozenset(w.encode() for w in text.split())


#: Keyword sets and marks, matched on bytes: encode + lower + translate (a 256-byte table) +
#: split + set intersection all run at C speed (an alternation regex over the prompt costs
#: hundreds of microseconds when nothing matches).
_CODE_WORDS = _words("""
python javascript typescript java rust golang go c++ c# sql bash regex kotlin haskell ruby php
swift css html div git docker dockerfile kubernetes k8s yaml json pandas numpy react node.js
nodejs npm pip linux shell code function functions compile compiler compiled refactor debug bug
segfault snippet script api endpoint exception loop variable algorithm quicksort recursion
generator yield deployment deploy repo repository database traceback console.log
""")
_CODE_MARKS = (b"```", b"def ", b"=>", b"#include", b"import ", b"select ", b"unit test",
               b"stack trace", b"list comprehension", b"class ", b"();")
_MATH_WORDS = _words("""
solve prove proof calculate compute equation integral derivative probability step puzzle riddle
logic theorem factor factorial factorize prime percent percentage average remainder divisible
reason reasoning perimeter area volume ratio fraction
""")
_MATH_MARKS = (b"how many", b"what is the sum", b"what is the product", b"what is the value",
               b"step by step", *(c.encode() for c in "∑∫√π≤≥"))
#: Punctuation -> space (kept: + # . for c++, c#, node.js).
_WORDS_TABLE = bytes.maketrans(b"!\"$&'(),/:;<=>?@[\\]^`{|}~*-", b" " * 27)
#: Digits -> 0 and operators -> +, so "12 * 3" becomes "0+0" once spaces are gone.
_ARITH_TABLE = bytes.maketrans(b"0123456789-*/^=<>x", b"0000000000+++++++" + b"+")
_ARITH_MARKS = (b"0+0", b"$0", b"0%")


def _dotted(words: frozenset[bytes]) -> frozenset[bytes]:
    """The words plus each with one trailing '.' ("python." at the end of a sentence): one
    `isdisjoint` over the split text then matches what stripping the dots would."""
    return words | frozenset(w + b"." for w in words)


_CODE_OR_DOTTED = _dotted(_CODE_WORDS)
_MATH_OR_DOTTED = _dotted(_MATH_WORDS)
#: Both: a prompt with no keyword (most chat) is ruled out in one pass over its words.
_ANY_OR_DOTTED = _CODE_OR_DOTTED | _MATH_OR_DOTTED


def _guarded(marks: tuple[bytes, ...]) -> tuple[tuple[bytes, tuple[bytes, ...]], ...]:
    """(guard, marks) groups: a mark can only be in the text if its guard is. The guard is
    the mark's first byte that is neither a letter nor a space (one memchr, ~10x cheaper
    than searching the mark), else a prefix of 8+ bytes it shares with other marks, else the
    mark itself. A chat prompt, which matches nothing, then pays for a few searches only."""
    groups: dict[bytes, list[bytes]] = {}
    for m in marks:
        odd = [c for c in m if not (97 <= c <= 122 or c == 32)]
        if odd:
            guard = bytes([odd[0]])
        else:
            shared = [o for o in marks if o != m and o[:8] == m[:8]]
            guard = m[:8] if shared and len(m) >= 8 else m
        groups.setdefault(guard, []).append(m)
    return tuple((g, tuple(ms)) for g, ms in groups.items())


_CODE_GUARDED = _guarded(_CODE_MARKS)
_MATH_GUARDED = _guarded(_MATH_MARKS)


def _any_mark(text: bytes, guarded: tuple[tuple[bytes, tuple[bytes, ...]], ...]) -> bool:
    for guard, marks in guarded:
        if guard in text:
            if marks[0] == guard:  # the mark is its own guard
                return True
            for m in marks:
                if m in text:
                    return True
    return False


@dataclass(frozen=True, slots=True)
class Features:
    """A request as selection sees it (replay builds these from a trace directly)."""

    prompt_tokens: int
    #: Expected output tokens (for cost and generation time), not the max_tokens bound.
    output_tokens: int
    #: prompt + max_tokens: what must fit a backend's context window.
    context_tokens: int
    needs: frozenset[str]
    category: str
    stream: bool = False


def last_user_text(messages: Any) -> str:
    """Text of the last user message (text parts only), for the classifier."""
    if not isinstance(messages, list):
        return ""
    for m in reversed(messages):
        if isinstance(m, dict) and m.get("role") == "user":
            content = m.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return " ".join(p["text"] for p in content
                                if isinstance(p, dict) and isinstance(p.get("text"), str))
            return ""
    return ""


def classify(canonical: dict[str, Any], prompt_tokens: int) -> str:
    """Heuristic task category of an OpenAI chat request (see CATEGORIES)."""
    if canonical.get("tools") or canonical.get("functions"):
        return "tools"
    if prompt_tokens > LONG_CONTEXT_TOKENS:
        return "long_context"
    text = last_user_text(canonical.get("messages"))[:_SCAN_CHARS].encode().lower()
    words: Any = text.translate(_WORDS_TABLE).split()
    code_w, math_w = _CODE_OR_DOTTED, _MATH_OR_DOTTED
    if b".." in text:  # rare: words ending in several dots; strip them (no set otherwise)
        words = set(words)
        words.update([w.rstrip(b".") for w in words if w.endswith(b".")])
        code_w, math_w = _CODE_WORDS, _MATH_WORDS
        hit = True
    else:
        hit = not _ANY_OR_DOTTED.isdisjoint(words)
    if (hit and not code_w.isdisjoint(words)) or _any_mark(text, _CODE_GUARDED):
        return "code"
    if (hit and not math_w.isdisjoint(words)) or _any_mark(text, _MATH_GUARDED):
        return "reasoning"
    arith = text.translate(_ARITH_TABLE)
    if b"0" in arith:  # every arithmetic mark has a digit
        arith = arith.replace(b" ", b"")
        if any(m in arith for m in _ARITH_MARKS):
            return "reasoning"
    return "chat"


Classifier = Callable[[dict[str, Any], int], str]


_IMAGE_TYPES = ("image_url", "input_image", "image")
#: (tools, images, json_schema) -> the needs set, built once.
_NEEDS = {(t, i, j): frozenset(name for name, on in (("tools", t), ("images", i),
                                                     ("json_schema", j)) if on)
          for t in (False, True) for i in (False, True) for j in (False, True)}
assert all(n <= set(CAPABILITIES) for n in _NEEDS.values())


def needs_of(canonical: dict[str, Any]) -> frozenset[str]:
    """Capabilities (of CAPABILITIES) a backend must have to serve this request."""
    images = False
    messages = canonical.get("messages")
    if isinstance(messages, list):
        for m in messages:
            content = m.get("content") if isinstance(m, dict) else None
            if isinstance(content, list) and any(
                    isinstance(p, dict) and p.get("type") in _IMAGE_TYPES for p in content):
                images = True
                break
    return _needs(canonical, images)


def _needs(canonical: dict[str, Any], images: bool) -> frozenset[str]:
    rf = canonical.get("response_format")
    return _NEEDS[(bool(canonical.get("tools") or canonical.get("functions")), images,
                   isinstance(rf, dict) and rf.get("type") == "json_schema")]


def features_of(canonical: dict[str, Any], classifier: Classifier = classify) -> Features:
    """Token estimates (characters / 4), needed capabilities and category of a request, in
    one pass over the messages."""
    chars = 0
    images = False
    messages = canonical.get("messages")
    if isinstance(messages, list):
        for m in messages:
            content = m.get("content") if isinstance(m, dict) else None
            if isinstance(content, str):
                chars += len(content)
            elif isinstance(content, list):
                for part in content:
                    if isinstance(part, dict):
                        text = part.get("text")
                        if isinstance(text, str):
                            chars += len(text)
                        if not images and part.get("type") in _IMAGE_TYPES:
                            images = True
    else:  # embeddings
        inp = canonical.get("input")
        if isinstance(inp, str):
            chars = len(inp)
        elif isinstance(inp, list):
            chars = sum(len(x) for x in inp if isinstance(x, str))
    prompt = chars // CHARS_PER_TOKEN
    max_out = canonical.get("max_completion_tokens") or canonical.get("max_tokens") or 0
    max_out = max_out if isinstance(max_out, int) else 0
    expected = min(max_out or DEFAULT_OUTPUT_TOKENS, MAX_OUTPUT_ESTIMATE)
    return Features(prompt, expected, prompt + max_out, _needs(canonical, images),
                    classifier(canonical, prompt) if messages is not None else "chat",
                    canonical.get("stream") is True)
