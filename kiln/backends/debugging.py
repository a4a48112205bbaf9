"""Backends that run the captured graph as it is: for tests, debugging and per-call cost."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

import torch.fx

from kiln.backends.registry import register_backend
from kiln.counters import counters

log = logging.getLogger("kiln.backends")


@register_backend
def eager(gm: torch.fx.GraphModule, example_inputs: list[Any], **kwargs: Any) -> Callable[..., Any]:
    """Run the captured torch-level graph with PyTorch's eager kernels."""
    return gm.forward


@register_backend(name="kiln")
def kiln_backend(gm: torch.fx.GraphModule, example_inputs: list[Any],
                 **kwargs: Any) -> Callable[..., Any]:
    """kiln's default backend: AOT autograd (forward and backward aten graphs, decomposed to
    kiln's core set, split by the min-cut partitioner), each graph compiled to fused C++
    kernels and a Python wrapper (kiln/codegen)."""
    from kiln.aot.partition_mincut import min_cut_rematerialization_partition
    from kiln.codegen.compile_graph import compile_graph
    from kiln.codegen.decompositions import decomposition_table

    partition = functools.partial(min_cut_rematerialization_partition,
                                  recompute_reductions=False, outputs_are_free=True,
                                  save_view_bases=True)
    return _aot(gm, example_inputs, partition, compiler=compile_graph,
                decompositions=decomposition_table(), **kwargs)


def _aot(gm: torch.fx.GraphModule, example_inputs: list[Any], partition_fn: Any,
         compiler: Any = None, decompositions: Any = None, **kwargs: Any) -> Callable[..., Any]:
    """AOT autograd with each graph compiled by ``compiler`` (default: run as a plain Python
    function calling each op, kiln/aot/python_runner.py). Where AOT cannot handle the graph
    (kiln.aot.AotUnsupported) the captured graph runs instead, with a warning.
    ``kiln.counters["aot_autograd"]`` counts ``total``, ``ok`` and ``not_ok`` as torch's."""
    from kiln.aot import AotUnsupported, aot_module_simplified
    from kiln.aot.python_runner import boxed_python

    counters["aot_autograd"]["total"] += 1
    try:
        compiled = aot_module_simplified(gm, example_inputs,
                                         fw_compiler=compiler or boxed_python,
                                         partition_fn=partition_fn,
                                         decompositions=decompositions,
                                         keep_inference_input_mutations=True)
    except AotUnsupported as e:
        counters["aot_autograd"]["not_ok"] += 1
        log.warning("kiln: this graph runs without AOT autograd: %s", e)
        return gm.forward
    counters["aot_autograd"]["ok"] += 1
    return compiled


@register_backend
def aot_eager(gm: torch.fx.GraphModule, example_inputs: list[Any],
              **kwargs: Any) -> Callable[..., Any]:
    """AOT autograd with graphs that run as they are: the captured graph traced to aten,
    functionalized, split into forward and backward graphs by the min-cut partitioner (as
    torch's ``aot_eager``: the backward recomputes cheap values rather than keep them)."""
    from kiln.aot.partition_mincut import min_cut_rematerialization_partition

    return _aot(gm, example_inputs, min_cut_rematerialization_partition, **kwargs)


@register_backend
def aot_eager_default_partitioner(gm: torch.fx.GraphModule, example_inputs: list[Any],
                                  **kwargs: Any) -> Callable[..., Any]:
    """``aot_eager`` with the default partitioner: the backward gets every forward value it
    reads, saved."""
    from kiln.aot.partition import default_partition

    return _aot(gm, example_inputs, default_partition, **kwargs)
