"""FX graph cache keys: what a compiled graph depends on, pickled deterministically, hashed.

:class:`FxGraphHashDetails` gathers it: the graph's code and its tensor constants (by
value), each input's :class:`TensorMetadata` (dtype, device, layout, sizes and strides,
symbolic ones as their expressions, requires_grad), the compile options (``fx_kwargs``,
sorted), the config entries that change generated code, kiln (its version and a hash of its
sources) / torch / Python / C++
compiler versions and the CPU it was built for (kernels are compiled with ``-march=native``).

:class:`FxGraphCachePickler` pickles it the same way in every process: dicts are sorted by
key and sets by value (their iteration order depends on string hashing), fake tensors become
metadata, real tensors metadata and values, SymInts their expressions. What it cannot pickle
raises :class:`BypassFxGraphCache`: the graph is compiled without the cache.
"""

from __future__ import annotations

import base64
import copyreg
import dataclasses
import functools
import hashlib
import io
import os
import pickle
import platform
import sys
from typing import Any

import torch
import torch.fx


class BypassFxGraphCache(Exception):
    """This graph cannot be keyed (or its compiled form cannot be stored): no cache."""


@dataclasses.dataclass(frozen=True)
class TensorMetadata:
    """What a compiled graph assumes about one tensor input (not its values)."""

    dtype: torch.dtype
    shape: tuple[Any, ...]
    stride: tuple[Any, ...]
    device: torch.device
    layout: torch.layout
    requires_grad: bool
    is_quantized: bool = False
    is_nested: bool = False


@dataclasses.dataclass(frozen=True)
class TensorMetadataAndValues:
    """A tensor constant of the graph: its metadata and its values (two graphs that differ
    only in a constant's values compile to different code)."""

    tensor_metadata: TensorMetadata
    values: list[Any]


@dataclasses.dataclass(frozen=True)
class OrderedSetHolder:
    """A set's items in sorted order: sets pickle in an order that varies between runs."""

    items: list[Any]


def _dim(value: Any) -> Any:
    return str(value) if isinstance(value, torch.SymInt) else int(value)


def extract_tensor_metadata(t: torch.Tensor) -> TensorMetadata:
    nested = bool(getattr(t, "is_nested", False))
    shape = () if nested else tuple(_dim(s) for s in t.shape)
    stride = () if nested or t.layout != torch.strided else tuple(_dim(s) for s in t.stride())
    return TensorMetadata(t.dtype, shape, stride, t.device, t.layout, bool(t.requires_grad),
                          bool(t.is_quantized), nested)


def _is_fake(t: torch.Tensor) -> bool:
    from torch._subclasses.fake_tensor import FakeTensor
    return isinstance(t, FakeTensor) or t.device.type == "meta"


def _reduce_tensor(t: torch.Tensor) -> Any:
    meta = extract_tensor_metadata(t)
    if _is_fake(t):
        return (TensorMetadata, dataclasses.astuple(meta))
    if t.is_nested or t.layout != torch.strided or t.is_quantized:
        raise BypassFxGraphCache(f"a tensor constant kiln cannot key ({t.layout})")
    values = t.detach().cpu().tolist()
    return (TensorMetadataAndValues, (meta, values))


def _reduce_symint(s: torch.SymInt) -> Any:
    return (str, (str(s),))


def _reduce_graph_module(gm: torch.fx.GraphModule) -> Any:
    """A graph module as its code and the values of the attributes the code reads."""
    attrs = []
    for node in gm.graph.nodes:
        if node.op == "get_attr":
            value: Any = gm
            for part in node.target.split("."):
                value = getattr(value, part)
            if isinstance(value, torch.nn.Module):
                if not isinstance(value, torch.fx.GraphModule):
                    raise BypassFxGraphCache(f"the graph calls a module: {node.target}")
            attrs.append((node.target, value))
        elif node.op == "call_module":
            raise BypassFxGraphCache(f"the graph calls a module: {node.target}")
        elif node.op == "call_function" and isinstance(node.target, torch._ops.HigherOrderOperator):
            raise BypassFxGraphCache(f"Can't cache HigherOrderOperator: {node.target.name()}")
    return (tuple, ((gm.code, canonical(attrs)),))


@dataclasses.dataclass(frozen=True)
class SortedItems:
    """A dict's items sorted by key: dicts pickle in insertion order."""

    items: list[tuple[Any, Any]]


def canonical(obj: Any) -> Any:
    """``obj`` with every dict and set (inside lists, tuples and dicts) in sorted order.
    (Exact dicts and sets never reach a pickler's reducer hooks, so this runs first.)"""
    if isinstance(obj, FxGraphHashDetails):
        return (type(obj).__qualname__, canonical(vars(obj)))
    if isinstance(obj, dict):
        try:
            items = sorted(obj.items(), key=lambda kv: repr(kv[0]))
        except Exception as e:  # noqa: BLE001 - a key whose repr fails cannot be keyed
            raise BypassFxGraphCache(f"cannot order a dict: {e}") from e
        return SortedItems([(canonical(k), canonical(v)) for k, v in items])
    if isinstance(obj, (set, frozenset)):
        return OrderedSetHolder(sorted((canonical(x) for x in obj), key=repr))
    if isinstance(obj, list):
        return [canonical(x) for x in obj]
    if isinstance(obj, tuple) and type(obj) is tuple:
        return tuple(canonical(x) for x in obj)
    return obj


class FxGraphCachePickler(pickle.Pickler):
    """A pickler whose bytes depend only on what a compiled graph depends on."""

    dispatch_table = copyreg.dispatch_table.copy()
    dispatch_table.update({
        torch.Tensor: _reduce_tensor,
        torch.nn.Parameter: _reduce_tensor,
        torch.SymInt: _reduce_symint,
        torch.fx.GraphModule: _reduce_graph_module,
    })

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, torch.Tensor):
            return _reduce_tensor(obj)
        if isinstance(obj, torch.fx.GraphModule):
            return _reduce_graph_module(obj)
        return NotImplemented

    @classmethod
    def dumps(cls, obj: Any) -> bytes:
        """``obj`` pickled deterministically; BypassFxGraphCache when it cannot be."""
        buffer = io.BytesIO()
        pickler = cls(buffer, protocol=4)
        pickler.fast = True  # no memo: equal strings pickle the same however they were made
        try:
            pickler.dump(canonical(obj))
        except BypassFxGraphCache:
            raise
        except (pickle.PicklingError, TypeError, AttributeError, RecursionError) as e:
            raise BypassFxGraphCache(f"Failed to pickle cache key: {e}") from e
        return buffer.getvalue()

    @classmethod
    def get_hash(cls, obj: Any) -> str:
        return sha256_hash(cls.dumps(obj))


def sha256_hash(data: bytes) -> str:
    """SHA-256 as torch writes it in cache keys: base32, 51 characters, lower case."""
    return base64.b32encode(hashlib.sha256(data).digest())[:51].decode().lower()


@functools.cache
def _cpu_identity() -> str:
    """The CPU model and its feature flags: kernels built with -march=native run only where
    those flags exist."""
    model, flags = platform.processor(), ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and not model.strip():
                    model = line.split(":", 1)[1].strip()
                elif line.startswith(("flags", "Features")):
                    flags = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{platform.machine()} {model} {hashlib.sha256(flags.encode()).hexdigest()[:16]}"


@functools.cache
def kiln_source_hash() -> str:
    """A hash of kiln's own Python sources (torch's ``torch_key`` hashes inductor's): an
    entry made by other code generation is never loaded, even under the same version."""
    import kiln

    root = os.path.dirname(kiln.__file__)
    digest = hashlib.sha256()
    for folder, dirs, files in sorted(os.walk(root)):
        dirs.sort()
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                digest.update(os.path.relpath(path, root).encode())
                with open(path, "rb") as f:
                    digest.update(f.read())
    return digest.hexdigest()


@functools.cache
def _system() -> dict[str, str]:
    from kiln import __version__
    from kiln.codegen.cpp_compiler import compiler_version, cxx

    try:
        compiler = compiler_version(cxx())
    except Exception as e:  # noqa: BLE001 - no compiler: the compile itself will say so
        compiler = f"unavailable: {e}"
    return {"kiln": __version__, "kiln_source": kiln_source_hash(),
            "torch": torch.__version__, "python": sys.version,
            "compiler": compiler, "cpu": _cpu_identity(),
            "cuda": str(torch.version.cuda), "platform": sys.platform}


class FxGraphHashDetails:
    """Everything a compiled graph's code depends on (see the module doc)."""

    def __init__(self, gm: torch.fx.GraphModule | None, example_inputs: list[Any],
                 fx_kwargs: dict[str, Any], inputs_to_check: list[int]) -> None:
        from kiln import config

        self.gm = gm
        self.example_inputs = example_inputs
        self.fx_kwargs = {k: v for k, v in fx_kwargs.items() if k != "graph_id"}
        self.inputs_to_check = list(inputs_to_check)
        self.config = config.codegen_config()
        self.cache_key_tag = os.environ.get("KILN_CACHE_KEY_TAG", "")
        self.deterministic = (torch.are_deterministic_algorithms_enabled(),
                              torch.is_deterministic_algorithms_warn_only_enabled())
        self.system = _system()



def compiled_fx_graph_hash(gm: torch.fx.GraphModule, example_inputs: list[Any],
                           fx_kwargs: dict[str, Any] | None = None,
                           inputs_to_check: list[int] | None = None) -> str:
    """The FX graph cache key: ``"f"`` + the hash of the graph's details."""
    details = FxGraphHashDetails(gm, example_inputs, fx_kwargs or {}, inputs_to_check or [])
    return "f" + FxGraphCachePickler.get_hash(details)
