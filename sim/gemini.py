"""Google Gemini API (AI Studio) and Vertex AI simulators: GenerateContent, SSE, embeddings.

AI Studio: `POST /{v1,v1beta,v1alpha}/models/{model}:{method}` with `x-goog-api-key` (or
`?key=`). Vertex: `POST /{v1,v1beta1}/projects/{p}/locations/{l}/publishers/google/models/
{model}:{method}` with `Authorization: Bearer <token>`, plus a fake OAuth token endpoint
`POST /token` that accepts google-auth's service-account JWT-bearer grant, so a generated
service-account JSON whose `token_uri` points here exercises the real credential flow.

Methods: generateContent, streamGenerateContent (`alt=sse`: one GenerateContentResponse per
event; otherwise one JSON array), countTokens, batchEmbedContents/embedContent (AI Studio),
predict (Vertex embeddings). Requests are validated like Google's JSON parser does (unknown
fields, types, roles, the part oneof) and errors use google.rpc's format.
"""

import base64
import binascii
import itertools
import math
import random
import re
import zlib
from collections.abc import Iterator
from typing import Any, Final

import orjson
from aiohttp import web

from sim.common import INVALID_JSON, BodyHandler, Completion, Provider, SimError, count_words

_SSE_END: Final = b"\r\n\r\n"  # Google frames its SSE events with CRLF
_STATUS: Final = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "NOT_IMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
_MODELS: Final = ("gemini-2.5-pro", "gemini-2.5-flash", "gemini-2.5-flash-lite")
_EMBED_DIMS: Final = 768
_JWT_GRANT: Final = "urn:ietf:params:oauth:grant-type:jwt-bearer"
_TOKEN_LIFETIME_S: Final = 3600

_TOP_KEYS: Final = frozenset(
    {
        "model",
        "contents",
        "systemInstruction",
        "tools",
        "toolConfig",
        "safetySettings",
        "generationConfig",
        "cachedContent",
        "labels",
    }
)
_PART_DATA: Final = frozenset(
    {
        "text",
        "inlineData",
        "fileData",
        "functionCall",
        "functionResponse",
        "executableCode",
        "codeExecutionResult",
    }
)
_PART_KEYS: Final = _PART_DATA | {
    "thought",
    "thoughtSignature",
    "videoMetadata",
    "partMetadata",
    "mediaResolution",
}
# generationConfig field -> JSON type (proto names in errors, as Google's parser reports them).
_GEN_TYPES: Final = {
    "temperature": "TYPE_FLOAT",
    "topP": "TYPE_FLOAT",
    "topK": "TYPE_FLOAT",
    "presencePenalty": "TYPE_FLOAT",
    "frequencyPenalty": "TYPE_FLOAT",
    "candidateCount": "TYPE_INT32",
    "maxOutputTokens": "TYPE_INT32",
    "seed": "TYPE_INT32",
    "logprobs": "TYPE_INT32",
    "responseLogprobs": "TYPE_BOOL",
    "enableEnhancedCivicAnswers": "TYPE_BOOL",
    "audioTimestamp": "TYPE_BOOL",
    "enableAffectiveDialog": "TYPE_BOOL",
    "responseMimeType": "TYPE_STRING",
    "mediaResolution": "TYPE_ENUM",
    "stopSequences": "TYPE_STRING_LIST",
    "responseModalities": "TYPE_STRING_LIST",
    "responseSchema": "TYPE_MESSAGE",
    "thinkingConfig": "TYPE_MESSAGE",
    "speechConfig": "TYPE_MESSAGE",
    "routingConfig": "TYPE_MESSAGE",
    "modelSelectionConfig": "TYPE_MESSAGE",
    "imageConfig": "TYPE_MESSAGE",
    "responseJsonSchema": "ANY",
}
_MIME_TYPES: Final = ("text/plain", "application/json", "text/x.enum")
_TOOL_KEYS: Final = frozenset(
    {
        "functionDeclarations",
        "googleSearch",
        "googleSearchRetrieval",
        "codeExecution",
        "urlContext",
        "retrieval",
        "fileSearch",
        "googleMaps",
        "computerUse",
        "enterpriseWebSearch",
    }
)
_DECL_KEYS: Final = frozenset(
    {
        "name",
        "description",
        "parameters",
        "parametersJsonSchema",
        "response",
        "responseJsonSchema",
        "behavior",
    }
)
_FN_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_.:-]{0,63}")
_MODES: Final = ("MODE_UNSPECIFIED", "AUTO", "ANY", "NONE", "VALIDATED")
_SNAKE: Final = re.compile(r"_([a-z0-9])")


class _Invalid(Exception):
    """A 400 INVALID_ARGUMENT."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _camel(key: str) -> str:
    """Google's JSON parser takes proto field names (snake_case) as well as lowerCamelCase."""
    return _SNAKE.sub(lambda m: m.group(1).upper(), key) if "_" in key else key


def _snake(key: str) -> str:
    return re.sub(r"([A-Z])", lambda m: "_" + m.group(1).lower(), key)


def _norm(obj: dict[str, Any], known: frozenset[str], where: str) -> dict[str, Any]:
    """`obj` with camelCase keys; unknown keys are the parser's "Cannot find field" error."""
    out: dict[str, Any] = {}
    for key, value in obj.items():
        ck = _camel(key)
        if ck not in known:
            at = f" at '{where}'" if where else ""
            raise _Invalid(
                f'Invalid JSON payload received. Unknown name "{key}"{at}: Cannot find field.'
            )
        out[ck] = value
    return out


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _bad_value(where: str, kind: str, value: Any) -> _Invalid:
    return _Invalid(f"Invalid value at '{where}' ({kind}), {orjson.dumps(value).decode()[:80]}")


def _require_object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _Invalid(
            f"Invalid value at '{where}' (type.googleapis.com/{where}), "
            f"{orjson.dumps(value).decode()[:80]}"
        )
    return value


def _validate_part(part: Any, where: str) -> dict[str, Any]:
    part = _norm(_require_object(part, where), _PART_KEYS, where)
    data = [k for k in part if k in _PART_DATA]
    if len(data) != 1:
        raise _Invalid(
            f"* GenerateContentRequest.{where}.data: required oneof field 'data' must have "
            "one initialized field"
            if not data
            else f"Invalid JSON payload received. Oneof field 'data' is already set. "
            f"Cannot set '{data[1]}'"
        )
    key = data[0]
    value = part[key]
    if key == "text":
        if not isinstance(value, str):
            raise _bad_value(f"{where}.text", "TYPE_STRING", value)
    elif key == "inlineData":
        blob = _require_object(value, f"{where}.inline_data")
        blob = _norm(blob, frozenset({"mimeType", "data", "displayName"}), f"{where}.inline_data")
        if not isinstance(blob.get("mimeType"), str) or not blob["mimeType"]:
            raise _Invalid(
                f"* GenerateContentRequest.{where}.inline_data.mime_type: "
                "mime_type is not specified"
            )
        try:
            base64.b64decode(str(blob.get("data", "")), validate=True)
        except (binascii.Error, ValueError):
            raise _Invalid(
                f"Invalid value at '{where}.inline_data.data' (TYPE_BYTES), Base64 decoding failed"
            ) from None
    elif key == "fileData":
        fd = _norm(
            _require_object(value, f"{where}.file_data"),
            frozenset({"mimeType", "fileUri", "displayName"}),
            f"{where}.file_data",
        )
        if not isinstance(fd.get("fileUri"), str) or not fd["fileUri"]:
            raise _Invalid(
                f"* GenerateContentRequest.{where}.file_data.file_uri: file_uri is not specified"
            )
    elif key == "functionCall":
        fc = _norm(
            _require_object(value, f"{where}.function_call"),
            frozenset({"id", "name", "args", "partialArgs", "willContinue"}),
            f"{where}.function_call",
        )
        if not isinstance(fc.get("name"), str) or not fc["name"]:
            raise _Invalid(
                f"* GenerateContentRequest.{where}.function_call.name: name is not specified"
            )
        if "args" in fc and not isinstance(fc["args"], dict):
            raise _bad_value(
                f"{where}.function_call.args",
                "type.googleapis.com/google.protobuf.Struct",
                fc["args"],
            )
    elif key == "functionResponse":
        fr = _norm(
            _require_object(value, f"{where}.function_response"),
            frozenset({"id", "name", "response", "parts", "willContinue", "scheduling"}),
            f"{where}.function_response",
        )
        if not isinstance(fr.get("name"), str) or not fr["name"]:
            raise _Invalid(
                f"* GenerateContentRequest.{where}.function_response.name: name is not specified"
            )
        if not isinstance(fr.get("response"), dict):
            raise _bad_value(
                f"{where}.function_response.response",
                "type.googleapis.com/google.protobuf.Struct",
                fr.get("response"),
            )
    if "thought" in part and not isinstance(part["thought"], bool):
        raise _bad_value(f"{where}.thought", "TYPE_BOOL", part["thought"])
    if "thoughtSignature" in part and not isinstance(part["thoughtSignature"], str):
        raise _bad_value(f"{where}.thought_signature", "TYPE_BYTES", part["thoughtSignature"])
    return part


def _validate_content(content: Any, where: str, system: bool = False) -> dict[str, Any]:
    content = _norm(_require_object(content, where), frozenset({"role", "parts"}), where)
    role = content.get("role")
    if not system and role not in (None, "", "user", "model"):
        raise _Invalid("Please use a valid role: user, model.")
    parts = content.get("parts")
    if not isinstance(parts, list) or not parts:
        raise _Invalid(f"* GenerateContentRequest.{where}.parts: contents.parts must not be empty.")
    content["parts"] = [_validate_part(p, f"{where}.parts[{j}]") for j, p in enumerate(parts)]
    return content


def _validate_generation_config(gc: Any) -> dict[str, Any]:
    gc = _norm(_require_object(gc, "generation_config"), frozenset(_GEN_TYPES), "generation_config")
    for key, value in gc.items():
        kind = _GEN_TYPES[key]
        where = f"generation_config.{_snake(key)}"
        ok = {
            "TYPE_FLOAT": _is_number,
            "TYPE_INT32": _is_int,
            "TYPE_BOOL": lambda v: isinstance(v, bool),
            "TYPE_STRING": lambda v: isinstance(v, str),
            "TYPE_ENUM": lambda v: isinstance(v, str),
            "TYPE_STRING_LIST": lambda v: (
                isinstance(v, list) and all(isinstance(s, str) for s in v)
            ),
            "TYPE_MESSAGE": lambda v: isinstance(v, dict),
            "ANY": lambda v: True,
        }[kind](value)
        if not ok:
            raise _bad_value(where, kind.replace("_LIST", ""), value)
    checks = (
        ("temperature", 0.0, 2.0),
        ("topP", 0.0, 1.0),
        ("candidateCount", 1, 8),
        ("maxOutputTokens", 1, 65536),
    )
    for key, low, high in checks:
        value = gc.get(key)
        if value is not None and not low <= value <= high:
            raise _Invalid(
                f"Unable to submit request because it has a {key} value of {value} "
                f"but the supported range is from {low:g} (inclusive) to {high:g}."
            )
    if len(gc.get("stopSequences") or ()) > 5:
        raise _Invalid("Unable to submit request because it has more than 5 stop sequences.")
    mime = gc.get("responseMimeType")
    if mime is not None and mime not in _MIME_TYPES:
        raise _Invalid(
            f"* GenerateContentRequest.generation_config.response_mime_type: "
            f"allowed mimetypes are {', '.join(repr(m) for m in _MIME_TYPES)}. "
            f"{mime!r} is not supported."
        )
    if "responseSchema" in gc and "responseJsonSchema" in gc:
        raise _Invalid("response_schema and response_json_schema cannot both be set.")
    if ("responseSchema" in gc or "responseJsonSchema" in gc) and mime != "application/json":
        raise _Invalid(
            "* GenerateContentRequest.generation_config.response_mime_type: "
            "response_mime_type must be set to application/json when a response "
            "schema is given."
        )
    tc = gc.get("thinkingConfig")
    if tc is not None:
        tc = _norm(
            tc,
            frozenset({"includeThoughts", "thinkingBudget", "thinkingLevel"}),
            "generation_config.thinking_config",
        )
        if "includeThoughts" in tc and not isinstance(tc["includeThoughts"], bool):
            raise _bad_value(
                "generation_config.thinking_config.include_thoughts",
                "TYPE_BOOL",
                tc["includeThoughts"],
            )
        if "thinkingBudget" in tc and not _is_int(tc["thinkingBudget"]):
            raise _bad_value(
                "generation_config.thinking_config.thinking_budget",
                "TYPE_INT32",
                tc["thinkingBudget"],
            )
        if "thinkingBudget" in tc and "thinkingLevel" in tc:
            raise _Invalid("You can only set only one of thinking budget and thinking level.")
        gc["thinkingConfig"] = tc
    return gc


def _validate_tools(tools: Any) -> list[dict[str, Any]]:
    """The request's function declarations (other tool kinds are accepted and ignored)."""
    if not isinstance(tools, list):
        raise _bad_value("tools", "type.googleapis.com/google.ai.generativelanguage.Tool", tools)
    decls: list[dict[str, Any]] = []
    for i, tool in enumerate(tools):
        tool = _norm(_require_object(tool, f"tools[{i}]"), _TOOL_KEYS, f"tools[{i}]")
        fds = tool.get("functionDeclarations")
        if fds is None:
            continue
        if not isinstance(fds, list):
            raise _bad_value(f"tools[{i}].function_declarations", "TYPE_MESSAGE", fds)
        for j, fd in enumerate(fds):
            where = f"tools[{i}].function_declarations[{j}]"
            fd = _norm(_require_object(fd, where), _DECL_KEYS, where)
            name = fd.get("name")
            if not isinstance(name, str) or not _FN_NAME.fullmatch(name):
                raise _Invalid(
                    f"* GenerateContentRequest.{where}.name: Invalid function name. Must start "
                    "with a letter or an underscore. Must be alphameric (a-z, A-Z, 0-9), "
                    "underscores (_), dots (.), colons (:) or dashes (-), with a maximum length "
                    "of 64."
                )
            if "parameters" in fd and "parametersJsonSchema" in fd:
                raise _Invalid(
                    f"* GenerateContentRequest.{where}: parameters and "
                    "parameters_json_schema cannot both be set."
                )
            for key in ("parameters", "parametersJsonSchema"):
                if key in fd and not isinstance(fd[key], dict):
                    raise _bad_value(f"{where}.{_snake(key)}", "TYPE_MESSAGE", fd[key])
            decls.append(fd)
    return decls


def _validate_tool_config(tc: Any, decls: list[dict[str, Any]]) -> tuple[str, list[str]]:
    """(mode, allowed function names)."""
    tc = _norm(
        _require_object(tc, "tool_config"),
        frozenset({"functionCallingConfig", "retrievalConfig", "includeServerSideToolInvocations"}),
        "tool_config",
    )
    fcc = tc.get("functionCallingConfig")
    if fcc is None:
        return "AUTO", []
    where = "tool_config.function_calling_config"
    fcc = _norm(
        _require_object(fcc, where),
        frozenset({"mode", "allowedFunctionNames", "streamFunctionCallArguments"}),
        where,
    )
    mode = fcc.get("mode", "AUTO")
    if mode not in _MODES:
        raise _Invalid(
            f"Invalid value at '{where}.mode' (type.googleapis.com/google.ai."
            f'generativelanguage.v1beta.FunctionCallingConfig.Mode), "{mode}"'
        )
    allowed = fcc.get("allowedFunctionNames") or []
    if not isinstance(allowed, list) or not all(isinstance(n, str) for n in allowed):
        raise _bad_value(f"{where}.allowed_function_names", "TYPE_STRING", allowed)
    if allowed and mode not in ("ANY", "VALIDATED"):
        raise _Invalid(
            "* GenerateContentRequest.tool_config.function_calling_config."
            "allowed_function_names: allowed_function_names may only be set when "
            "mode is ANY or VALIDATED."
        )
    declared = {d["name"] for d in decls}
    for name in allowed:
        if name not in declared:
            raise _Invalid(
                f"* GenerateContentRequest.tool_config.function_calling_config."
                f"allowed_function_names: function {name!r} is not declared."
            )
    if mode in ("ANY", "VALIDATED") and not decls:
        raise _Invalid(
            "* GenerateContentRequest.tools: function calling mode ANY requires "
            "function declarations."
        )
    return mode, allowed


def _validate(body: Any) -> dict[str, Any]:
    """Check a GenerateContentRequest like Google's parser; returns it with camelCase keys."""
    if not isinstance(body, dict):
        raise _Invalid("Invalid JSON payload received. Unexpected token.")
    body = _norm(body, _TOP_KEYS, "")
    contents = body.get("contents")
    if not contents:
        raise _Invalid("* GenerateContentRequest.contents: contents is not specified")
    if not isinstance(contents, list):
        raise _bad_value(
            "contents", "type.googleapis.com/google.ai.generativelanguage.Content", contents
        )
    body["contents"] = [_validate_content(c, f"contents[{i}]") for i, c in enumerate(contents)]
    if "systemInstruction" in body:
        body["systemInstruction"] = _validate_content(
            body["systemInstruction"], "system_instruction", system=True
        )
    body["generationConfig"] = _validate_generation_config(body.get("generationConfig") or {})
    decls = _validate_tools(body.get("tools") or [])
    mode, allowed = _validate_tool_config(body.get("toolConfig") or {}, decls)
    body["_decls"], body["_mode"], body["_allowed"] = decls, mode, allowed
    if "safetySettings" in body and not isinstance(body["safetySettings"], list):
        raise _bad_value("safety_settings", "TYPE_MESSAGE", body["safetySettings"])
    return body


def _texts(parts: list[dict[str, Any]]) -> str:
    return " ".join(p["text"] for p in parts if isinstance(p.get("text"), str))


def _schema_value(schema: Any, text: str, words: int) -> Any:
    """A value that fits a (JSON or OpenAPI) schema, for JSON mode replies."""
    if not isinstance(schema, dict):
        return text
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "string")
    kind = (
        kind.lower()
        if isinstance(kind, str)
        else ("object" if "properties" in schema else "string")
    )
    if "enum" in schema and isinstance(schema["enum"], list) and schema["enum"]:
        return schema["enum"][0]
    if kind == "object":
        props = schema.get("properties")
        if not isinstance(props, dict) or not props:
            return {"reply": text}
        return {k: _schema_value(v, text, words) for k, v in props.items()}
    if kind == "array":
        return [_schema_value(schema.get("items"), text, words)]
    return {"integer": words, "number": words / 2, "boolean": True, "null": None}.get(kind, text)


def embedding(text: str, dims: int) -> list[float]:
    """Deterministic unit vector for `text` (same text, same vector)."""
    rng = random.Random(zlib.crc32(text.encode("utf-8", "replace")))
    values = [rng.uniform(-1.0, 1.0) for _ in range(dims)]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [round(v / norm, 6) for v in values]


def fake_service_account(token_uri: str, project: str = "sim-project") -> dict[str, Any]:
    """A service-account JSON (fresh RSA key) whose tokens come from a simulator's /token."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return {
        "type": "service_account",
        "project_id": project,
        "private_key_id": "sim-key-1",
        "private_key": pem,
        "client_email": f"switchyard-sim@{project}.iam.gserviceaccount.com",
        "client_id": "1000000000000000000",
        "token_uri": token_uri,
    }


def _jwt_claims(assertion: str) -> dict[str, Any] | None:
    """The claims of a JWT (signature not checked: the sim does not know the public key)."""
    pieces = assertion.split(".")
    if len(pieces) != 3:
        return None
    try:
        header = orjson.loads(base64.urlsafe_b64decode(pieces[0] + "=" * (-len(pieces[0]) % 4)))
        claims = orjson.loads(base64.urlsafe_b64decode(pieces[1] + "=" * (-len(pieces[1]) % 4)))
    except (binascii.Error, ValueError):
        return None
    if not isinstance(header, dict) or header.get("alg") != "RS256" or not isinstance(claims, dict):
        return None
    return claims


class _Google(Provider):
    """What AI Studio and Vertex share: the GenerateContent wire format and errors."""

    versions: tuple[str, ...] = ()
    api_name = ""
    error_content_type = "application/json; charset=UTF-8"

    def error_body(self, err: SimError, details: list[dict[str, Any]] | None = None) -> bytes:
        status = err.status
        obj: dict[str, Any] = {
            "code": status,
            "message": err.message,
            "status": err.code or _STATUS.get(status, "INTERNAL" if status >= 500 else "UNKNOWN"),
        }
        if status == 429 and details is None:
            retry = (err.headers or {}).get("retry-after")
            details = [
                {
                    "@type": "type.googleapis.com/google.rpc.RetryInfo",
                    "retryDelay": f"{retry or 1}s",
                }
            ]
        if details:
            obj["details"] = details
        return orjson.dumps({"error": obj})

    async def not_found(self, request: web.Request, body: Any) -> web.StreamResponse:
        return self.error(404, f"Method not found: {request.method} {request.path}")

    def auth(self, request: web.Request) -> web.Response | None:
        raise NotImplementedError

    def response_headers(self) -> dict[str, str]:
        return {"x-goog-request-id": self.state.new_id()}

    def _split(self, request: web.Request) -> tuple[str, str] | None:
        """(model, method) from the `{model}:{method}` path segment."""
        if request.match_info["version"] not in self.versions:
            return None
        model, sep, method = request.match_info["target"].rpartition(":")
        return (model, method) if sep and model else None

    async def dispatch(self, request: web.Request, body: Any) -> web.StreamResponse:
        target = self._split(request)
        if target is None:
            return await self.not_found(request, body)
        model, method = target
        handler = {
            "generateContent": self.generate,
            "streamGenerateContent": self.generate,
            "countTokens": self.count_tokens,
            **self.embedding_methods(),
        }.get(method)
        if handler is None:
            return self.error(
                404,
                f"models/{model} is not found for API version "
                f"{request.match_info['version']}, or is not supported for "
                f"{method}.",
            )
        if (denied := self.auth(request)) is not None:
            return denied
        if (fault := await self.faults(request)) is not None:
            return fault
        if body is INVALID_JSON:
            return self.error(400, "Invalid JSON payload received. Unexpected token.")
        try:
            return await handler(request, body, model, method)
        except _Invalid as exc:
            return self.error(400, exc.message)

    def embedding_methods(self) -> dict[str, Any]:
        return {}

    # -- generateContent

    async def count_tokens(
        self, request: web.Request, body: Any, model: str, method: str
    ) -> web.StreamResponse:
        inner = body.get("generateContentRequest") if isinstance(body, dict) else None
        req = _validate(inner if inner is not None else body)
        return await self.reply(request, {"totalTokens": self._prompt_tokens(req)})

    @staticmethod
    def _prompt_tokens(body: dict[str, Any]) -> int:
        n = 0
        for c in [
            *body["contents"],
            *([body["systemInstruction"]] if "systemInstruction" in body else []),
        ]:
            for p in c["parts"]:
                n += count_words(p["text"]) if "text" in p else 1
        return n

    async def generate(
        self, request: web.Request, body: Any, model: str, method: str
    ) -> web.StreamResponse:
        req = _validate(body)
        gc: dict[str, Any] = req["generationConfig"]
        last = next((c for c in reversed(req["contents"]) if c.get("role") != "model"), None)
        last_parts = last["parts"] if last else []
        last_user = _texts(last_parts)
        after_tool = any("functionResponse" in p for p in last_parts)
        prompt_tokens = self._prompt_tokens(req)
        n = gc.get("candidateCount", 1)
        parts, finish, out_tokens = self._answer(req, gc, last_user, after_tool, prompt_tokens)
        thoughts: list[dict[str, Any]] = []
        thought_tokens = 0
        tc = gc.get("thinkingConfig") or {}
        if tc.get("includeThoughts") and tc.get("thinkingBudget", -1) != 0:
            text = f"**Considering the request**\n\nThe user wrote: {last_user[:60]}"
            thoughts = [{"text": text, "thought": True}]
            thought_tokens = count_words(text)
        rid = self.state.new_id()
        usage = {
            "promptTokenCount": prompt_tokens,
            "candidatesTokenCount": out_tokens * n,
            "totalTokenCount": prompt_tokens + out_tokens * n + thought_tokens * n,
            "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt_tokens}],
        }
        if thought_tokens:
            usage["thoughtsTokenCount"] = thought_tokens * n
        if method == "generateContent":
            cands = [
                {
                    "content": {"parts": [*thoughts, *parts], "role": "model"},
                    "finishReason": finish,
                    "index": i,
                }
                for i in range(n)
            ]
            return await self.reply(
                request,
                {
                    "candidates": cands,
                    "usageMetadata": usage,
                    "modelVersion": model,
                    "responseId": rid,
                },
            )
        return await self._stream(request, model, rid, n, thoughts, parts, finish, usage)

    def _answer(
        self,
        req: dict[str, Any],
        gc: dict[str, Any],
        last_user: str,
        after_tool: bool,
        prompt_tokens: int,
    ) -> tuple[list[dict[str, Any]], str, int]:
        """(parts, finishReason, output tokens) of the deterministic reply."""
        decls: list[dict[str, Any]] = req["_decls"]
        mode: str = req["_mode"]
        allowed: list[str] = req["_allowed"]
        lowered = last_user.lower()
        wants_tool = not after_tool and ("use tool" in lowered or "use all tools" in lowered)
        if decls and mode != "NONE" and (mode in ("ANY", "VALIDATED") or wants_tool):
            pool = [d for d in decls if not allowed or d["name"] in allowed]
            chosen = pool if "use all tools" in lowered else pool[:1]
            query = " ".join(last_user.split()[:8]) or "(no text)"
            calls = [
                {"functionCall": {"name": d["name"], "args": {"query": query}}} for d in chosen
            ]
            return calls, "STOP", sum(2 + count_words(query) for _ in calls)
        completion: Completion = self.completion(
            last_user, prompt_tokens, gc.get("maxOutputTokens")
        )
        if gc.get("responseMimeType") == "application/json":
            schema = gc.get("responseJsonSchema") or gc.get("responseSchema")
            value = _schema_value(schema, completion.text, completion.completion_tokens)
            text = orjson.dumps(value if isinstance(value, dict | list) else {"reply": value})
            return [{"text": text.decode()}], "STOP", completion.completion_tokens
        finish = "MAX_TOKENS" if completion.truncated else "STOP"
        return [{"text": completion.text}], finish, completion.completion_tokens

    async def _stream(
        self,
        request: web.Request,
        model: str,
        rid: str,
        n: int,
        thoughts: list[dict[str, Any]],
        parts: list[dict[str, Any]],
        finish: str,
        usage: dict[str, Any],
    ) -> web.StreamResponse:
        prompt = usage["promptTokenCount"]

        def event(p: list[dict[str, Any]], last: bool, sent: int) -> dict[str, Any]:
            cands = []
            for i in range(n):
                cand: dict[str, Any] = {"content": {"parts": p, "role": "model"}, "index": i}
                if last:
                    cand["finishReason"] = finish
                cands.append(cand)
            um = (
                usage
                if last
                else {
                    "promptTokenCount": prompt,
                    "candidatesTokenCount": sent,
                    "totalTokenCount": prompt + sent,
                }
            )
            return {
                "candidates": cands,
                "usageMetadata": um,
                "modelVersion": model,
                "responseId": rid,
            }

        pieces: list[list[dict[str, Any]]]
        if len(parts) == 1 and "text" in parts[0]:
            text: str = parts[0]["text"]
            if text.startswith(("{", "[")):  # JSON mode: cut anywhere, like real streams
                pieces = [[{"text": text[i : i + 16]}] for i in range(0, len(text), 16)]
            else:
                words = text.split(" ")
                pieces = [[{"text": w if i == 0 else " " + w}] for i, w in enumerate(words)]
        else:  # function calls arrive whole, in one event
            pieces = [parts]
        events = [event(p, i == len(pieces) - 1, i + 1) for i, p in enumerate(pieces)]
        preamble = [event(thoughts, False, 0)] if thoughts else []
        if request.query.get("alt") != "sse":  # a JSON array, as without alt=sse
            return await self.reply(request, [*preamble, *events])

        def frames(objs: list[dict[str, Any]]) -> Iterator[bytes]:
            for obj in objs:
                yield b"data: " + orjson.dumps(obj) + _SSE_END

        return await self.stream(
            request, list(frames(preamble)), frames(events[:-1]), list(frames(events[-1:]))
        )


class GeminiProvider(_Google):
    """Gemini API (AI Studio, generativelanguage.googleapis.com)."""

    kind = "gemini"
    versions = ("v1", "v1beta", "v1alpha")

    def routes(self) -> list[tuple[str, str, BodyHandler]]:
        return [
            ("POST", "/{version}/models/{target}", self.dispatch),
            ("GET", "/{version}/models", self.models),
        ]

    def auth(self, request: web.Request) -> web.Response | None:
        key = request.headers.get("x-goog-api-key") or request.query.get("key")
        if not key:
            return self.error(
                403,
                "Method doesn't allow unregistered callers (callers without established "
                "identity). Please use API Key or other form of API consumer identity to call "
                "this API.",
            )
        if self.state.require_key is not None and key != self.state.require_key:
            details = [
                {
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": "API_KEY_INVALID",
                    "domain": "googleapis.com",
                    "metadata": {"service": "generativelanguage.googleapis.com"},
                }
            ]
            err = SimError(400, "API key not valid. Please pass a valid API key.")
            return self.error_response(err, self.error_body(err, details))
        return None

    async def models(self, request: web.Request, body: Any) -> web.StreamResponse:
        if request.match_info["version"] not in self.versions:
            return await self.not_found(request, body)
        if (denied := self.auth(request)) is not None:
            return denied
        models = [
            {
                "name": f"models/{m}",
                "version": "001",
                "displayName": m,
                "inputTokenLimit": 1048576,
                "outputTokenLimit": 65536,
                "supportedGenerationMethods": ["generateContent", "countTokens"],
            }
            for m in _MODELS
        ]
        return self._json({"models": models})

    @staticmethod
    def _json(obj: Any) -> web.Response:
        return web.Response(body=orjson.dumps(obj), headers={"Content-Type": "application/json"})

    def embedding_methods(self) -> dict[str, Any]:
        return {"batchEmbedContents": self.batch_embed, "embedContent": self.embed}

    @staticmethod
    def _embed_one(req: Any, where: str) -> list[float]:
        req = _norm(
            _require_object(req, where),
            frozenset({"model", "content", "taskType", "title", "outputDimensionality"}),
            where,
        )
        content = _validate_content(req.get("content"), f"{where}.content")
        dims = req.get("outputDimensionality", _EMBED_DIMS)
        if not _is_int(dims) or not 1 <= dims <= 3072:
            raise _bad_value(f"{where}.output_dimensionality", "TYPE_INT32", dims)
        return embedding(_texts(content["parts"]), dims)

    async def batch_embed(
        self, request: web.Request, body: Any, model: str, method: str
    ) -> web.StreamResponse:
        body = _norm(_require_object(body, ""), frozenset({"requests"}), "")
        reqs = body.get("requests")
        if not isinstance(reqs, list) or not reqs:
            raise _Invalid("* BatchEmbedContentsRequest.requests: requests is not specified")
        if len(reqs) > 100:
            raise _Invalid(
                "* BatchEmbedContentsRequest.requests: at most 100 requests can be in one batch"
            )
        out = []
        for i, r in enumerate(reqs):
            if isinstance(r, dict) and r.get("model") != f"models/{model}":
                raise _Invalid(
                    f"* BatchEmbedContentsRequest.requests[{i}].model: the model "
                    f"must be models/{model}, as in the URL."
                )
            out.append({"values": self._embed_one(r, f"requests[{i}]")})
        return await self.reply(request, {"embeddings": out})

    async def embed(
        self, request: web.Request, body: Any, model: str, method: str
    ) -> web.StreamResponse:
        return await self.reply(request, {"embedding": {"values": self._embed_one(body, "")}})


class VertexProvider(_Google):
    """Vertex AI publisher models (aiplatform.googleapis.com), OAuth bearer tokens."""

    kind = "vertex"
    versions = ("v1", "v1beta1")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._token_ids = itertools.count(1)
        self.issued: set[str] = set()

    def routes(self) -> list[tuple[str, str, BodyHandler]]:
        return [
            (
                "POST",
                "/{version}/projects/{project}/locations/{location}/publishers/google/"
                "models/{target}",
                self.dispatch,
            ),
            ("POST", "/token", self.token),
        ]

    def auth(self, request: web.Request) -> web.Response | None:
        header = request.headers.get("Authorization", "")
        token = header[7:].strip() if header.startswith("Bearer ") else ""
        if not token:
            return self.error(
                401,
                "Request is missing required authentication credential. Expected OAuth 2 "
                "access token, login cookie or other valid authentication credential.",
            )
        key = self.state.require_key
        if key is not None and token != key and token not in self.issued:
            return self.error(
                401,
                "Request had invalid authentication credentials. Expected OAuth 2 access "
                "token, login cookie or other valid authentication credential.",
            )
        return None

    async def token(self, request: web.Request, body: Any) -> web.StreamResponse:
        """OAuth 2 token endpoint for the service-account JWT-bearer grant (RFC 7523)."""
        form = await request.post()
        if form.get("grant_type") != _JWT_GRANT:
            return self._oauth_error("unsupported_grant_type", "Invalid grant_type.")
        assertion = form.get("assertion")
        claims = _jwt_claims(assertion) if isinstance(assertion, str) else None
        if claims is None:
            return self._oauth_error("invalid_grant", "Invalid JWT: malformed assertion.")
        if not claims.get("iss") or not (claims.get("scope") or claims.get("target_audience")):
            return self._oauth_error(
                "invalid_scope", "Invalid OAuth scope or ID token audience provided."
            )
        token = f"sim-token-{next(self._token_ids)}"
        self.issued.add(token)
        return web.Response(
            body=orjson.dumps(
                {"access_token": token, "expires_in": _TOKEN_LIFETIME_S, "token_type": "Bearer"}
            ),
            headers={"Content-Type": "application/json"},
        )

    @staticmethod
    def _oauth_error(error: str, description: str) -> web.Response:
        return web.Response(
            status=400,
            body=orjson.dumps({"error": error, "error_description": description}),
            headers={"Content-Type": "application/json"},
        )

    def embedding_methods(self) -> dict[str, Any]:
        return {"predict": self.predict}

    async def predict(
        self, request: web.Request, body: Any, model: str, method: str
    ) -> web.StreamResponse:
        body = _norm(_require_object(body, ""), frozenset({"instances", "parameters"}), "")
        instances = body.get("instances")
        if not isinstance(instances, list) or not instances:
            raise _Invalid("instances must be a non-empty list.")
        params = body.get("parameters") or {}
        if not isinstance(params, dict):
            raise _bad_value("parameters", "TYPE_MESSAGE", params)
        dims = params.get("outputDimensionality", _EMBED_DIMS)
        if not _is_int(dims) or not 1 <= dims <= 3072:
            raise _bad_value("parameters.outputDimensionality", "TYPE_INT32", dims)
        predictions = []
        chars = 0
        for i, inst in enumerate(instances):
            if not isinstance(inst, dict) or not isinstance(inst.get("content"), str):
                raise _Invalid(f"instances[{i}].content must be a string.")
            text: str = inst["content"]
            chars += len(text)
            predictions.append(
                {
                    "embeddings": {
                        "statistics": {"truncated": False, "token_count": count_words(text)},
                        "values": embedding(text, dims),
                    }
                }
            )
        return await self.reply(
            request, {"predictions": predictions, "metadata": {"billableCharacterCount": chars}}
        )
