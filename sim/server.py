"""Builds and starts simulated providers; adds the `/_sim/*` control endpoints.

A new provider kind is one module with a `Provider` subclass plus one line in `PROVIDERS`.
"""

from typing import Any, Final

from aiohttp import web

from sim.anthropic import AnthropicProvider
from sim.azure import AzureOpenAIProvider
from sim.bedrock import BedrockProvider
from sim.common import INVALID_JSON, Provider, SimOptions, SimState, json_response, parse_body
from sim.gemini import GeminiProvider, VertexProvider
from sim.openai import OpenAIProvider, TGIProvider, VLLMProvider

__all__ = ["PROVIDERS", "STATE_KEY", "SimOptions", "SimRunner", "create_app", "start_sim"]

PROVIDERS: Final[dict[str, type[Provider]]] = {
    OpenAIProvider.kind: OpenAIProvider,
    AnthropicProvider.kind: AnthropicProvider,
    BedrockProvider.kind: BedrockProvider,
    GeminiProvider.kind: GeminiProvider,
    VertexProvider.kind: VertexProvider,
    AzureOpenAIProvider.kind: AzureOpenAIProvider,
    VLLMProvider.kind: VLLMProvider,
    TGIProvider.kind: TGIProvider,
}
STATE_KEY: Final = web.AppKey("sim_state", SimState)
# Loopback only: the simulator must never be reachable from outside the machine.
LOOPBACK: Final = "127.0.0.1"


def create_app(
    kind: str, name: str, options: SimOptions, require_key: str | None = None,
    engine: Any = None,
) -> web.Application:
    """An aiohttp app simulating provider `kind`; `require_key` turns on API-key checks;
    `engine` (a `sim.vllm_engine.EngineConfig`) gives the vLLM kind its batching model."""
    try:
        provider_cls = PROVIDERS[kind]
    except KeyError:
        raise ValueError(f"unknown provider kind {kind!r}; known: {sorted(PROVIDERS)}") from None
    state = SimState(kind, name, options, require_key)
    state.engine_cfg = engine
    provider = provider_cls(state)
    app = web.Application(client_max_size=64 * 1024 * 1024)  # providers take large prompts
    app[STATE_KEY] = state
    _add_control_routes(app, state)
    for method, path, handler in provider.routes():
        app.router.add_route(method, path, provider.endpoint(handler))
    # Last: anything else is a 404 in the provider's own format (and recorded).
    app.router.add_route("*", "/{tail:.*}", provider.endpoint(provider.not_found))

    async def on_shutdown(_: web.Application) -> None:
        state.closing = True  # lets hung requests and streams end instead of stalling cleanup

    app.on_shutdown.append(on_shutdown)
    engine = getattr(provider, "engine", None)
    if engine is not None:
        async def on_cleanup(_: web.Application) -> None:
            await engine.close()

        app.on_cleanup.append(on_cleanup)
    return app


def _add_control_routes(app: web.Application, state: SimState) -> None:
    """`/_sim/*`: health, recorded requests and run-time options (never recorded)."""

    async def health(_: web.Request) -> web.Response:
        return json_response(
            {"status": "ok", "name": state.name, "kind": state.kind, "hanging": state.hanging,
             "quota_admitted": state.quota.admitted, "quota_refused": state.quota.refused}
        )

    async def get_requests(_: web.Request) -> web.Response:
        return json_response(state.requests())

    async def clear_requests(_: web.Request) -> web.Response:
        state.clear_records()
        return json_response({"cleared": True})

    async def get_options(_: web.Request) -> web.Response:
        return json_response(state.options.to_json())

    async def put_options(request: web.Request) -> web.Response:
        patch = parse_body(await request.read())
        if patch is INVALID_JSON or not isinstance(patch, dict):
            return json_response({"error": "body must be a JSON object of SimOptions fields"}, 400)
        try:
            state.set_options(state.options.patched(patch))
        except ValueError as exc:
            return json_response({"error": str(exc)}, 400)
        return json_response(state.options.to_json())

    async def reset_options(_: web.Request) -> web.Response:
        state.set_options(state.initial_options)
        return json_response(state.options.to_json())

    app.router.add_get("/_sim/health", health)
    app.router.add_get("/_sim/requests", get_requests)
    app.router.add_delete("/_sim/requests", clear_requests)
    app.router.add_get("/_sim/options", get_options)
    app.router.add_put("/_sim/options", put_options)
    app.router.add_delete("/_sim/options", reset_options)


class SimRunner(web.AppRunner):
    """An AppRunner that knows its bound port (port 0 picks a free one)."""

    host: str
    port: int

    @property
    def state(self) -> SimState:
        return self.app[STATE_KEY]

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


async def start_sim(
    kind: str,
    name: str,
    host: str,
    port: int,
    options: SimOptions,
    require_key: str | None = None,
    engine: Any = None,
) -> SimRunner:
    """Start one simulated provider; `await runner.cleanup()` stops it."""
    if host not in (LOOPBACK, "localhost", "::1"):
        raise ValueError(f"the simulator binds to loopback only, not {host!r}")
    if host == "localhost" and port == 0:
        host = LOOPBACK  # "localhost" may bind v4 and v6; port 0 would give each its own port
    app = create_app(kind, name, options, require_key=require_key, engine=engine)
    # No access log (benchmarks); short shutdown so in-flight streams don't stall cleanup.
    runner = SimRunner(app, access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    runner.host = host
    runner.port = _bound_port(runner, port)
    return runner


def _bound_port(runner: web.AppRunner, requested: int) -> int:
    for addr in runner.addresses:
        if isinstance(addr, tuple) and len(addr) >= 2:
            port: Any = addr[1]
            return int(port)
    return requested
