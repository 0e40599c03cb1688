"""What selection needs to know about one request, computed once: estimated prompt and output
tokens, the capabilities it needs, and its task category.

The task category comes from a cheap, local heuristic (`classify`: a few precompiled regular
expressions over the last user message, a few microseconds); any callable with the same
signature can replace it (`SelectContext.classify`). Its accuracy on the labelled prompt set
`tests/data/task_categories.jsonl` is measured by `tests/unit/test_select_category.py` and
reported in docs/decisions.md.
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
    words = set(text.translate(_WORDS_TABLE).split())
    words.update([w.rstrip(b".") for w in words if w.endswith(b".")])
    if not _CODE_WORDS.isdisjoint(words) or any(m in text for m in _CODE_MARKS):
        return "code"
    if not _MATH_WORDS.isdisjoint(words) or any(m in text for m in _MATH_MARKS):
        return "reasoning"
    arith = text.translate(_ARITH_TABLE).replace(b" ", b"")
    if any(m in arith for m in _ARITH_MARKS):
        return "reasoning"
    return "chat"


Classifier = Callable[[dict[str, Any], int], str]


def needs_of(canonical: dict[str, Any]) -> frozenset[str]:
    """Capabilities (of CAPABILITIES) a backend must have to serve this request."""
    out: set[str] = set()
    if canonical.get("tools") or canonical.get("functions"):
        out.add("tools")
    rf = canonical.get("response_format")
    if isinstance(rf, dict) and rf.get("type") == "json_schema":
        out.add("json_schema")
    messages = canonical.get("messages")
    if isinstance(messages, list):
        for m in messages:
            content = m.get("content") if isinstance(m, dict) else None
            if isinstance(content, list) and any(
                    isinstance(p, dict) and p.get("type") in ("image_url", "input_image", "image")
                    for p in content):
                out.add("images")
                break
    assert out <= set(CAPABILITIES)
    return frozenset(out)


def features_of(canonical: dict[str, Any], classifier: Classifier = classify) -> Features:
    """Token estimates (characters / 4), needed capabilities and category of a request."""
    chars = 0
    messages = canonical.get("messages")
    if isinstance(messages, list):
        for m in messages:
            content = m.get("content") if isinstance(m, dict) else None
            if isinstance(content, str):
                chars += len(content)
            elif isinstance(content, list):
                for part in content:
                    if isinstance(part, dict) and isinstance(part.get("text"), str):
                        chars += len(part["text"])
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
    return Features(prompt_tokens=prompt, output_tokens=expected,
                    context_tokens=prompt + max_out, needs=needs_of(canonical),
                    category=classifier(canonical, prompt) if messages is not None else "chat",
                    stream=canonical.get("stream") is True)
