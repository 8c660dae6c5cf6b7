"""``ExpressionCommand``: a click command whose EXPRESSION argument may start with a minus.

The paper's "forget a task" edit is ``-toxicity``; click would read that as the options
``-t -o -x …``. Before click parses, an argument that starts with ``-`` and is not one of the
command's declared options (nor the value of one) is taken as the expression, so
``tvreg apply -toxicity -o out.safetensors`` and ``tvreg compose -0.5*a+b -o f`` work as
written, without ``--``. Declared options keep their meaning, glued values included
(``-oout.safetensors``); when such a glued option swallowed what was meant as an expression
(``-only_task`` is ``-o nly_task``) and the expression is then missing, the usage error says so
and how to write it. See docs/cli.md ("Negation on the command line").
"""

from __future__ import annotations

import click

__all__ = ["ExpressionCommand"]


class ExpressionCommand(click.Command):
    """A command whose first positional argument is a composition expression."""

    def _option_table(self, ctx: click.Context) -> dict[str, bool]:
        """Every declared option string -> whether it takes a value."""
        table: dict[str, bool] = {}
        for param in self.get_params(ctx):
            if isinstance(param, click.Option):
                takes_value = not (param.is_flag or param.count)
                for name in (*param.opts, *param.secondary_opts):
                    table[name] = takes_value
        return table

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        table = self._option_table(ctx)
        kept: list[str] = []
        expression: list[str] = []
        glued: list[tuple[str, str]] = []  # (argument, the option it was read as)
        i = 0
        while i < len(args):
            arg = args[i]
            i += 1
            if arg == "--":
                kept.extend(args[i - 1:])
                break
            if not arg.startswith("-") or arg == "-":
                kept.append(arg)
                continue
            name = arg.split("=", 1)[0] if arg.startswith("--") else arg
            if name in table:
                kept.append(arg)
                if table[name] and "=" not in arg and i < len(args):
                    kept.append(args[i])  # the option's value, even if it starts with "-"
                    i += 1
                continue
            if not arg.startswith("--") and table.get(arg[:2]) is True:
                kept.append(arg)  # a short option with its value glued on: -oFILE
                glued.append((arg, arg[:2]))
                continue
            if not expression and not arg.startswith("--"):
                expression.append(arg)  # -toxicity, -0.5*a + b: the expression
                continue
            kept.append(arg)  # an unknown --option: click's own error names it
        if expression:
            kept = kept + ["--"] + expression if "--" not in kept else (
                kept[:kept.index("--") + 1] + expression + kept[kept.index("--") + 1:])
        try:
            return super().parse_args(ctx, kept)
        except click.MissingParameter as e:
            if glued and isinstance(e.param, click.Argument):
                arg, option = glued[0]
                raise click.UsageError(
                    f"{arg!r} reads as the option {option} with the value {arg[2:]!r}, so "
                    f"EXPRESSION is missing; to negate a vector write -- {arg} or \"(-{arg[1:]})\"",
                    ctx) from None
            raise
