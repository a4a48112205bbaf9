"""kiln.aot's entry points, with torch's names and signatures: ``aot_function``,
``aot_module``, ``aot_module_simplified`` (what backends use), ``aot_export_joint_simple``,
``aot_export_function``, the ``nop`` compilers and the boxed calling convention.

``compile_flat`` is the pipeline behind them: metadata pass, then either one inference graph
(no input needs a gradient, or grad mode is off) or a joint graph split by ``partition_fn``;
each graph goes to its compiler; the runtime (runtime.py) wraps the compiled callables.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.fx
import torch.fx.traceback as fx_traceback
import torch.nn as nn
import torch.utils._pytree as pytree
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.experimental.symbolic_shapes import ShapeEnv

from kiln import config
from kiln.aot.autograd_cache import (
    AotAutogradCache,
    AotRecipe,
    build_runtime,
    graph_loader,
    pipeline_options,
    recipe_for,
)
from kiln.aot.errors import AotUnsupported
from kiln.aot.metadata import AotMetadata, collect_metadata
from kiln.aot.partition import default_partition
from kiln.aot.runtime import call_compiled
from kiln.aot.synthetic_base import SyntheticBases, groups_sharing_mutated
from kiln.aot.trace import (
    differentiable_outputs,
    inference_function,
    joint_function,
    tangent_like,
    trace,
)
from kiln.exc import InternalKilnError
from kiln.utils import detect_fake_mode

log = logging.getLogger("kiln.aot")

Compiler = Callable[[torch.fx.GraphModule, list[Any]], Callable[..., Any]]


# --- compilers and the boxed calling convention ----------------------------------------------

def make_boxed_func(f: Callable[..., Any]) -> Callable[[list[Any]], Any]:
    """``f`` called with one list of arguments (which the callee may clear to free inputs
    early), marked ``_boxed_call``."""
    def g(args: list[Any]) -> Any:
        return f(*args)

    g._boxed_call = True  # type: ignore[attr-defined]
    return g


def make_boxed_compiler(compiler: Compiler) -> Compiler:
    @functools.wraps(compiler)
    def boxed(gm: torch.fx.GraphModule, example_inputs: list[Any]) -> Callable[..., Any]:
        out = compiler(gm, example_inputs)
        return out if getattr(out, "_boxed_call", False) else make_boxed_func(out)

    return boxed


def nop(fx_g: torch.fx.GraphModule, _: Any) -> Callable[..., Any]:
    """The compiler that compiles nothing: the graph runs as it is."""
    return fx_g


def boxed_nop(fx_g: torch.fx.GraphModule, example_inputs: list[Any]) -> Callable[..., Any]:
    return make_boxed_func(fx_g.forward)


# --- the pipeline ----------------------------------------------------------------------------

def compile_flat(flat_fn: Callable[..., Sequence[Any]], fake_args: Sequence[Any],
                 fake_mode: Any, **options: Any) -> Callable[..., list[Any]]:
    """Compile ``flat_fn`` (flat inputs -> flat list of outputs) for inputs like
    ``fake_args``; returns ``run(*flat_args) -> list``. ``options``: the compilers,
    ``partition_fn``, ``decompositions``."""
    meta = collect_metadata(flat_fn, fake_args, fake_mode)
    both = [i for i in meta.metadata_mutations
            if meta.inputs[i].mutates_data and meta.inputs[i].requires_grad]
    if both:
        raise AotUnsupported(f"the function changes the shape or strides of inputs {both} "
                             "in place and also their values, which need gradients")
    groups = groups_sharing_mutated(fake_args, meta.mutated_inputs, _may_overlap)
    if groups:
        return _compile_with_synthetic_bases(flat_fn, fake_args, fake_mode, groups, options)
    return unless_aliased(_compile_graphs(flat_fn, fake_args, fake_mode, meta, **options),
                          meta, flat_fn)


def unless_aliased(run: Callable[..., list[Any]], meta: AotMetadata,
                   flat_fn: Callable[..., Sequence[Any]]) -> Callable[..., list[Any]]:
    """``run``, or ``flat_fn`` run eagerly for calls whose inputs share memory with a
    mutated input (``run`` was compiled for inputs that share none)."""
    if not meta.mutated_inputs:
        return run
    mutated = meta.mutated_inputs

    def run_unless_aliased(*args: Any) -> list[Any]:
        # called with views of one another, a mutation through one must show through the
        # others, which only eager gives
        if shares_memory_with_mutated(args, mutated):
            return list(flat_fn(*args))
        return run(*args)

    run_unless_aliased._kiln_aot_meta = meta  # type: ignore[attr-defined]
    run_unless_aliased._kiln_aot_recipe = getattr(run, "_kiln_aot_recipe", None)  # type: ignore[attr-defined]
    return run_unless_aliased


def shares_memory_with_mutated(args: Sequence[Any], mutated: Sequence[int]) -> bool:
    """Whether a tensor of ``args`` may share memory with a mutated one (``mutated``:
    indices into ``args``): then only eager gives the mutation's effect on the others."""
    return any(isinstance(a, torch.Tensor) and a._base is not None for a in args) and \
        bool(groups_sharing_mutated(args, mutated, _may_overlap))


def _compile_with_synthetic_bases(flat_fn: Callable[..., Sequence[Any]],
                                  fake_args: Sequence[Any], fake_mode: Any,
                                  groups: list[list[int]], options: dict[str, Any]
                                  ) -> Callable[..., list[Any]]:
    """Inputs sharing memory with a mutated one passed as their common base
    (synthetic_base.py); calls with another aliasing structure run eagerly."""
    bases = SyntheticBases(fake_args, groups)
    base_args = bases.select(fake_args)
    assert base_args is not None
    run = compile_flat(bases.wrap_fn(flat_fn), base_args, fake_mode, **options)

    def run_with_bases(*args: Any) -> list[Any]:
        selected = bases.select(args)
        if selected is None:
            return list(flat_fn(*args))
        return run(*selected)

    return run_with_bases


def _extent(t: torch.Tensor) -> tuple[int, int] | None:
    """The first and last storage element ``t`` can touch (None: symbolic, unknown)."""
    numbers = [t.storage_offset(), *t.shape, *t.stride()]
    if any(isinstance(n, torch.SymInt) for n in numbers):
        return None
    if t.numel() == 0:
        return (0, -1)
    start = t.storage_offset()
    return start, start + sum((size - 1) * abs(stride)
                              for size, stride in zip(t.shape, t.stride()))


def _may_overlap(a: torch.Tensor, b: torch.Tensor) -> bool:
    """False only when the element ranges of ``a`` and ``b`` are disjoint."""
    ea, eb = _extent(a), _extent(b)
    if ea is None or eb is None:
        return True
    if a.element_size() != b.element_size():
        ea = (ea[0] * a.element_size(), (ea[1] + 1) * a.element_size() - 1)
        eb = (eb[0] * b.element_size(), (eb[1] + 1) * b.element_size() - 1)
    return ea[0] <= eb[1] and eb[0] <= ea[1]


def _compile_graphs(flat_fn: Callable[..., Sequence[Any]], fake_args: Sequence[Any],
                    fake_mode: Any, meta: AotMetadata, *, fw_compiler: Compiler,
                    bw_compiler: Compiler | None = None,
                    partition_fn: Callable[..., Any] = default_partition,
                    decompositions: dict[Any, Any] | None = None,
                    inference_compiler: Compiler | None = None) -> Callable[..., list[Any]]:
    # what needs a gradient is what the program's outputs say (grad mode may change inside)
    needs_autograd = any(
        out.is_tensor and out.requires_grad and not out.regenerated for out in meta.outputs
    ) or any(meta.inputs[i].new_value_requires_grad for i in meta.mutated_inputs) or \
        any(meta.intermediate_bases)
    if not needs_autograd:
        gm = trace(inference_function(flat_fn, meta), [list(fake_args)], fake_mode,
                   decompositions)
        compiled = (inference_compiler or fw_compiler)(gm, list(fake_args))
        return build_runtime(recipe_for("inference", meta, [compiled]), [compiled])
    return _compile_training(flat_fn, fake_args, fake_mode, meta, fw_compiler,
                             bw_compiler or fw_compiler, partition_fn, decompositions)


def _compile_training(flat_fn: Callable[..., Sequence[Any]], fake_args: Sequence[Any],
                      fake_mode: Any, meta: AotMetadata, fw_compiler: Compiler,
                      bw_compiler: Compiler, partition_fn: Callable[..., Any],
                      decompositions: dict[Any, Any] | None) -> Callable[..., list[Any]]:
    num_fwd = meta.num_forward_outputs
    with fake_mode:
        tangents = [tangent_like(meta.examples[p]) for p in differentiable_outputs(meta)]
    joint = trace(joint_function(flat_fn, meta), [list(fake_args), tangents], fake_mode,
                  decompositions, num_fwd_outputs=num_fwd)
    # not to be saved (min-cut): the runtime changes their data, or their shape and
    # strides, after the forward
    joint.meta["mutated_inputs"] = sorted({*meta.mutated_inputs, *meta.metadata_mutations})
    fw_gm, bw_gm = partition_fn(joint, [list(fake_args), tangents], num_fwd_outputs=num_fwd)
    bw_inputs = [n.meta.get("val") for n in bw_gm.graph.nodes if n.op == "placeholder"]
    num_saved = len(bw_inputs) - len(tangents)
    num_saved_tensors = sum(isinstance(v, torch.Tensor) for v in bw_inputs[:num_saved])
    compiled_fw = fw_compiler(fw_gm, list(fake_args))
    compiled_bw = bw_compiler(bw_gm, bw_inputs)
    recipe = recipe_for("training", meta, [compiled_fw, compiled_bw], num_saved=num_saved,
                        num_saved_tensors=num_saved_tensors,
                        enable_grad=not torch.is_grad_enabled())
    return build_runtime(recipe, [compiled_fw, compiled_bw])


def _fake_args(flat_args: Sequence[Any], dynamic: bool = False) -> tuple[list[Any], Any]:
    """Fake versions of ``flat_args`` and their fake mode (the one they already belong to,
    if fake)."""
    mode = detect_fake_mode(flat_args)
    if mode is not None:
        return list(flat_args), mode
    mode = FakeTensorMode(shape_env=ShapeEnv() if dynamic else None, allow_non_fake_inputs=True)
    mode._allow_unsafe_data_ptr_access = config.fake_tensor_allow_unsafe_data_ptr_access
    fakes = [mode.from_tensor(a, static_shapes=not dynamic) if isinstance(a, torch.Tensor)
             else a for a in flat_args]
    return fakes, mode


class _Deduplicated:
    """Inputs that are the same tensor are passed once (torch's ``remove_dupe_args``): the
    compiled function sees each distinct tensor once."""

    def __init__(self, flat_args: Sequence[Any]) -> None:
        first: dict[int, int] = {}
        self.keep: list[int] = []
        self.source: list[int] = []  # per input: its position among the kept ones
        for i, a in enumerate(flat_args):
            if isinstance(a, torch.Tensor) and id(a) in first:
                self.source.append(first[id(a)])
                continue
            if isinstance(a, torch.Tensor):
                first[id(a)] = len(self.keep)
            self.source.append(len(self.keep))
            self.keep.append(i)
        self.any = len(self.keep) != len(flat_args)

    def wrap_fn(self, flat_fn: Callable[..., Any]) -> Callable[..., Any]:
        def deduped(*kept: Any) -> Any:
            return flat_fn(*(kept[s] for s in self.source))
        return deduped

    def wrap_run(self, run: Callable[..., list[Any]]) -> Callable[..., list[Any]]:
        def run_deduplicated(*args: Any) -> list[Any]:
            return run(*self.select(args))

        run_deduplicated._kiln_aot_recipe = getattr(run, "_kiln_aot_recipe", None)  # type: ignore[attr-defined]
        return run_deduplicated

    def select(self, flat_args: Sequence[Any]) -> list[Any]:
        if config.debug_assert:
            for i, s in enumerate(self.source):
                expected = flat_args[self.keep[s]]
                if isinstance(expected, torch.Tensor) and i != self.keep[s] and \
                        flat_args[i] is not expected:
                    raise AssertionError(f"kiln.aot: input {i} was the same tensor as input "
                                         f"{self.keep[s]} when compiled, and is not now")
        return [flat_args[i] for i in self.keep]


def compile_deduplicated(flat_fn: Callable[..., Any], flat_args: Sequence[Any],
                         fake_mode: Any, **options: Any) -> Callable[..., list[Any]]:
    dedupe = _Deduplicated(flat_args)
    if not dedupe.any:
        return compile_flat(flat_fn, flat_args, fake_mode, **options)
    return dedupe.wrap_run(compile_flat(dedupe.wrap_fn(flat_fn), dedupe.select(flat_args),
                                        fake_mode, **options))


def rebuild_deduplicated(recipe: AotRecipe, graphs: list[Callable[..., Any]],
                         flat_fn: Callable[..., Any], flat_args: Sequence[Any]
                         ) -> Callable[..., list[Any]]:
    """What :func:`compile_deduplicated` returns, from a cached recipe and its graphs."""
    dedupe = _Deduplicated(flat_args)
    if dedupe.any:
        flat_fn = dedupe.wrap_fn(flat_fn)
    run = unless_aliased(build_runtime(recipe, graphs), recipe.meta, flat_fn)
    return dedupe.wrap_run(run) if dedupe.any else run


# --- public entry points ---------------------------------------------------------------------

def aot_function(fn: Callable[..., Any], fw_compiler: Compiler,
                 bw_compiler: Compiler | None = None,
                 partition_fn: Callable[..., Any] = default_partition,
                 decompositions: dict[Any, Any] | None = None, num_params_buffers: int = 0,
                 keep_inference_input_mutations: bool = False,
                 inference_compiler: Compiler | None = None, *, dynamic: bool = False,
                 enable_log: bool = True) -> Callable[..., Any]:
    """``fn`` traced ahead of time into forward and backward graphs on its first call,
    compiled by ``fw_compiler``/``bw_compiler``; later calls run the compiled graphs (the
    inputs must keep the structure, shapes and dtypes of the first call, as in torch)."""
    compiled: dict[str, Any] = {}

    def returned_function(*args: Any, **kwargs: Any) -> Any:
        flat_args, in_spec = pytree.tree_flatten((args, kwargs))
        if "run" not in compiled:
            out_spec: list[Any] = []

            def flat_fn(*flat: Any) -> list[Any]:
                a, kw = pytree.tree_unflatten(list(flat), in_spec)
                outs, spec = pytree.tree_flatten(fn(*a, **kw))
                out_spec[:] = [spec]
                return outs

            fakes, mode = _fake_args(flat_args, dynamic)
            compiled["run"] = compile_deduplicated(
                flat_fn, fakes, mode, fw_compiler=fw_compiler, bw_compiler=bw_compiler,
                partition_fn=partition_fn, decompositions=decompositions,
                inference_compiler=inference_compiler)
            compiled["out_spec"] = out_spec[0]
        return pytree.tree_unflatten(compiled["run"](*flat_args), compiled["out_spec"])

    return returned_function


def _lifted(mod: nn.Module) -> tuple[list[str], list[torch.Tensor]]:
    named = [*mod.named_parameters(remove_duplicate=False),
             *mod.named_buffers(remove_duplicate=False)]
    return [n for n, _ in named], [t for _, t in named]


def aot_module(mod: nn.Module, *args: Any, **kwargs: Any) -> nn.Module:
    """``mod`` with its forward compiled by :func:`aot_function` (parameters and buffers are
    inputs of the graphs)."""
    names, _ = _lifted(mod)

    def functional(params: list[torch.Tensor], *a: Any, **kw: Any) -> Any:
        return torch.func.functional_call(mod, dict(zip(names, params)), a, kw)

    compiled = aot_function(functional, *args, num_params_buffers=len(names), **kwargs)

    class AOTModule(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.orig_module = mod

        def forward(self, *a: Any, **kw: Any) -> Any:
            return compiled(_lifted(mod)[1], *a, **kw)

    return AOTModule()


def aot_module_simplified(mod: nn.Module, args: Sequence[Any], fw_compiler: Compiler,
                          bw_compiler: Compiler | None = None,
                          partition_fn: Callable[..., Any] = default_partition,
                          decompositions: dict[Any, Any] | None = None,
                          keep_inference_input_mutations: bool = False,
                          inference_compiler: Compiler | None = None,
                          cudagraphs: Any = None, boxed_forward_device_index: Any = None,
                          ignore_shape_env: bool = False) -> Callable[..., Any]:
    """What a backend calls: ``mod`` (a captured graph) compiled for example ``args`` (fake
    tensors from capture, or real ones). Returns ``forward(*args)`` with ``mod``'s outputs."""
    _refuse_symbolic_recurrent_layers(mod, args)
    names, params = _lifted(mod)
    num_params = len(params)
    out_spec: list[Any] = []

    def flat_fn(*flat: Any) -> list[Any]:
        if num_params:
            result = torch.func.functional_call(mod, dict(zip(names, flat[:num_params])),
                                                tuple(flat[num_params:]))
        elif isinstance(mod, torch.fx.GraphModule):
            # node by node, so each aten op traced inherits its node's metadata (stack trace,
            # source_fn_stack)
            result = torch.fx.Interpreter(mod).run(*flat)
        else:
            result = mod(*flat)
        outs, spec = pytree.tree_flatten(result)
        out_spec[:] = [spec]
        return outs

    flat_args = [*params, *args]
    fakes, mode = _fake_args(flat_args)
    if num_params and detect_fake_mode(list(args)) is not None:
        with mode:
            fakes = [mode.from_tensor(p) for p in params] + list(args)
    options = dict(fw_compiler=fw_compiler, bw_compiler=bw_compiler,
                   partition_fn=partition_fn, decompositions=decompositions,
                   inference_compiler=inference_compiler)

    def compile_fn() -> tuple[Callable[..., list[Any]], Any]:
        return compile_deduplicated(flat_fn, fakes, mode, **options), out_spec[0]

    loader = graph_loader(fw_compiler, bw_compiler, inference_compiler)
    if loader is not None and isinstance(mod, torch.fx.GraphModule):
        key_options = pipeline_options(
            **options, keep_inference_input_mutations=keep_inference_input_mutations,
            same_tensor=_Deduplicated(fakes).source)
        run, spec = AotAutogradCache.load(
            mod, fakes, key_options, compile_fn,
            lambda recipe, graphs: rebuild_deduplicated(recipe, graphs, flat_fn, fakes),
            loader)
    else:
        run, spec = compile_fn()
    forward = _forward(run, spec, params)
    forward.zero_grad = mod.zero_grad  # type: ignore[attr-defined]
    forward.named_parameters = mod.named_parameters  # type: ignore[attr-defined]
    forward.named_buffers = mod.named_buffers  # type: ignore[attr-defined]
    entry = getattr(run, "_kiln_aot_entry", None)
    forward._kiln_not_loadable = (  # type: ignore[attr-defined]
        "the AOT autograd cache did not store it" if entry is None else
        "the graph holds parameters" if params else
        "one tensor is passed as two graph inputs" if _Deduplicated(fakes).any else None)
    if forward._kiln_not_loadable is None:  # type: ignore[attr-defined]
        # rebuildable from the entry alone (load_forward): a persisted frame refers to it,
        # and guards calls whose inputs share memory with a mutated one (the runtime would
        # run the traced function for them, which load_forward does not have)
        forward._kiln_aot_entry = entry[:2]  # type: ignore[attr-defined]
        forward._kiln_aot_mutated = tuple(entry[2].meta.mutated_inputs)  # type: ignore[attr-defined]
    return forward


def load_forward(key: str, name: str, loader: Any) -> Callable[..., Any] | None:
    """What :func:`aot_module_simplified` returned for a graph whose AOT autograd entry is
    ``name`` of ``key`` (one without parameters or duplicated inputs), loaded without
    tracing; None when the entry or one of its graphs is gone. Its caller must not pass
    inputs that share memory with a mutated one (:func:`shares_memory_with_mutated`): a
    persisted frame guards that."""
    found = AotAutogradCache.load_by_name(key, name, loader)
    if found is None:
        return None
    run, spec, recipe = found
    run = unless_aliased(run, recipe.meta, _not_traced)
    forward = _forward(run, spec, [])
    forward._kiln_aot_entry = (key, name)  # type: ignore[attr-defined]
    forward._kiln_aot_mutated = tuple(recipe.meta.mutated_inputs)  # type: ignore[attr-defined]
    return forward


def _not_traced(*args: Any) -> list[Any]:
    raise InternalKilnError("a forward loaded from the AOT autograd cache was called with "
                            "inputs sharing memory with a mutated input; its frame's guard "
                            "should have sent the call to a compile")


def _forward(run: Callable[..., list[Any]], spec: Any,
             params: list[torch.Tensor]) -> Callable[..., Any]:
    unflatten = _unflattener(spec)

    # the parameters as they are now, as torch's: a module whose parameters are replaced
    # later is compiled again by capture's guards
    def forward(*runtime_args: Any) -> Any:
        return unflatten(run(*params, *runtime_args))

    return forward


RECURRENT_OPS = {torch.lstm, torch.gru, torch.rnn_tanh, torch.rnn_relu}


def _refuse_symbolic_recurrent_layers(mod: nn.Module, args: Sequence[Any]) -> None:
    """A recurrent layer traced to aten unrolls its sequence: with a symbolic length the
    trace would specialize it (one graph per length). The captured graph keeps one
    kernel call for every length, so the backend runs that instead."""
    if not isinstance(mod, torch.fx.GraphModule) or not any(
            n.op == "call_function" and n.target in RECURRENT_OPS for n in mod.graph.nodes):
        return
    if any(isinstance(a, torch.SymInt) or (isinstance(a, torch.Tensor) and any(
            isinstance(s, torch.SymInt) for s in a.shape)) for a in args):
        raise AotUnsupported("a recurrent layer (LSTM/GRU/RNN) with symbolic sizes: AOT "
                             "would unroll it for one sequence length")


def _unflattener(spec: pytree.TreeSpec) -> Callable[[list[Any]], Any]:
    """``tree_unflatten`` for ``spec``, without its cost for a flat tuple or list (what
    captured graphs return)."""
    if spec.type in (tuple, list) and all(child.is_leaf() for child in spec.children()):
        return tuple if spec.type is tuple else list
    return functools.partial(_unflatten, spec=spec)


def _unflatten(flat: list[Any], spec: pytree.TreeSpec) -> Any:
    return pytree.tree_unflatten(flat, spec)


def aot_export_joint_simple(func: Callable[..., Any], args: Sequence[Any], *,
                            trace_joint: bool, num_params_buffers: int = 0,
                            decompositions: dict[Any, Any] | None = None
                            ) -> torch.fx.GraphModule:
    """One aten graph of ``func``: its functional forward (``trace_joint=False``) or its
    joint forward-backward graph. For functions without input mutations or aliased outputs
    (it raises otherwise), returning a flat list."""
    flat_args, in_spec = pytree.tree_flatten(list(args))

    def flat_fn(*flat: Any) -> list[Any]:
        return pytree.tree_flatten(func(*pytree.tree_unflatten(list(flat), in_spec)))[0]

    fakes, mode = _fake_args(flat_args)
    # a forward-only export is an inference graph: nothing in it is differentiated
    with torch.set_grad_enabled(torch.is_grad_enabled() and trace_joint):
        meta = collect_metadata(flat_fn, fakes, mode)
    if meta.mutated_inputs or meta.metadata_mutations:
        raise AotUnsupported("aot_export_joint_simple does not support input mutations")
    if any(out.regenerated for out in meta.outputs):
        raise AotUnsupported("aot_export_joint_simple does not support outputs that alias "
                             "inputs or other outputs")
    if not trace_joint:
        with torch.no_grad():
            return trace(inference_function(flat_fn, meta), [fakes], mode, decompositions)
    with mode:
        tangents = [tangent_like(meta.examples[p]) for p in differentiable_outputs(meta)]
    return trace(joint_function(flat_fn, meta), [fakes, tangents], mode, decompositions,
                 num_fwd_outputs=len(meta.outputs))


def aot_export_function(func: Callable[..., Any], args: Sequence[Any], *,
                        num_params_buffers: int = 0,
                        decompositions: dict[Any, Any] | None = None,
                        trace_joint: bool = True, no_tangents: bool = False
                        ) -> tuple[torch.fx.GraphModule, AotMetadata, Any, Any]:
    """``(graph, metadata, in_spec, out_spec)`` of ``func``: the joint graph (with
    ``trace_joint``) or the functional forward."""
    flat_args, in_spec = pytree.tree_flatten(list(args))
    out_spec: list[Any] = []

    def flat_fn(*flat: Any) -> list[Any]:
        outs, spec = pytree.tree_flatten(func(*pytree.tree_unflatten(list(flat), in_spec)))
        out_spec[:] = [spec]
        return outs

    fakes, mode = _fake_args(flat_args)
    meta = collect_metadata(flat_fn, fakes, mode)
    if not trace_joint:
        gm = trace(inference_function(flat_fn, meta), [fakes], mode, decompositions)
    else:
        with mode:
            tangents = [] if no_tangents else [
                tangent_like(meta.examples[p]) for p in differentiable_outputs(meta)]
        gm = trace(joint_function(flat_fn, meta, no_tangents), [fakes, tangents], mode,
                   decompositions,
                   num_fwd_outputs=meta.num_forward_outputs)
    return gm, meta, in_spec, out_spec[0] if out_spec else None


def create_functional_call(mod: nn.Module, params_spec: Any, params_len: int
                           ) -> Callable[..., Any]:
    """``f(*params_and_buffers, *args)`` calling ``mod`` with the given parameters. A
    GraphModule runs node by node (each op traced inherits its node's metadata)."""
    target: nn.Module = _Interpreted(mod) if isinstance(mod, torch.fx.GraphModule) else mod
    prefix = "inner." if target is not mod else ""

    def functional_call(*args: Any) -> Any:
        params = pytree.tree_unflatten(list(args[:params_len]), params_spec)
        if prefix:
            params = {prefix + k: v for k, v in params.items()}
        with fx_traceback.preserve_node_meta():
            return torch.func.functional_call(target, params, args[params_len:])

    return functional_call


class _Interpreted(nn.Module):
    """A GraphModule called through ``torch.fx.Interpreter``."""

    def __init__(self, inner: torch.fx.GraphModule) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, *args: Any) -> Any:
        return torch.fx.Interpreter(self.inner).run(*args)


__all__ = ["AotUnsupported", "aot_function", "aot_module", "aot_module_simplified",
           "aot_export_joint_simple", "aot_export_function", "create_functional_call",
           "compile_flat", "nop", "boxed_nop", "make_boxed_func", "make_boxed_compiler",
           "call_compiled"]
