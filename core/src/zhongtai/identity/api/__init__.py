"""The identity API: each module returns its route handlers in ``ROUTES``.

``auth`` (login, tokens, registration, setup, invitations), ``orgs`` and ``projects``
(with their members), ``keys`` (API keys), ``users`` (accounts and self-service) and
``audit`` (the audit log). :mod:`zhongtai.identity.plugin` mounts them all.
"""
