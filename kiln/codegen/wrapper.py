"""The Python wrapper: one generated module per graph that allocates buffers (with eager's
strides), calls the C++ kernels (ctypes) and the extern kernels (aten), frees each buffer
after its last use (or hands its memory to a later buffer of the same layout) and returns the
outputs.

    def call(args):
        arg0, arg1 = args
        args.clear()
        s0 = arg0.size(0)
        buf0 = empty_strided((s0, 64), (64, 1), dtype=float32)
        kernel0(arg0.data_ptr(), buf0.data_ptr(), s0, threads())
        ...
        return [buf3]
"""

from __future__ import annotations

import dataclasses
from typing import Any

import sympy
import torch

from kiln.codegen.cpp import KernelSource
from kiln.codegen.ir import Buffer, ComputedBuffer, ExternCall, InputBuffer
from kiln.codegen.printers import pyexpr
from kiln.codegen.scheduler import Kernel, Schedule


def _fresh_tensor(base: torch.Tensor, size: Any, stride: Any, offset: int) -> torch.Tensor:
    """A tensor on ``base``'s memory that is not a view of it (no ``_base``)."""
    return torch.empty(0, dtype=base.dtype, device=base.device).set_(
        base.untyped_storage(), offset, size, stride)


def _tuple(values: list[Any]) -> str:
    return "(" + "".join(pyexpr(v) + ", " for v in values) + ")"


@dataclasses.dataclass
class WrapperSource:
    source: str
    globals: dict[str, Any]


class WrapperWriter:
    def __init__(self, schedule: Schedule, kernels: dict[str, KernelSource]) -> None:
        self.schedule = schedule
        self.graph = schedule.graph
        self.kernels = kernels
        self.lines: list[str] = []
        self.globals: dict[str, Any] = {"empty_strided": torch.empty_strided,
                                        "fresh": _fresh_tensor}
        self.live: dict[str, str] = {}  # storage name -> python name

    def global_for(self, value: Any, hint: str) -> str:
        name = f"{hint}_{len(self.globals)}"
        self.globals[name] = value
        return name

    def line(self, text: str) -> None:
        self.lines.append("    " + text)

    def ref(self, buf: Buffer) -> str:
        """Python expression of ``buf`` (a view: as_strided on its storage's tensor)."""
        base = buf.storage.name
        if not buf.is_view():
            return base
        lay = buf.layout
        origin = f"{base}.storage_offset()" if isinstance(buf.storage, InputBuffer) or \
            not isinstance(buf.storage, ComputedBuffer) else "0"
        offset = pyexpr(lay.offset)
        if origin != "0":
            offset = f"{origin} + {offset}"
        return f"{base}.as_strided({_tuple(lay.size)}, {_tuple(lay.stride)}, {offset})"

    def render_arg(self, a: Any) -> str:
        if isinstance(a, Buffer):
            return self.ref(a)
        if isinstance(a, (list, tuple)):
            inner = ", ".join(self.render_arg(x) for x in a)
            return f"[{inner}]" if isinstance(a, list) else f"({inner}{',' if len(a) == 1 else ''})"
        if isinstance(a, sympy.Basic):
            return pyexpr(a)
        if a is None or isinstance(a, (bool, int, str)):
            return repr(a)
        if isinstance(a, float):
            return repr(a) if a == a and abs(a) != float("inf") else \
                self.global_for(a, "const")
        return self.global_for(a, "const")

    def generate(self) -> WrapperSource:
        g = self.graph
        names = [f"arg{i}" for i in range(len(g.inputs))]
        self.lines.append("def call(args):")
        if names:
            self.line("".join(n + ", " for n in names) + "= args")
        self.line("args.clear()")
        for name, value in g.constants.items():
            self.line(f"{name} = {self.global_for(value, 'constant')}")
        for symbol, source in sorted(g.symbols.items(), key=lambda kv: kv[0].name):
            self.line(f"{symbol.name} = {source}")
        last_use = self._last_uses()
        free_pool: dict[tuple[Any, ...], list[str]] = {}
        reusable = self._reusable()
        for position, step in enumerate(self.schedule.steps):
            if isinstance(step, Kernel):
                self._kernel(step, free_pool, reusable)
            else:
                self._extern(step)
            for name in last_use.get(position, []):
                key = reusable.get(name)
                if key is not None:
                    free_pool.setdefault(key, []).append(name)
                else:
                    self.line(f"del {name}")
        outs = ", ".join(self._output(o) for o in g.outputs)
        self.line(f"return [{outs}]")
        return WrapperSource("\n".join(self.lines) + "\n", self.globals)

    def _output(self, o: Any) -> str:
        if isinstance(o, Buffer):
            others = [x for x in self.graph.outputs if isinstance(x, Buffer) and x is not o
                      and x.storage is o.storage]
            if o.is_view() and not others and isinstance(o.storage, ComputedBuffer):
                # the graph's own memory seen with another shape (x.reshape of a copy):
                # a tensor of its own to autograd, as aten's _unsafe_view gives, not a view
                lay = o.layout
                return (f"fresh({o.storage.name}, {_tuple(lay.size)}, {_tuple(lay.stride)}, "
                        f"{pyexpr(lay.offset)})")
            return self.ref(o)
        if isinstance(o, sympy.Basic):
            return pyexpr(o)
        return self.render_arg(o)

    def _last_uses(self) -> dict[int, list[str]]:
        """Storage names whose last read or write is at each step (never the outputs')."""
        last: dict[str, int] = {}
        for position, step in enumerate(self.schedule.steps):
            if isinstance(step, Kernel):
                names = list(self.kernels[step.name].pointers)
            else:
                names = [b.storage.name for b in step.input_buffers()] + \
                    [b.name for b in step.output_buffers()]
            for n in names:
                last[n] = position
        keep = {o.storage.name for o in self.graph.outputs if isinstance(o, Buffer)}
        out: dict[int, list[str]] = {}
        for name, position in last.items():
            if name not in keep and not name.startswith(("arg", "const")):
                out.setdefault(position, []).append(name)
        return out

    def _reusable(self) -> dict[str, tuple[Any, ...]]:
        """Buffers kiln allocates whose memory a later buffer of the same layout may take:
        never one an extern call sees (it may return an alias of it)."""
        seen_by_extern: set[str] = set()
        for step in self.schedule.steps:
            if isinstance(step, ExternCall):
                seen_by_extern |= {b.storage.name for b in step.input_buffers()}
        keys = {}
        for step in self.schedule.steps:
            if isinstance(step, Kernel):
                for m in step.members:
                    b = m.buffer
                    if b.name in step.local or b.name in seen_by_extern:
                        continue
                    keys[b.name] = (tuple(b.layout.size), tuple(b.layout.stride), b.dtype)
        return keys

    def _kernel(self, kernel: Kernel, free_pool: dict[tuple[Any, ...], list[str]],
                reusable: dict[str, tuple[Any, ...]]) -> None:
        src = self.kernels[kernel.name]
        for m in kernel.members:
            b = m.buffer
            if b.name in kernel.local or b.name not in src.written:
                continue
            key = (tuple(b.layout.size), tuple(b.layout.stride), b.dtype)
            pool = free_pool.get(key)
            if pool and b.name in reusable:
                self.line(f"{b.name} = {pool.pop()}  # reuse")
            else:
                dtype = self.global_for(b.dtype, "dtype")
                self.line(f"{b.name} = empty_strided({_tuple(b.layout.size)}, "
                          f"{_tuple(b.layout.stride)}, dtype={dtype})")
        fn = self.global_for(None, kernel.name)
        self.globals[fn] = src  # replaced by the loaded function
        args = [f"{p}.data_ptr()" for p in src.pointers] + [s.name for s in src.sizes]
        args.append("threads()")
        self.line(f"{fn}({', '.join(args)})")

    def _extern(self, call: ExternCall) -> None:
        op = self.global_for(call.op, "aten")  # (the loader calls an OpOverload's ._op)
        args = [self.render_arg(a) for a in call.args]
        args += [f"{k}={self.render_arg(v)}" for k, v in call.kwargs.items()]
        result = f"{op}({', '.join(args)})"
        outs = call.outputs
        if isinstance(outs, Buffer):
            self.line(f"{outs.name} = {result}")
            return
        tmp = f"res_{len(self.globals)}"
        self.line(f"{tmp} = {result}")
        if isinstance(outs, (list, tuple)):
            for i, o in enumerate(outs):
                if isinstance(o, Buffer):
                    self.line(f"{o.name} = {tmp}[{i}]")
                elif isinstance(o, (list, tuple)):
                    for j, x in enumerate(o):
                        if isinstance(x, Buffer):
                            self.line(f"{x.name} = {tmp}[{i}][{j}]")
        self.line(f"del {tmp}")
