"""The plugin's settings: ``ZHONGTAI_HELLO__<FIELD>`` or the ``[hello]`` TOML table."""

from __future__ import annotations

from pydantic import Field

from zhongtai.settings import PluginSettings


class HelloSettings(PluginSettings):
    """What the hello plugin can be configured with.

    Attributes:
        greeting: the word put before each name (``ZHONGTAI_HELLO__GREETING``).
    """

    greeting: str = Field(
        default="Hello",
        min_length=1,
        max_length=40,
        description="The word put before each name, e.g. 'Bonjour'.",
    )

    def render(self, name: str) -> str:
        """The greeting for ``name``: ``"Hello, Ada!"``."""
        return f"{self.greeting}, {name}!"
