"""The hooks the train plugin declares for other plugins (see ``register_hookspecs``).

Kept apart from the modules that implement them so that declaring the hooks, which
happens when plugins load, imports nothing heavy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import zhongtai

if TYPE_CHECKING:
    from zhongtai.platform import Platform
    from zhongtai_train.evaluate import Evaluator

__all__ = ["EvaluationHooks"]


class EvaluationHooks:
    """The hooks the train plugin declares for other plugins (``register_hookspecs``)."""

    @staticmethod
    @zhongtai.hookspec
    def register_evaluators(platform: Platform) -> list[Evaluator] | None:
        """Called when evaluators are listed or an evaluation is submitted or runs;
        return :class:`zhongtai_train.evaluate.Evaluator` objects, or None.

        Args:
            platform: the running platform.

        A name already taken (a built-in's, another plugin's) is ignored with a
        warning. Implement it with ``@zhongtai.hookimpl(optionalhook=True)`` so that
        the plugin still loads where the train plugin is not installed.

        Added in 0.2.
        """
