"""The permissions this plugin guards its routes with (``register_permissions``).

Names start with the plugin's name; the role is the lowest that holds each by
default. The core refuses a plugin permission outside its prefix.
"""

from __future__ import annotations

from zhongtai.identity.roles import Permission, Role

GREETING_READ = Permission("hello.greeting.read", "See a project's greetings", Role.viewer)
GREETING_WRITE = Permission("hello.greeting.write", "Greet someone in a project", Role.developer)

PERMISSIONS = [GREETING_READ, GREETING_WRITE]
