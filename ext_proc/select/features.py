"""What selection needs to know about one request, computed once: estimated prompt and output
tokens, the capabilities it needs, and its task category.

The task category comes from a cheap, local heuristic (`classify`: a few precompiled regular
expressions over the last user message, a few microseconds); any callable with the same
signature can replace it (`SelectContext.classify`). Its accuracy on the labelled prompt set
`tests/data/task_categories.jsonl` is measured by `tests/unit/test_select_category.py` and
reported in docs/decisions.md.
"""

from __future__ import annotations

import re
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
_SCAN_CHARS = 2000

_CODE = re.compile(
    r"```|\bdef \w+\(|\bfunction\s*\w*\(|\bclass \w+[:({]|#include\b|\bimport \w+|"
    r"\bconsole\.log\b|\bSELECT\b.+\bFROM\b|=>|\bTraceback\b|\bstack ?trace\b|"
    r"\b(?:python|javascript|typescript|java|rust|golang|c\+\+|sql|bash|regex|kotlin|"
    r"haskell|ruby|php|swift|css|html|div|git|docker(?:file)?|kubernetes|k8s|yaml|json|"
    r"pandas|numpy|react|node\.?js|npm|pip|linux|shell)\b|\b(?:code|function|"
    r"compile[rd]?|refactor|debug|bug|segfault|unit tests?|snippet|script|api|endpoint|"
    r"exception|loop|variable|algorithm|quicksort|sort(?:ing)? algorithm|recursion|"
    r"list comprehension|generator|yield|deploy(?:ment)?|repo(?:sitory)?|database)\b",
    re.IGNORECASE)
_MATH = re.compile(
    r"\d\s*[-+*/^=<>]\s*\d|\b(?:solve|prove|proof|calculate|compute|equation|integral|"
    r"derivative|probability|how many|what is the (?:sum|product|value)|step by step|"
    r"puzzle|riddle|logic|theorem|factor(?:ial|ize)?|prime|percent(?:age)?|average|"
    r"remainder|divisible|reason(?:ing)?|perimeter|area|volume|ratio|fraction)\b|"
    r"\$\d|\d\s*%|[∑∫√π≤≥]",
    re.IGNORECASE)


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
    text = last_user_text(canonical.get("messages"))[:_SCAN_CHARS]
    if _CODE.search(text):
        return "code"
    if _MATH.search(text):
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
