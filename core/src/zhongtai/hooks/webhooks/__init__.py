"""Outbound webhooks: a project's events, signed and delivered over HTTP as jobs."""
