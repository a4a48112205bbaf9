"""Running an aten graph as a plain Python function, with less overhead per op than
``GraphModule.forward``.

A GraphModule's generated code calls each op as ``torch.ops.aten.mm.default(...)``: four
attribute lookups and a Python-level ``OpOverload.__call__`` frame before the C++ dispatcher
is reached. That is about a microsecond per op, which on small tensors is a sizeable share
of a step (the GPT-2-shaped block's forward and backward graphs hold about 190 ops). The
function built here binds each ``OpOverload``'s C++ entry point (``OpOverload._op``, which
``__call__`` calls with the same arguments) to a global of the generated code, takes its
inputs as one list (the boxed convention, cleared on entry so inputs can be freed early),
and drops each value after its last use, as FX's code does.

It is what ``"aot_eager"`` and ``"kiln"`` hand to the runtime until code generation exists;
``kiln.aot.nop``/``boxed_nop`` still run the GraphModule as torch's do.
"""

from __future__ import annotations

import keyword
from collections.abc import Callable
from typing import Any

import torch
import torch.fx

from kiln.aot.api import make_boxed_func


def _entry_point(target: Any) -> Any:
    """What the generated code calls for ``target``: the C++ entry point of a plain
    OpOverload, anything else as it is."""
    if type(target) is torch._ops.OpOverload:
        return target._op
    return target


class _Writer:
    """Builds the source of ``run(args)`` and the globals it refers to."""

    def __init__(self, gm: torch.fx.GraphModule) -> None:
        self.globals: dict[str, Any] = {"gm": gm}
        self.names: dict[torch.fx.Node, str] = {}

    def global_for(self, value: Any, hint: str) -> str:
        name = f"g{len(self.globals)}_{hint}"
        self.globals[name] = value
        return name

    def local_for(self, node: torch.fx.Node) -> str:
        name = node.name if node.name.isidentifier() and not keyword.iskeyword(node.name) \
            else f"v{len(self.names)}"
        self.names[node] = f"{name}_{len(self.names)}"
        return self.names[node]

    def render(self, value: Any) -> str:
        if isinstance(value, torch.fx.Node):
            return self.names[value]
        if isinstance(value, tuple):
            return "(" + "".join(self.render(v) + ", " for v in value) + ")"
        if isinstance(value, list):
            return "[" + ", ".join(self.render(v) for v in value) + "]"
        if isinstance(value, dict):
            return "{" + ", ".join(f"{self.render(k)}: {self.render(v)}"
                                   for k, v in value.items()) + "}"
        if value is None or isinstance(value, (bool, int, str)):
            return repr(value)
        if isinstance(value, float) and value == value and value not in (
                float("inf"), float("-inf")):
            return repr(value)
        return self.global_for(value, "const")


def python_function(gm: torch.fx.GraphModule) -> Callable[[list[Any]], Any]:
    """``gm``'s graph as a boxed function ``run(args) -> outputs`` (see the module
    docstring). Returns ``make_boxed_func(gm.forward)`` for graphs it does not handle."""
    writer = _Writer(gm)
    nodes = list(gm.graph.nodes)
    last_use: dict[torch.fx.Node, torch.fx.Node] = {}
    for node in nodes:
        for used in node.all_input_nodes:
            last_use[used] = node
    frees: dict[torch.fx.Node, list[str]] = {}
    placeholders, body = [], []
    for node in nodes:
        if node.op == "placeholder":
            placeholders.append(writer.local_for(node))
        elif node.op == "get_attr":
            body.append(f"    {writer.local_for(node)} = gm.{node.target}")
        elif node.op == "call_function":
            fn = writer.global_for(_entry_point(node.target),
                                   getattr(node.target, "__name__", "fn").split(".")[0])
            args = [writer.render(a) for a in node.args]
            args += [f"{k}={writer.render(v)}" for k, v in node.kwargs.items()]
            body.append(f"    {writer.local_for(node)} = {fn}({', '.join(args)})")
        elif node.op == "output":
            body.append(f"    return {writer.render(node.args[0])}")
            continue
        else:  # call_module / call_method: not in aten graphs
            return make_boxed_func(gm.forward)
        if node.op != "placeholder" and not node.users:
            body.append(f"    {writer.names[node]} = None")
        for used in node.all_input_nodes:
            if last_use[used] is node:
                frees.setdefault(node, []).append(writer.names[used])
        if frees.get(node):
            body.append(f"    {' = '.join(frees[node])} = None")
    head = ["def run(args):"]
    if placeholders:
        head.append(f"    {''.join(p + ', ' for p in placeholders)}= args")
    head.append("    args.clear()")
    unused = [writer.names[n] for n in nodes if n.op == "placeholder" and not n.users]
    if unused:
        head.append(f"    {' = '.join(unused)} = None")
    source = "\n".join(head + body) + "\n"
    namespace = dict(writer.globals)
    exec(compile(source, f"<kiln graph {id(gm):x}>", "exec"), namespace)
    run = namespace["run"]
    run._boxed_call = True
    run._kiln_source = source
    return run


def boxed_python(gm: torch.fx.GraphModule, example_inputs: list[Any]) -> Callable[..., Any]:
    """A compiler (``fw_compiler``/``bw_compiler``) returning :func:`python_function`."""
    return python_function(gm)


__all__ = ["python_function", "boxed_python"]
