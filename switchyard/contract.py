"""Names the compiled Envoy config and the ext_proc server must agree on, kept in one place.

The control plane writes them into routes and filters; the route and translate phases read
and set them at run time. A mismatch would silently break routing, so both import them here.
"""

from __future__ import annotations

#: Ingress APIs (the route phase parses each; the model routes match them all).
CHAT_PATH = "/v1/chat/completions"
MESSAGES_PATH = "/v1/messages"
EMBEDDINGS_PATH = "/v1/embeddings"
INGRESS_PATHS_REGEX = r"^/v1/(chat/completions|messages|embeddings)$"

#: Headers the route phase sets for Envoy (clients' copies are stripped).
INTERNAL_HEADER_PREFIX = "x-switchyard-"
MODEL_HEADER = "x-switchyard-model"
REQUEST_ID_HEADER = "x-switchyard-rid"
#: Response header with the attempt count (Envoy writes its own count, ext_proc passes it on).
ATTEMPTS_HEADER = "x-switchyard-attempts"
#: Response header the translate phase adds to its attempt's upstream response, naming the
#: backend cluster that answered: with hedging the route phase cannot otherwise tell which of
#: several attempts won (it is removed before the client sees the response).
ANSWERED_BY_HEADER = "x-switchyard-answered-by"
#: Envoy's gRPC access log of failed upstream attempts (router `upstream_log`), to ext_proc.
ATTEMPT_LOG_NAME = "switchyard_failed_attempts"

#: Dynamic metadata (namespace, key) carrying a request's ordered candidates for the
#: priority_group cluster specifier.
METADATA_NAMESPACE = "switchyard"
PRIORITY_GROUPS_KEY = "priority_groups"
#: Keys (same namespace) naming the request's first candidate backend cluster and provider:
#: the model routes' rate-limit descriptors for Envoy's quota safety net.
FIRST_BACKEND_KEY = "first_backend"
FIRST_PROVIDER_KEY = "first_provider"

#: Cluster-name prefix of a hedged model's priority cluster.
HEDGE_PREFIX = "hedge."

#: Live selection (issue 9). Capabilities a request may need and a backend may lack (the
#: control plane resolves each backend's from its provider kind and config).
CAPABILITIES = ("tools", "images", "json_schema")
#: Task categories of a request (selection's classifier; per-category quality in the config).
TASK_CATEGORIES = ("tools", "long_context", "code", "reasoning", "chat")
#: `ALIAS:<preset>` selects a strategy preset of model ALIAS without a new config entry.
PRESETS = {"fast": "latency", "cheap": "cost", "best": "quality"}
#: Quality feedback for a response (route phase answers it; ext_proc must not be disabled).
FEEDBACK_PATH = "/v1/feedback"
#: Response headers: why the request went where it went, and the id feedback may name.
ROUTE_HEADER = "x-switchyard-route"
RESPONSE_ID_HEADER = "x-switchyard-request-id"
#: Per-request tightening of the model's SLO / price cap (request headers).
SLO_TTFT_HEADER = "x-switchyard-slo-ttft-ms"
MAX_PRICE_HEADER = "x-switchyard-max-price"

#: GPU pools (issue 10): the endpoint the route phase picked, then its fallbacks, as
#: `IP:PORT[,IP:PORT...]` for Envoy's override_host load balancing (the Gateway API Inference
#: Extension's header and dynamic-metadata key).
DESTINATION_ENDPOINT_HEADER = "x-gateway-destination-endpoint"
DESTINATION_ENDPOINT_NAMESPACE = "envoy.lb"
