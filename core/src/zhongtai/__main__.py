"""``python -m zhongtai`` runs the ``zhongtai`` command."""

from zhongtai.cli.main import main

main()
