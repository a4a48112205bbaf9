"""A partitioner that saves less for the backward by recomputing cheap values: a min cut.

``default_partition`` (partition.py) saves every forward value the backward reads. Many of
those are cheap to rebuild from something else the backward has anyway: ``sin(x)`` from ``x``,
a view from its base, a LayerNorm's output from its input. This partitioner chooses the saved
set with the least memory from which the backward can recompute everything else it needs
without recomputing anything expensive or random.

The model (a flow network; each joint-graph node ``n`` becomes two vertices ``n.in`` and
``n.out`` joined by an edge whose capacity is the cost of saving ``n``):

- ``n.out -> u.in`` with infinite capacity for every user ``u`` of ``n``;
- ``source -> n.in`` (infinite) for what must be computed in the forward and never in the
  backward: primals (inputs; they exist before the forward runs), random ops (recomputing
  would draw new numbers), ops with side effects, and expensive ops the forward needs
  (matmuls, convolutions, attention, anything not known to be cheap);
- ``n.in -> sink`` (infinite) for every node that depends on a tangent (it can only run in
  the backward), and ``n.out -> sink`` for a gradient that does not.

A finite cut separates everything the forward provides from everything the backward computes:
every path from an input or a banned node into the backward crosses some ``n.in -> n.out``
edge, and those nodes are the saved values. The minimum cut (max flow, Dinic's algorithm
below) is the cheapest such saved set. Costs, in bytes (sizes from ``node.meta["val"]``, a
symbolic size by its hint):

- a tensor: ``numel * element_size``;
- a primal, or a view of one: 0, since it is alive anyway (the caller holds it) -- except an
  input the program mutates: the runtime copies the new value into it after the forward,
  which would invalidate it as a saved value, so it is saved only when nothing else will do;
- a SymInt/SymFloat: 1; a tuple or other non-tensor value: infinite (cannot be saved).

Forward outputs cost their full size: the caller may drop them, and saving keeps them alive.
A dropout's output is, for the backward, ``input * mask * scale``: only the mask is random,
so the backward may rebuild the output from the mask (see ``recompute_dropout_outputs``).
Among cuts of equal cost the one closest to the backward wins (the least recomputation).
In the backward graph each recomputed value is computed just before its first use.
Unclaimed expensive nodes (needed only by the backward, computable from primals) may run in
either graph; if a cut would have the forward compute one that the backward then computes
again, it is banned and the cut solved again. The result is deterministic: the network is
built in graph order and the algorithm makes no arbitrary choices.
"""

from __future__ import annotations

import logging
import operator
from collections import deque
from collections.abc import Sequence
from typing import Any

import torch
import torch.fx

from kiln.aot.partition import (
    ancestors,
    default_partition,
    is_primal,
    is_symbolic,
    is_tangent,
    joint_outputs,
    split,
)

log = logging.getLogger("kiln.aot")

INF = 1 << 62          # an edge that is never cut
AVOID = 1 << 40        # saving this is allowed, but only when no other choice exists
SYMBOL_COST = 1        # saving a SymInt/SymFloat
SIZE_GUESS = 4096      # a symbolic size without a hint

aten = torch.ops.aten

# cheap ops besides pointwise ops and views: copies, factories, O(n) reductions (memory-bound,
# like a few pointwise ops). Not normalizations (softmax, layer norm): until a code
# generator fuses them into their consumers, recomputing one is a whole extra kernel, and
# torch's list leaves them out too.
CHEAP_OPS = {
    aten.clone, aten._unsafe_view, aten.reshape, aten._to_copy, aten.copy,
    aten.lift_fresh_copy, aten.cat, aten.full, aten.zeros, aten.ones, aten.full_like,
    aten.zeros_like, aten.ones_like, aten.new_zeros, aten.new_ones, aten.new_full,
    aten.scalar_tensor, aten.arange, aten.tril, aten.triu, aten.sum, aten.mean, aten.amax,
    aten.amin, aten.sym_size, aten.sym_stride, aten.sym_numel, aten.sym_storage_offset,
}
# expensive ops named for the reader; everything not cheap is treated as expensive
EXPENSIVE_OPS = {
    aten.mm, aten.bmm, aten.addmm, aten.baddbmm, aten.convolution, aten.convolution_backward,
    aten._scaled_dot_product_flash_attention, aten._scaled_dot_product_efficient_attention,
    aten._scaled_dot_product_cudnn_attention, aten._scaled_dot_product_flash_attention_for_cpu,
}


# --- classifying ops -------------------------------------------------------------------------

def is_random(node: torch.fx.Node) -> bool:
    target = node.target
    return isinstance(target, torch._ops.OpOverload) and \
        torch.Tag.nondeterministic_seeded in target.tags


def is_cheap(node: torch.fx.Node) -> bool:
    """Whether ``node`` may be recomputed in the backward: pure, deterministic and cheap."""
    if node.op in ("placeholder", "get_attr"):
        return True
    if node.op != "call_function":
        return False
    target = node.target
    if target is operator.getitem:
        return True
    if isinstance(target, torch._ops.OpOverload):
        if is_random(node) or target._schema.is_mutable or not target._schema.returns:
            return False
        if target.overloadpacket in EXPENSIVE_OPS:
            return False
        return (torch.Tag.pointwise in target.tags or target.is_view
                or target.overloadpacket in CHEAP_OPS)
    # Python arithmetic on sizes (operator.mul, torch.sym_max, ...)
    return is_symbolic(node)


def _has_side_effects(node: torch.fx.Node) -> bool:
    target = node.target
    if isinstance(target, torch._ops.OpOverload):
        return target._schema.is_mutable or not target._schema.returns
    return node.op == "call_function" and not is_cheap(node)


def _is_view(node: torch.fx.Node) -> bool:
    return isinstance(node.target, torch._ops.OpOverload) and node.target.is_view


def _view_base(node: torch.fx.Node, mutated: set[torch.fx.Node]) -> torch.fx.Node:
    """The value ``node`` is a chain of views of (``node`` if none; a mutated primal is not
    a base to save, its value changes after the forward)."""
    base = node
    while _is_view(base) and isinstance(base.args[0], torch.fx.Node) \
            and base.args[0] not in mutated:
        base = base.args[0]
    return base


def tensor_bytes(value: torch.Tensor) -> int:
    numel = 1
    for size in value.shape:  # a symbolic size by its hint
        hint = size.node.hint if isinstance(size, torch.SymInt) else size
        numel *= int(hint) if hint is not None else SIZE_GUESS
    return numel * value.element_size()


def mutated_primals(joint: torch.fx.GraphModule, joint_inputs: Any) -> set[torch.fx.Node]:
    """Primals of inputs the program updates in place: ``joint.meta["mutated_inputs"]`` (set
    by kiln's trace), else those whose example inputs' version counter moved while
    tracing."""
    primals = [n for n in joint.graph.nodes if is_primal(n)]
    if "mutated_inputs" in joint.meta:
        return {primals[i] for i in joint.meta["mutated_inputs"] if i < len(primals)}
    if not joint_inputs or not isinstance(joint_inputs[0], Sequence):
        return set()
    return {node for node, example in zip(primals, joint_inputs[0])
            if isinstance(example, torch.Tensor) and example._version > 0}


def save_cost(node: torch.fx.Node, mutated: set[torch.fx.Node],
              free: frozenset[torch.fx.Node] = frozenset()) -> int:
    """What keeping ``node``'s value for the backward costs, in bytes (``free``: nodes
    whose values cost nothing, as primals)."""
    base = node
    while _is_view(base) and isinstance(base.args[0], torch.fx.Node):
        base = base.args[0]
    if is_primal(base) or base.op == "get_attr":
        return AVOID if base in mutated else 0
    if base in free:
        return 0
    value = node.meta.get("val")
    if isinstance(value, torch.Tensor):
        return tensor_bytes(value)
    if is_symbolic(node):
        return SYMBOL_COST
    return INF


# --- max flow --------------------------------------------------------------------------------

class FlowNetwork:
    """A directed graph with integer capacities; ``max_flow`` by Dinic's algorithm (BFS
    levels, then augmenting paths along them, found without recursion)."""

    def __init__(self, num_vertices: int) -> None:
        self.edges: list[list[int]] = [[] for _ in range(num_vertices)]  # edge ids per vertex
        self.head: list[int] = []      # edge id -> vertex it points to
        self.capacity: list[int] = []  # edge id -> residual capacity; edge ^ 1 is its reverse

    def add_edge(self, u: int, v: int, capacity: int) -> None:
        for a, b, c in ((u, v, capacity), (v, u, 0)):
            self.edges[a].append(len(self.head))
            self.head.append(b)
            self.capacity.append(c)

    def _levels(self, source: int, sink: int) -> list[int] | None:
        level = [-1] * len(self.edges)
        level[source] = 0
        queue = deque([source])
        while queue:
            u = queue.popleft()
            for e in self.edges[u]:
                v = self.head[e]
                if self.capacity[e] > 0 and level[v] < 0:
                    level[v] = level[u] + 1
                    queue.append(v)
        return level if level[sink] >= 0 else None

    def _augment(self, source: int, sink: int, level: list[int], next_edge: list[int]) -> int:
        """Push flow along one shortest augmenting path; 0 when none is left."""
        path: list[int] = []
        u = source
        while u != sink:
            edges = self.edges[u]
            while next_edge[u] < len(edges):
                e = edges[next_edge[u]]
                if self.capacity[e] > 0 and level[self.head[e]] == level[u] + 1:
                    break
                next_edge[u] += 1
            if next_edge[u] < len(edges):
                path.append(edges[next_edge[u]])
                u = self.head[path[-1]]
            elif not path:
                return 0
            else:  # a dead end: never come back here this phase
                level[u] = -1
                u = self.head[path.pop() ^ 1]
                next_edge[u] += 1
        pushed = min(self.capacity[e] for e in path)
        for e in path:
            self.capacity[e] -= pushed
            self.capacity[e ^ 1] += pushed
        return pushed

    def max_flow(self, source: int, sink: int) -> int:
        total = 0
        while (level := self._levels(source, sink)) is not None:
            next_edge = [0] * len(self.edges)
            while pushed := self._augment(source, sink, level, next_edge):
                total += pushed
        return total

    def reaching(self, sink: int) -> set[int]:
        """Vertices with a residual path to ``sink`` (after ``max_flow``): the sink's side of
        the minimum cut closest to the sink."""
        seen = {sink}
        queue = deque([sink])
        while queue:
            v = queue.popleft()
            for e in self.edges[v]:
                u = self.head[e]  # e is v -> u; its reverse e ^ 1 is u -> v
                if self.capacity[e ^ 1] > 0 and u not in seen:
                    seen.add(u)
                    queue.append(u)
        return seen


# --- the partition ---------------------------------------------------------------------------

def tangent_closure(joint: torch.fx.GraphModule) -> set[torch.fx.Node]:
    """Nodes that depend on a tangent: they can only run in the backward."""
    closure: set[torch.fx.Node] = set()
    for node in joint.graph.nodes:
        if is_tangent(node) or any(i in closure for i in node.all_input_nodes):
            closure.add(node)
    return closure


def choose_saved(joint: torch.fx.GraphModule, num_fwd_outputs: int, banned: set[torch.fx.Node],
                 mutated: set[torch.fx.Node], free: frozenset[torch.fx.Node] = frozenset()
                 ) -> set[torch.fx.Node] | None:
    """The cheapest saved set given the nodes that must run in the forward (``banned``), or
    None when every cut is infinite; ``free`` as in ``save_cost``."""
    nodes = [n for n in joint.graph.nodes if n.op != "output"]
    index = {n: k for k, n in enumerate(nodes)}
    source, sink = 0, 1

    def vin(n: torch.fx.Node) -> int:  # the vertices n.in and n.out
        return 2 + 2 * index[n]

    def vout(n: torch.fx.Node) -> int:
        return 3 + 2 * index[n]

    _, grads = joint_outputs(joint, num_fwd_outputs)
    backward_only = tangent_closure(joint)
    network = FlowNetwork(2 + 2 * len(nodes))
    for node in nodes:
        if node in backward_only:
            network.add_edge(vin(node), sink, INF)
            continue
        if node in banned:
            network.add_edge(source, vin(node), INF)
        network.add_edge(vin(node), vout(node), save_cost(node, mutated, free))
        for user in node.users:
            if user.op != "output":
                network.add_edge(vout(node), vin(user), INF)
    for grad in grads:
        if isinstance(grad, torch.fx.Node) and grad not in backward_only:
            network.add_edge(vout(grad), sink, INF)
    if network.max_flow(source, sink) >= INF:
        return None
    sink_side = network.reaching(sink)
    return {n for n in nodes if n not in backward_only
            and vin(n) not in sink_side and vout(n) in sink_side}


def recompute_dropout_outputs(joint: torch.fx.GraphModule) -> dict[str, torch.fx.Node]:
    """Compute each dropout's output as ``native_dropout_backward(input, mask, scale)``
    (``input * mask * scale``, pointwise) from the random op's mask, so that the backward can
    rebuild it from the input and the (smaller) mask instead of having it saved. Only for
    float32/float64, where this equals native_dropout's output bit for bit. Rewrites
    ``joint`` in place; returns {name of the rebuilt output: the dropout node}, for
    :func:`_restore_dropout_outputs`."""
    rebuilt = {}
    for node in list(joint.graph.nodes):
        if node.target is not aten.native_dropout.default or node.args[2] is not True:
            continue
        parts = {u.args[1]: u for u in node.users if u.target is operator.getitem}
        output, mask = parts.get(0), parts.get(1)
        if output is None or mask is None or \
                output.meta["val"].dtype not in (torch.float32, torch.float64):
            continue
        p = node.args[1]
        with joint.graph.inserting_after(mask):
            again = joint.graph.call_function(aten.native_dropout_backward.default,
                                              (node.args[0], mask, 1.0 / (1.0 - p) if p < 1
                                               else 0.0))
        again.meta = dict(output.meta)
        output.replace_all_uses_with(again)
        joint.graph.erase_node(output)
        rebuilt[again.name] = node
    return rebuilt


def _restore_dropout_outputs(forward: torch.fx.GraphModule,
                             rebuilt: dict[str, torch.fx.Node]) -> torch.fx.GraphModule:
    """In the forward graph, take each rebuilt dropout output from the dropout itself."""
    by_name = {n.name: n for n in forward.graph.nodes}
    for name, dropout in rebuilt.items():
        if name not in by_name:
            continue
        with forward.graph.inserting_after(by_name[dropout.name]):
            output = forward.graph.call_function(operator.getitem, (by_name[dropout.name], 0))
        output.meta = dict(by_name[name].meta)
        by_name[name].replace_all_uses_with(output)
        forward.graph.erase_node(by_name[name])
    forward.graph.eliminate_dead_code()
    forward.graph.lint()
    forward.recompile()
    return forward


def _copy(joint: torch.fx.GraphModule) -> torch.fx.GraphModule:
    graph = torch.fx.Graph()
    graph.output(graph.graph_copy(joint.graph, {}))
    copied = torch.fx.GraphModule(joint, graph)
    copied.meta = dict(joint.meta)
    return copied


def compute_just_in_time(backward: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """Move each node that does not depend on a tangent (a recomputed forward value) to just
    before its first user. The backward graph keeps the joint graph's order, where forward
    values come first: recomputed at the start, they would stay alive through the whole
    backward."""
    closure = tangent_closure(backward)
    for node in reversed(list(backward.graph.nodes)):
        if node.op != "call_function" or node in closure or not node.users:
            continue
        first_user = node.next
        while first_user not in node.users:
            first_user = first_user.next
        if first_user is not node.next:
            first_user.prepend(node)
    backward.graph.lint()
    backward.recompile()
    return backward


REDUCTIONS = {aten.sum, aten.mean, aten.amax, aten.amin, aten.prod, aten.argmax, aten.argmin,
              aten.max, aten.min}


def _is_reduction(node: torch.fx.Node) -> bool:
    return getattr(node.target, "overloadpacket", None) in REDUCTIONS and \
        node.target not in (aten.max.other, aten.min.other)


def min_cut_rematerialization_partition(joint_module: torch.fx.GraphModule,
                                        _joint_inputs: Any = None, *, num_fwd_outputs: int,
                                        recompute_reductions: bool = True,
                                        outputs_are_free: bool = False,
                                        save_view_bases: bool = False, **_: Any
                                        ) -> tuple[torch.fx.GraphModule, torch.fx.GraphModule]:
    """Split ``joint_module`` saving the least memory (see the module docstring); the same
    contract as :func:`kiln.aot.partition.default_partition`. With
    ``recompute_reductions=False`` (what the ``"kiln"`` backend asks, as torch's
    ``ban_recompute_reductions`` does for inductor) the backward never recomputes a reduction
    of the forward. With ``outputs_are_free`` (kiln's too) saving a forward output costs
    nothing, as saving a primal: the forward writes it anyway, and the caller usually holds
    it until the backward (a loss, an activation between graphs). On decomposed graphs, a
    softmax's backward then reads the saved output instead of computing the exponentials
    again from the input and the saved max and sum. With ``save_view_bases`` (kiln's) a
    saved view is replaced by its base and the backward takes the view again: a forward
    graph then returns no view of its inputs or of its other outputs, which a code generator
    would have to give their own tensor objects."""
    joint = joint_module
    if any(n.target is aten.native_dropout.default for n in joint.graph.nodes):
        joint = _copy(joint_module)
    rebuilt = recompute_dropout_outputs(joint)
    fwd_outputs, grads = joint_outputs(joint, num_fwd_outputs)
    tangents = {n for n in joint.graph.nodes if is_tangent(n)}
    backward_only = tangent_closure(joint)
    needed_by_forward = ancestors(fwd_outputs)
    mutated = mutated_primals(joint, _joint_inputs)
    free = frozenset(n for n in fwd_outputs
                     if isinstance(n, torch.fx.Node)) if outputs_are_free else frozenset()

    def recomputable(n: torch.fx.Node) -> bool:
        if recompute_reductions:
            return is_cheap(n)
        # nor what a max/min reduces: its backward compares the value with the saved
        # result, which a recomputation rounded differently (a vector exp in one graph, a
        # scalar one in the other) would never equal, making the gradient 0/0
        return is_cheap(n) and not _is_reduction(n) and not any(
            _is_reduction(u) and u.target.overloadpacket not in (aten.sum, aten.mean,
                                                                 aten.prod)
            for u in n.users)

    banned = {n for n in joint.graph.nodes if n.op != "output"
              and n not in backward_only
              and (is_primal(n) or is_random(n) or _has_side_effects(n)
                   or (n in needed_by_forward and not recomputable(n)))}
    while True:
        saved = choose_saved(joint, num_fwd_outputs, banned, mutated, free)
        if saved is None:
            log.warning("kiln.aot: no finite min cut; using the default partition")
            return default_partition(joint_module, _joint_inputs,
                                     num_fwd_outputs=num_fwd_outputs)
        backward = ancestors(grads, stop=saved | tangents)
        saved &= backward  # (a zero-cost edge may be cut without being needed)
        forward = ancestors([*fwd_outputs, *saved])
        computed_twice = {n for n in (backward - saved) & forward if not recomputable(n)}
        if not computed_twice:
            break
        banned |= computed_twice
    if save_view_bases:
        saved = {_view_base(n, mutated) for n in saved}
    forward_graph, backward_graph = split(joint, num_fwd_outputs, saved)
    return (_restore_dropout_outputs(forward_graph, rebuilt),
            compute_just_in_time(backward_graph))


__all__ = ["min_cut_rematerialization_partition", "FlowNetwork", "save_cost", "is_cheap",
           "is_random", "tangent_closure", "choose_saved", "compute_just_in_time",
           "recompute_dropout_outputs"]
