"""Identity: users, organizations, projects, roles, API keys, login, audit."""
