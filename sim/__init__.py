"""Provider simulator: fake LLM providers speaking each provider's real wire format."""

from sim.common import SimOptions
from sim.server import PROVIDERS, SimRunner, create_app, start_sim

__all__ = ["PROVIDERS", "SimOptions", "SimRunner", "create_app", "start_sim"]
