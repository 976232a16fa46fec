"""The provider layer: `dialects` maps wire formats (pure), `client` sends them (IO)."""

from .client import ProviderReply, send
from .dialects import Usage, build_request, parse_reply

__all__ = ["ProviderReply", "Usage", "build_request", "parse_reply", "send"]
