"""agent: the edge runtime (connectors, windowing, sealing, spool, uplink)."""

from agent.errors import AgentError, ConfigError

__all__ = ["AgentError", "ConfigError"]
