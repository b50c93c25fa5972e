"""The zhongtai command line.

Plugins' commands (``register_commands``) may use these helpers::

    from zhongtai.cli import operator_errors, platform_or_exit

    @click.command()
    def mine() -> None:
        platform = platform_or_exit(schema="check")  # exits with a clear line on failure
        try:
            with operator_errors(), platform.db.transaction() as session:
                ...
        finally:
            platform.close()
"""

from zhongtai.cli.main import operator_errors, platform_or_exit

__all__ = ["operator_errors", "platform_or_exit"]
