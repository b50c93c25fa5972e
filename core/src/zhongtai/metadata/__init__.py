"""Metadata: the database, migrations, lineage between entities."""
