"""AWS Bedrock runtime simulator: Converse, ConverseStream (binary event-stream), InvokeModel.

`POST /model/{modelId}/converse` and `/converse-stream` answer in the real wire format (the
stream as `application/vnd.amazon.eventstream` frames with CRCs), so botocore's own client
parses them. `POST /model/{modelId}/invoke` serves Titan and Cohere embedding models. SigV4 is
checked for shape (scope, date), not for the signature itself.
"""

import asyncio
import base64
import binascii
import math
import random
import re
import time
import zlib
from collections.abc import Iterator
from typing import Any, Final

import orjson
from aiohttp import web

from sim.common import (
    INVALID_JSON,
    BodyHandler,
    Completion,
    Provider,
    SimError,
    count_words,
    json_response,
)
from switchyard.framing.eventstream import encode

EVENTSTREAM: Final = "application/vnd.amazon.eventstream"
# bedrock-runtime's status for each exception type; the type travels in x-amzn-ErrorType.
_STATUS_TYPES: Final = {
    400: "ValidationException",
    403: "AccessDeniedException",
    404: "ResourceNotFoundException",
    408: "ModelTimeoutException",
    424: "ModelErrorException",
    429: "ThrottlingException",
    500: "InternalServerException",
    503: "ServiceUnavailableException",
}
_TYPE_SUFFIX: Final = ":http://internal.amazon.com/coral/com.amazon.bedrock/"
_AUTH_PREFIX: Final = "AWS4-HMAC-SHA256 Credential="
_TOP_KEYS: Final = frozenset({
    "messages", "system", "inferenceConfig", "toolConfig", "guardrailConfig",
    "additionalModelRequestFields", "promptVariables", "additionalModelResponseFieldPaths",
    "requestMetadata", "performanceConfig", "serviceTier", "outputConfig",
})
_BLOCK_KEYS: Final = frozenset({
    "text", "image", "document", "video", "audio", "toolUse", "toolResult", "guardContent",
    "cachePoint", "reasoningContent", "citationsContent", "searchResult",
})
_RESULT_KEYS: Final = frozenset({"json", "text", "image", "document", "video", "searchResult"})
_INFERENCE_KEYS: Final = frozenset({"maxTokens", "temperature", "topP", "stopSequences"})
_IMAGE_FORMATS: Final = frozenset({"png", "jpeg", "gif", "webp"})
_TOOL_NAME: Final = re.compile(r"[a-zA-Z0-9_-]{1,64}")
_TOOL_ID: Final = re.compile(r"[a-zA-Z0-9_.:-]{1,64}")
_COHERE_INPUT_TYPES: Final = frozenset(
    {"search_document", "search_query", "classification", "clustering"})
# Real streams pad payloads with a `p` field (against length side channels); clients ignore it.
_PAD: Final = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


class _Invalid(Exception):
    """A 400 ValidationException."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _event(kind: str, payload: dict[str, Any]) -> bytes:
    payload["p"] = _PAD[: 8 + len(payload) * 5]
    return encode(
        {":event-type": kind, ":content-type": "application/json", ":message-type": "event"},
        orjson.dumps(payload),
    )


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


# --- validation (what the real API rejects, with its wording where known) -----------------


def _validate_image(where: str, image: Any) -> None:
    if not isinstance(image, dict):
        raise _Invalid(f"{where}: image must be an object")
    if image.get("format") not in _IMAGE_FORMATS:
        raise _Invalid(f"{where}.format: must be one of png, jpeg, gif, webp")
    source = image.get("source")
    data = source.get("bytes") if isinstance(source, dict) else None
    if not isinstance(data, str) or not data:
        raise _Invalid(f"{where}.source: bytes is required")
    try:
        base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise _Invalid(f"{where}.source.bytes: invalid base64") from None


def _validate_block(where: str, block: Any, role: str) -> None:
    if not isinstance(block, dict) or len(block) != 1:
        raise _Invalid(f"{where}: a content block must set exactly one member")
    ((key, value),) = block.items()
    if key not in _BLOCK_KEYS:
        raise _Invalid(f"{where}: unknown content block type '{key}'")
    if key == "text":
        if not isinstance(value, str):
            raise _Invalid(f"{where}.text: must be a string")
        if not value.strip():
            raise _Invalid(
                f"The text field in the ContentBlock object at {where} is blank. "
                "Add text to the text field, and try again."
            )
    elif key == "image":
        _validate_image(f"{where}.image", value)
    elif key == "toolUse":
        if role != "assistant":
            raise _Invalid(f"{where}: toolUse blocks are only allowed in assistant messages")
        if not isinstance(value, dict) or not _TOOL_ID.fullmatch(str(value.get("toolUseId"))):
            raise _Invalid(f"{where}.toolUse.toolUseId: must match [a-zA-Z0-9_.:-]{{1,64}}")
        if not _TOOL_NAME.fullmatch(str(value.get("name"))):
            raise _Invalid(f"{where}.toolUse.name: must match [a-zA-Z0-9_-]{{1,64}}")
        if not isinstance(value.get("input"), dict):
            raise _Invalid(f"{where}.toolUse.input: must be a JSON object")
    elif key == "toolResult":
        if role != "user":
            raise _Invalid(f"{where}: toolResult blocks are only allowed in user messages")
        if not isinstance(value, dict) or not _TOOL_ID.fullmatch(str(value.get("toolUseId"))):
            raise _Invalid(f"{where}.toolResult.toolUseId: must match [a-zA-Z0-9_.:-]{{1,64}}")
        content = value.get("content")
        if not isinstance(content, list):
            raise _Invalid(f"{where}.toolResult.content: must be a list")
        for k, part in enumerate(content):
            if not isinstance(part, dict) or len(part) != 1 or next(iter(part)) not in (
                _RESULT_KEYS
            ):
                raise _Invalid(f"{where}.toolResult.content.{k}: unknown tool result block")
            if "text" in part and not isinstance(part["text"], str):
                raise _Invalid(f"{where}.toolResult.content.{k}.text: must be a string")
        if value.get("status", "success") not in ("success", "error"):
            raise _Invalid(f"{where}.toolResult.status: must be success or error")


def _ids(content: list[dict[str, Any]], key: str) -> list[str]:
    return [b[key]["toolUseId"] for b in content if key in b]


def _validate_messages(messages: Any) -> bool:
    """Check turns and blocks; True if any toolUse/toolResult block is present."""
    if not isinstance(messages, list) or not messages:
        raise _Invalid("A conversation must start with a user message. Try again with a "
                       "conversation that starts with a user message.")
    uses_tools = False
    for i, msg in enumerate(messages):
        where = f"messages.{i}"
        if not isinstance(msg, dict) or set(msg) - {"role", "content"}:
            raise _Invalid(f"{where}: a message has exactly the fields role and content")
        role = msg.get("role")
        if role not in ("user", "assistant"):
            raise _Invalid(f"{where}.role: must be user or assistant")
        if i == 0 and role != "user":
            raise _Invalid("A conversation must start with a user message. Try again with a "
                           "conversation that starts with a user message.")
        if i and messages[i - 1].get("role") == role:
            raise _Invalid("A conversation must alternate between user and assistant roles. "
                           "Make sure the conversation alternates between user and assistant "
                           "roles and try again.")
        content = msg.get("content")
        if not isinstance(content, list) or not content:
            raise _Invalid(f"{where}.content: must be a non-empty list of content blocks")
        for j, block in enumerate(content):
            _validate_block(f"{where}.content.{j}", block, role)
        results = _ids(content, "toolResult")
        uses = _ids(content, "toolUse")
        uses_tools = uses_tools or bool(results or uses)
        expected = _ids(messages[i - 1]["content"], "toolUse") if i else []
        if role == "user" and sorted(results) != sorted(expected):
            if expected:
                raise _Invalid(f"Expected toolResult blocks at {where}.content for the "
                               f"following Ids: {', '.join(expected)}")
            raise _Invalid(f"The toolResult blocks at {where}.content have no matching "
                           "toolUse blocks in the previous turn.")
    return uses_tools


def _validate_tools(cfg: Any) -> None:
    if not isinstance(cfg, dict) or set(cfg) - {"tools", "toolChoice"}:
        raise _Invalid("toolConfig: only tools and toolChoice are allowed")
    tools = cfg.get("tools")
    if not isinstance(tools, list) or not tools:
        raise _Invalid("toolConfig.tools: must be a non-empty list")
    names = set()
    for i, tool in enumerate(tools):
        spec = tool.get("toolSpec") if isinstance(tool, dict) and len(tool) == 1 else None
        where = f"toolConfig.tools.{i}.toolSpec"
        if not isinstance(spec, dict):
            raise _Invalid(f"toolConfig.tools.{i}: must be a toolSpec")
        name = spec.get("name")
        if not isinstance(name, str) or not _TOOL_NAME.fullmatch(name):
            raise _Invalid(f"{where}.name: must match [a-zA-Z0-9_-]{{1,64}}")
        if "description" in spec and (
            not isinstance(spec["description"], str) or not spec["description"]
        ):
            raise _Invalid(f"{where}.description: must be a non-empty string")
        schema = spec.get("inputSchema")
        if not isinstance(schema, dict) or not isinstance(schema.get("json"), dict):
            raise _Invalid(f"{where}.inputSchema: json must be a JSON schema object")
        if set(spec) - {"name", "description", "inputSchema", "strict"}:
            raise _Invalid(f"{where}: unknown field")
        names.add(name)
    choice = cfg.get("toolChoice")
    if choice is not None:
        if not isinstance(choice, dict) or len(choice) != 1 or not (
            choice.keys() <= {"auto", "any", "tool"}
        ):
            raise _Invalid("toolConfig.toolChoice: must set exactly one of auto, any, tool")
        tool = choice.get("tool")
        if tool is not None and (not isinstance(tool, dict) or tool.get("name") not in names):
            raise _Invalid("toolConfig.toolChoice.tool.name: must name one of the tools")


def _validate_inference(cfg: Any) -> int | None:
    """Check inferenceConfig; returns maxTokens."""
    if cfg is None:
        return None
    if not isinstance(cfg, dict):
        raise _Invalid("inferenceConfig: must be an object")
    if unknown := set(cfg) - _INFERENCE_KEYS:
        raise _Invalid(f"inferenceConfig: unknown field {sorted(unknown)[0]!r}")
    max_tokens = cfg.get("maxTokens")
    if max_tokens is not None and (
        not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1
    ):
        raise _Invalid("inferenceConfig.maxTokens: must be an integer >= 1")
    for key in ("temperature", "topP"):
        v = cfg.get(key)
        if v is not None and (not _is_number(v) or not 0 <= v <= 1):
            raise _Invalid(f"inferenceConfig.{key}: must be a number between 0 and 1")
    stops = cfg.get("stopSequences")
    if stops is not None and (
        not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops)
    ):
        raise _Invalid("inferenceConfig.stopSequences: must be a list of non-empty strings")
    return max_tokens


def _validate(body: Any) -> int | None:
    """Check a Converse body like the real API; returns maxTokens."""
    if not isinstance(body, dict):
        raise _Invalid("Malformed input request, please reformat your input and try again.")
    if unknown := set(body) - _TOP_KEYS:
        raise _Invalid(f"Unknown field {sorted(unknown)[0]!r} in the request body.")
    uses_tools = _validate_messages(body.get("messages"))
    system = body.get("system")
    if system is not None:
        if not isinstance(system, list):
            raise _Invalid("system: must be a list of content blocks")
        for j, block in enumerate(system):
            text = block.get("text") if isinstance(block, dict) and len(block) == 1 else None
            if not isinstance(text, str) or not text:
                raise _Invalid(f"system.{j}: must be a non-empty text block")
    if "toolConfig" in body:
        _validate_tools(body["toolConfig"])
    elif uses_tools:
        raise _Invalid("The toolConfig field must be defined when using toolUse and "
                       "toolResult content blocks.")
    return _validate_inference(body.get("inferenceConfig"))


# --- replies --------------------------------------------------------------------------------


def _text(blocks: Any, with_results: bool) -> str:
    """Text of content blocks (tool results included when counting the prompt)."""
    parts: list[str] = []
    for b in blocks if isinstance(blocks, list) else ():
        if isinstance(b.get("text"), str):
            parts.append(b["text"])
        elif with_results and isinstance(tr := b.get("toolResult"), dict):
            parts.append(_text(tr.get("content"), False))
    return " ".join(parts)


def _tool_to_call(body: dict[str, Any], last_text: str) -> str | None:
    """The tool the reply calls: a forced choice always, `auto` when asked to "use tool"."""
    cfg = body.get("toolConfig")
    if not cfg:
        return None
    choice = cfg.get("toolChoice") or {}
    if "tool" in choice:
        name: str = choice["tool"]["name"]
        return name
    if "any" in choice or "use tool" in last_text.lower():
        first: str = cfg["tools"][0]["toolSpec"]["name"]
        return first
    return None


def _forced(body: dict[str, Any]) -> bool:
    """toolChoice any/tool: the reply is the tool call alone, with no text before it."""
    return bool((body["toolConfig"].get("toolChoice") or {}).keys() & {"any", "tool"})


def _vector(text: str, dims: int) -> list[float]:
    """A deterministic unit vector per text."""
    rng = random.Random(zlib.crc32(text.encode("utf-8", "replace")))
    v = [rng.gauss(0.0, 1.0) for _ in range(dims)]
    norm = math.sqrt(sum(x * x for x in v)) or 1.0
    return [round(x / norm, 6) for x in v]


class BedrockProvider(Provider):
    """Speaks bedrock-runtime's REST-JSON and event-stream wire formats, errors included."""

    kind = "bedrock"

    def routes(self) -> list[tuple[str, str, BodyHandler]]:
        return [
            ("POST", "/model/{model_id}/converse", self.converse),
            ("POST", "/model/{model_id}/converse-stream", self.converse_stream),
            ("POST", "/model/{model_id}/invoke", self.invoke),
        ]

    def error_body(self, err: SimError) -> bytes:
        return orjson.dumps({"message": err.message})

    def error_headers(self, err: SimError) -> dict[str, str]:
        """`code` is the exception type name; by default the one bedrock uses for `status`."""
        etype = err.code or _STATUS_TYPES.get(
            err.status, "InternalServerException" if err.status >= 500 else "ValidationException")
        return {
            "Content-Type": "application/json",
            "x-amzn-ErrorType": etype + _TYPE_SUFFIX,
            "x-amzn-RequestId": self.state.new_id(),
        }

    async def not_found(self, request: web.Request, body: Any) -> web.StreamResponse:
        return self.error(404, "Not Found", code="UnknownOperationException")

    def response_headers(self) -> dict[str, str]:
        # Only Provider.stream() uses these (JSON replies go through reply() below).
        return {"Content-Type": EVENTSTREAM, "x-amzn-RequestId": self.state.new_id()}

    async def reply(self, request: web.Request, obj: Any) -> web.StreamResponse:
        delay = self.state.options.first_token_ms
        if delay > 0:
            await asyncio.sleep(delay / 1000.0)
        garbled = self.garbled(obj)
        if garbled is not None:
            return garbled
        return json_response(obj, headers={"x-amzn-RequestId": self.state.new_id()})

    def _check_auth(self, request: web.Request) -> web.Response | None:
        """SigV4 shape only: credential scope for service `bedrock`, and X-Amz-Date."""
        auth = request.headers.get("Authorization", "")
        if not auth.startswith(_AUTH_PREFIX):
            return self.error(403, "Missing Authentication Token")
        scope = auth[len(_AUTH_PREFIX):].split(",", 1)[0].strip().split("/")
        if len(scope) != 5 or scope[3] != "bedrock" or scope[4] != "aws4_request":
            return self.error(
                403, "Credential should be scoped to correct service: 'bedrock'.")
        if "SignedHeaders=" not in auth or "Signature=" not in auth:
            return self.error(403, "Authorization header requires SignedHeaders and Signature.")
        if not request.headers.get("X-Amz-Date"):
            return self.error(403, "Authorization header requires existence of either a "
                              "'X-Amz-Date' or a 'Date' header.")
        key = self.state.require_key
        if key is not None and scope[0] != key:
            return self.error(403, "The security token included in the request is invalid.",
                              code="UnrecognizedClientException")
        return None

    async def converse(self, request: web.Request, body: Any) -> web.StreamResponse:
        return await self._converse(request, body, stream=False)

    async def converse_stream(self, request: web.Request, body: Any) -> web.StreamResponse:
        return await self._converse(request, body, stream=True)

    async def _converse(self, request: web.Request, body: Any, stream: bool
                        ) -> web.StreamResponse:
        if (denied := self._check_auth(request)) is not None:
            return denied
        if (fault := await self.faults(request)) is not None:
            return fault
        try:
            max_tokens = _validate(None if body is INVALID_JSON else body)
        except _Invalid as exc:
            return self.error(400, exc.message)
        messages: list[dict[str, Any]] = body["messages"]
        prompt_tokens = sum(count_words(b["text"]) for b in body.get("system") or ())
        for msg in messages:
            prompt_tokens += count_words(_text(msg["content"], True))
        last = messages[-1]
        last_text = _text(last["content"], False) if last["role"] == "user" else ""
        completion = self.completion(last_text, prompt_tokens, max_tokens)
        tool = _tool_to_call(body, last_text)
        started = time.monotonic()
        if stream:
            return await self._stream(request, body, completion, tool, last_text, started)
        content: list[dict[str, Any]] = []
        if tool is None:
            content.append({"text": completion.text})
            stop = "max_tokens" if completion.truncated else "end_turn"
            output_tokens = completion.completion_tokens
        else:
            if not _forced(body):
                content.append({"text": self._preface(tool)})
            content.append({"toolUse": self._tool_use(tool, last_text)})
            stop = "tool_use"
            output_tokens = 12
        usage = self._usage(prompt_tokens, output_tokens)
        return await self.reply(request, {
            "output": {"message": {"role": "assistant", "content": content}},
            "stopReason": stop,
            "usage": usage,
            "metrics": {"latencyMs": int((time.monotonic() - started) * 1000)},
        })

    @staticmethod
    def _preface(tool: str) -> str:
        return f"I will use the {tool} tool."

    def _tool_use(self, tool: str, last_text: str) -> dict[str, Any]:
        quoted = " ".join(last_text.split()[:8]) or "(no text)"
        return {"toolUseId": "tooluse_" + self.state.new_id(), "name": tool,
                "input": {"query": quoted}}

    @staticmethod
    def _usage(prompt: int, output: int) -> dict[str, int]:
        return {"inputTokens": prompt, "outputTokens": output, "totalTokens": prompt + output}

    async def _stream(self, request: web.Request, body: dict[str, Any], completion: Completion,
                      tool: str | None, last_text: str, started: float) -> web.StreamResponse:
        """messageStart, text deltas (block 0), [toolUse block], messageStop, metadata."""
        tool_events: list[bytes] = []
        if tool is None:
            deltas = list(completion.deltas())
            stop = "max_tokens" if completion.truncated else "end_turn"
            output_tokens = completion.completion_tokens
        else:
            words = [] if _forced(body) else self._preface(tool).split()
            deltas = [w if i == 0 else " " + w for i, w in enumerate(words)]
            stop, output_tokens = "tool_use", 12
            use = self._tool_use(tool, last_text)
            args = orjson.dumps(use["input"]).decode()
            third = len(args) // 3
            pieces = (args[:third], args[third : 2 * third], args[2 * third :])
            idx = 1 if deltas else 0
            tool_events = [
                _event("contentBlockStart", {"contentBlockIndex": idx, "start": {
                    "toolUse": {"toolUseId": use["toolUseId"], "name": tool}}}),
                *(_event("contentBlockDelta", {"contentBlockIndex": idx,
                                               "delta": {"toolUse": {"input": piece}}})
                  for piece in pieces),
                _event("contentBlockStop", {"contentBlockIndex": idx}),
            ]

        def tokens() -> Iterator[bytes]:
            for d in deltas:
                yield _event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": d}})

        def epilogue() -> Iterator[bytes]:  # lazy: latencyMs is taken when it is sent
            if deltas:
                yield _event("contentBlockStop", {"contentBlockIndex": 0})
            yield from tool_events
            yield _event("messageStop", {"stopReason": stop})
            yield _event("metadata", {
                "usage": self._usage(completion.prompt_tokens, output_tokens),
                "metrics": {"latencyMs": int((time.monotonic() - started) * 1000)},
            })

        preamble = [_event("messageStart", {"role": "assistant"})]
        return await self.stream(request, preamble, tokens(), epilogue())

    async def invoke(self, request: web.Request, body: Any) -> web.StreamResponse:
        """InvokeModel for embedding models (Titan, Cohere); chat models use Converse here."""
        if (denied := self._check_auth(request)) is not None:
            return denied
        if (fault := await self.faults(request)) is not None:
            return fault
        model = request.match_info["model_id"]
        if not isinstance(body, dict):
            return self.error(400, "Malformed input request, please reformat your input and "
                              "try again.")
        if "titan-embed" in model:
            return self._titan(model, body)
        if "cohere.embed" in model:
            return self._cohere(model, body)
        return self.error(400, f"The simulator serves InvokeModel only for Titan and Cohere "
                          f"embedding models, not {model!r}; use Converse.")

    def _titan(self, model: str, body: dict[str, Any]) -> web.Response:
        text = body.get("inputText")
        if not isinstance(text, str) or not text:
            return self.error(400, "Malformed input request: #: required key [inputText] not "
                              "found, please reformat your input and try again.")
        v2 = "text-v2" in model
        dims = body.get("dimensions", 1024 if v2 else 1536)
        if (v2 and dims not in (256, 512, 1024)) or (not v2 and "dimensions" in body):
            return self.error(400, "Malformed input request: #/dimensions: "
                              f"{dims} is not a valid enum value")
        tokens = count_words(text)
        return json_response(
            {"embedding": _vector(text, dims), "inputTextTokenCount": tokens},
            headers={"X-Amzn-Bedrock-Input-Token-Count": str(tokens),
                     "x-amzn-RequestId": self.state.new_id()})

    def _cohere(self, model: str, body: dict[str, Any]) -> web.Response:
        texts = body.get("texts")
        if not isinstance(texts, list) or not 1 <= len(texts) <= 96 or not all(
            isinstance(t, str) for t in texts
        ):
            return self.error(400, "Malformed input request: #/texts: expected 1 to 96 strings")
        if body.get("input_type") not in _COHERE_INPUT_TYPES:
            return self.error(400, "Malformed input request: #: required key [input_type] "
                              "not found or invalid")
        dims = body.get("output_dimension", 1536 if "embed-v4" in model else 1024)
        tokens = sum(count_words(t) for t in texts)
        return json_response(
            {"embeddings": [_vector(t, dims) for t in texts], "id": self.state.new_id(),
             "response_type": "embeddings_floats", "texts": texts},
            headers={"X-Amzn-Bedrock-Input-Token-Count": str(tokens),
                     "x-amzn-RequestId": self.state.new_id()})
