"""Sample plugins that misbehave on purpose, for zhongtai's own tests."""
