"""kiln.aot's min-cut rematerialization partitioner (kiln/aot/partition_mincut.py): gradients
equal eager's, the saved set is smaller than default_partition's where cheap ops can be
recomputed, and expensive or random ops are never recomputed."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

import kiln
from benchmarks import models
from kiln.aot import aot_function, aot_module_simplified, boxed_nop, default_partition, nop
from kiln.aot.partition_mincut import FlowNetwork, is_cheap, min_cut_rematerialization_partition

# --- helpers ---------------------------------------------------------------------------------


class Recorder:
    """A partition_fn that runs ``partition`` and keeps the graphs it made."""

    def __init__(self, partition=min_cut_rematerialization_partition):
        self.partition = partition
        self.graphs: list[tuple[torch.fx.GraphModule, torch.fx.GraphModule, int]] = []

    def __call__(self, joint, inputs, *, num_fwd_outputs, **kw):
        fw, bw = self.partition(joint, inputs, num_fwd_outputs=num_fwd_outputs, **kw)
        self.graphs.append((fw, bw, num_fwd_outputs))
        return fw, bw

    @property
    def saved(self) -> list[torch.fx.Node]:
        fw, _, num_fwd = self.graphs[-1]
        output = next(n for n in fw.graph.nodes if n.op == "output")
        return list(output.args[0])[num_fwd:]

    @property
    def saved_names(self) -> list[str]:
        return [n.name for n in self.saved]

    @property
    def saved_bytes(self) -> int:
        """Bytes of the saved tensors that are not inputs or views of inputs."""
        total = 0
        for node in self.saved:
            base = node
            while isinstance(base.target, torch._ops.OpOverload) and base.target.is_view:
                base = base.args[0]
            value = node.meta["val"]
            if base.op != "placeholder" and isinstance(value, torch.Tensor):
                total += value.numel() * value.element_size()
        return total

    @property
    def backward_targets(self) -> list[object]:
        _, bw, _ = self.graphs[-1]
        return [n.target for n in bw.graph.nodes if n.op == "call_function"]


def leaves(*tensors):
    return [t.detach().clone().requires_grad_(t.requires_grad) for t in tensors]


def run_and_grad(fn, args, seed=None):
    """Outputs of ``fn(*args)`` and the gradients of their sum (weighted per output)."""
    if seed is not None:
        torch.manual_seed(seed)
    outs = fn(*args)
    outs = outs if isinstance(outs, (tuple, list)) else (outs,)
    loss = sum((o * (k + 1.5)).sum() for k, o in enumerate(outs)
               if isinstance(o, torch.Tensor) and o.requires_grad)
    loss.backward()
    return [o.detach() for o in outs], [a.grad for a in args if isinstance(a, torch.Tensor)]


def check_against_eager(fn, *args, dynamic=False):
    recorder = Recorder()
    compiled = aot_function(fn, nop, partition_fn=recorder, dynamic=dynamic)
    eager_args, kiln_args = leaves(*args), leaves(*args)
    expected = run_and_grad(fn, eager_args)
    actual = run_and_grad(compiled, kiln_args)
    torch.testing.assert_close(actual, expected)
    return recorder


def randn(*shape, grad=True):
    return torch.randn(*shape, requires_grad=grad)


# --- gradients equal eager -------------------------------------------------------------------

def pointwise_chain(x):
    return x.sin().cos().exp()


def matmul_gelu(x, w, b):
    return F.gelu(x @ w + b, approximate="tanh")


def layernorm(x, w, b):
    return F.layer_norm(x, (x.shape[-1],), w, b)


def softmax_attention(q, k, v):
    att = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
    mask = torch.ones(q.shape[-2], q.shape[-2], dtype=torch.bool).tril()
    att = att.masked_fill(~mask, float("-inf")).softmax(-1)
    return att @ v


def views(x, y):
    a = x.view(4, 6).t().reshape(3, 8) * y
    return a.unsqueeze(0).expand(2, 3, 8).sum(0).relu()


def multiple_outputs(x, y):
    h = (x * y).tanh()
    return h.sigmoid(), (h * 2).sum(), x.detach() + 1


def reductions(x):
    centered = x - x.mean(-1, keepdim=True)
    return centered / (centered.pow(2).mean(-1, keepdim=True) + 1e-5).sqrt()


def mixed_grad_inputs(x, w, idx):
    return (x[idx] @ w).relu().log_softmax(-1)


CASES = {
    "pointwise_chain": (pointwise_chain, lambda: (randn(4, 5),)),
    "matmul_gelu": (matmul_gelu, lambda: (randn(3, 8), randn(8, 16), randn(16))),
    "layernorm": (layernorm, lambda: (randn(2, 3, 8), randn(8), randn(8))),
    "softmax_attention": (softmax_attention, lambda: (randn(2, 5, 4), randn(2, 5, 4),
                                                      randn(2, 5, 4))),
    "views": (views, lambda: (randn(24), randn(3, 8))),
    "multiple_outputs": (multiple_outputs, lambda: (randn(6), randn(6))),
    "reductions": (reductions, lambda: (randn(3, 7),)),
    "mixed_grad_inputs": (mixed_grad_inputs, lambda: (randn(5, 4), randn(4, 3),
                                                      torch.tensor([0, 3, 3]))),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_gradients_match_eager(name):
    fn, make_args = CASES[name]
    torch.manual_seed(0)
    check_against_eager(fn, *make_args())


def test_dynamic_shapes_with_symints():
    def fn(x, w):
        n = x.shape[0]
        return (x @ w).sin().view(n, -1).cos() * n

    torch.manual_seed(0)
    recorder = check_against_eager(fn, randn(5, 4), randn(4, 6), dynamic=True)
    _, bw, _ = recorder.graphs[-1]
    placeholders = [n for n in bw.graph.nodes if n.op == "placeholder"]
    assert any(isinstance(n.meta.get("val"), torch.SymInt) for n in placeholders) or any(
        isinstance(d, torch.SymInt) for n in placeholders
        if isinstance(n.meta.get("val"), torch.Tensor) for d in n.meta["val"].shape)


def test_mutated_input_is_not_saved_in_place_of_its_old_value():
    """``buf + 1`` is cheap to recompute from ``buf``, but the runtime overwrites ``buf``
    after the forward: the backward must not read the new value."""
    def fn(x, buf):
        y = x * (buf + 1).sin()
        buf.add_(1)
        return y

    torch.manual_seed(0)
    x, buf = randn(5), torch.randn(5)
    eager_buf, kiln_buf = buf.clone(), buf.clone()
    recorder = Recorder()
    compiled = aot_function(fn, nop, partition_fn=recorder)
    expected = run_and_grad(fn, [*leaves(x), eager_buf])
    actual = run_and_grad(compiled, [*leaves(x), kiln_buf])
    torch.testing.assert_close(actual, expected)
    torch.testing.assert_close(kiln_buf, eager_buf)
    assert "primals_2" not in recorder.saved_names


def test_mutated_input_under_no_grad_updated_like_eager():
    def fn(x, running):
        with torch.no_grad():
            running.mul_(0.9).add_(x.detach().mean() * 0.1)
        return (x - running).relu().sum()

    torch.manual_seed(0)
    x, running = randn(6), torch.randn(6)
    eager_running, kiln_running = running.clone(), running.clone()
    compiled = aot_function(fn, nop, partition_fn=min_cut_rematerialization_partition)
    expected = run_and_grad(fn, [*leaves(x), eager_running])
    actual = run_and_grad(compiled, [*leaves(x), kiln_running])
    torch.testing.assert_close(actual, expected)
    torch.testing.assert_close(kiln_running, eager_running)


def test_dropout_matches_default_partition_under_the_same_seed():
    def fn(x, w):
        h = F.dropout(x @ w, p=0.5, training=True)
        return F.dropout(h.sin(), p=0.3, training=True) * h.cos()

    torch.manual_seed(0)
    x, w = randn(8, 16), randn(16, 16)
    results = []
    for partition in (default_partition, min_cut_rematerialization_partition):
        compiled = aot_function(fn, nop, partition_fn=partition)
        results.append(run_and_grad(compiled, leaves(x, w), seed=123))
    torch.testing.assert_close(results[1], results[0])
    # and both match eager under that seed
    torch.testing.assert_close(results[1], run_and_grad(fn, leaves(x, w), seed=123))


# --- what is saved ---------------------------------------------------------------------------

def saved_by(partition, fn, *args):
    recorder = Recorder(partition)
    compiled = aot_function(fn, nop, partition_fn=recorder)
    run_and_grad(compiled, leaves(*args))
    return recorder


def test_pointwise_chain_saves_only_the_primal():
    x = randn(64, 64)
    mincut = saved_by(min_cut_rematerialization_partition, pointwise_chain, x)
    default = saved_by(default_partition, pointwise_chain, x)
    assert mincut.saved_names == ["primals_1"]
    assert mincut.saved_bytes == 0 < default.saved_bytes
    assert len(default.saved_names) > 1


def test_matmul_result_is_saved_not_recomputed():
    def fn(x, w, y):
        return (x @ w) * y  # the gradient of y needs the matmul's result itself

    args = randn(8, 16), randn(16, 4), randn(8, 4)
    mincut = saved_by(min_cut_rematerialization_partition, fn, *args)
    default = saved_by(default_partition, fn, *args)
    assert "mm" in mincut.saved_names
    # the backward runs only the two gradient matmuls, as with the default partition
    mm = torch.ops.aten.mm.default
    assert mincut.backward_targets.count(mm) == default.backward_targets.count(mm) == 2


def test_matmul_feeding_pointwise_ops_is_not_recomputed():
    def fn(x, w):
        return (x @ w).sin().exp()

    mincut = saved_by(min_cut_rematerialization_partition, fn, randn(8, 16), randn(16, 4))
    assert torch.ops.aten.mm.default in mincut.backward_targets
    assert mincut.backward_targets.count(torch.ops.aten.mm.default) == 2
    assert mincut.saved_bytes == 8 * 4 * 4  # one (8, 4) value besides the inputs


def test_dropout_mask_is_saved_never_recomputed():
    def fn(x):
        return F.dropout(x.sin(), p=0.5, training=True).cos()

    recorder = saved_by(min_cut_rematerialization_partition, fn, randn(32, 32))
    _, bw, _ = recorder.graphs[-1]
    random = [n for n in bw.graph.nodes if n.op == "call_function"
              and isinstance(n.target, torch._ops.OpOverload)
              and torch.Tag.nondeterministic_seeded in n.target.tags]
    assert random == []
    mask = [n for n in recorder.saved if n.meta["val"].dtype == torch.bool]
    assert len(mask) == 1


def test_dropout_output_rebuilt_from_mask_in_backward_only():
    """Attention-style: the backward needs the dropped-out probabilities (for the gradient of
    v) and the softmax (for its own gradient); the min cut saves the softmax and the bool mask
    and rebuilds the dropout's output from them instead of saving it too."""
    def fn(s, v):
        return F.dropout(s.softmax(-1), p=0.1, training=True) @ v

    args = randn(4, 32, 32), randn(4, 32, 8)
    mincut = saved_by(min_cut_rematerialization_partition, fn, *args)
    default = saved_by(default_partition, fn, *args)
    floats = [n for n in mincut.saved if n.meta["val"].dtype == torch.float32
              and tuple(n.meta["val"].shape) == (4, 32, 32)]
    assert len(floats) == 1  # the softmax; the dropout's output is rebuilt
    assert mincut.saved_bytes < default.saved_bytes
    fw, bw, _ = mincut.graphs[-1]
    aten = torch.ops.aten
    assert aten.native_dropout_backward.default in mincut.backward_targets
    fw_targets = [n.target for n in fw.graph.nodes]
    assert aten.native_dropout_backward.default not in fw_targets  # no extra forward work
    assert fw_targets.count(aten.native_dropout.default) == 1
    # same values as the default partition under one seed
    results = []
    for partition in (default_partition, min_cut_rematerialization_partition):
        compiled = aot_function(fn, nop, partition_fn=partition)
        results.append(run_and_grad(compiled, leaves(*args), seed=5))
    torch.testing.assert_close(results[1], results[0], rtol=0, atol=0)


def test_layer_norm_is_saved_not_recomputed():
    # a normalization is a whole kernel of its own until codegen fuses it: the backward gets
    # its output saved, as torch's min-cut does (the cheap exp before it is recomputed)
    def fn(x, w, b, w2):
        h = F.layer_norm(x.exp(), (16,), w, b)
        return h @ w2

    args = randn(8, 16), randn(16), randn(16), randn(16, 16)
    mincut = saved_by(min_cut_rematerialization_partition, fn, *args)
    default = saved_by(default_partition, fn, *args)
    assert mincut.saved_bytes <= default.saved_bytes
    assert torch.ops.aten.native_layer_norm.default not in mincut.backward_targets


def test_partition_is_deterministic():
    fn, make_args = CASES["softmax_attention"]
    args = make_args()
    codes = []
    for _ in range(2):
        recorder = saved_by(min_cut_rematerialization_partition, fn, *args)
        fw, bw, _ = recorder.graphs[-1]
        codes.append((fw.code, bw.code))
    assert codes[0] == codes[1]


def test_op_classification():
    aten = torch.ops.aten
    graph = torch.fx.Graph()
    x = graph.placeholder("x")
    cheap = [graph.call_function(op, (x,)) for op in (aten.sin.default, aten.t.default,
                                                     aten.clone.default)]
    expensive = [graph.call_function(aten.mm.default, (x, x)),
                 graph.call_function(aten.native_dropout.default, (x, 0.5, True)),
                 graph.call_function(aten.rand_like.default, (x,)),
                 graph.call_function(aten.bernoulli.default, (x,))]
    assert all(is_cheap(n) for n in cheap)
    assert not any(is_cheap(n) for n in expensive)


def test_max_flow_textbook_network():
    # CLRS figure 26.1: max flow 23; the min cut separates {s, v1, v2, v4} from {v3, t}
    net = FlowNetwork(6)
    for u, v, c in [(0, 1, 16), (0, 2, 13), (1, 3, 12), (2, 1, 4), (2, 4, 14), (3, 2, 9),
                    (3, 5, 20), (4, 3, 7), (4, 5, 4)]:
        net.add_edge(u, v, c)
    assert net.max_flow(0, 5) == 23
    assert net.reaching(5) == {3, 5}


def test_max_flow_long_chain_needs_no_recursion():
    n = 5000
    net = FlowNetwork(n)
    for k in range(n - 1):
        net.add_edge(k, k + 1, 10 + (k % 7))
    assert net.max_flow(0, n - 1) == 10


# --- the GPT-2-shaped block through kiln.compile ---------------------------------------------

@pytest.mark.slow
def test_gpt2_block_training_matches_eager():
    recorder = Recorder()
    default_recorder = Recorder(default_partition)

    def backend_with(partition_fn):
        def backend(gm, example_inputs, **kwargs):
            return aot_module_simplified(gm, example_inputs, fw_compiler=boxed_nop,
                                         partition_fn=partition_fn)
        return backend

    model, make_inputs = models.make_gpt2_block()
    model.train()
    (x,) = make_inputs(0)
    results = {}
    for name, backend in (("eager", None), ("mincut", backend_with(recorder)),
                          ("default", backend_with(default_recorder))):
        m = copy.deepcopy(model)
        run = m if backend is None else kiln.compile(m, backend=backend)
        torch.manual_seed(7)  # the same dropout masks
        out = run(x)
        out.square().mean().backward()
        results[name] = (out.detach(), {k: p.grad for k, p in m.named_parameters()})
    torch.testing.assert_close(results["mincut"], results["eager"])
    assert recorder.graphs and default_recorder.graphs
    assert recorder.saved_bytes < default_recorder.saved_bytes


def _kiln_partition(joint, inputs, *, num_fwd_outputs, **kw):
    """The partition the "kiln" backend asks for (kiln/backends/debugging.py)."""
    return min_cut_rematerialization_partition(
        joint, inputs, num_fwd_outputs=num_fwd_outputs, recompute_reductions=False,
        outputs_are_free=True, save_view_bases=True, **kw)


def test_kiln_partition_saves_softmax_output_not_its_exponentials():
    # decomposed, a softmax is amax, sub, exp, sum, div; saving the input with the max and
    # the sum is the least memory, but the backward would compute every exp again. The
    # output is written anyway, so (outputs_are_free) the backward reads it instead
    from kiln.codegen.decompositions import decomposition_table

    recorder = Recorder(_kiln_partition)
    compiled = aot_function(lambda x: torch.softmax(x, -1), nop, partition_fn=recorder,
                            decompositions=decomposition_table())
    run_and_grad(compiled, leaves(randn(8, 16)))
    fw, _, num_fwd = recorder.graphs[-1]
    output = next(n for n in fw.graph.nodes if n.op == "output")
    assert recorder.saved == list(output.args[0])[:num_fwd]  # the output, nothing else
    assert torch.ops.aten.exp.default not in recorder.backward_targets


def test_kiln_partition_saves_bases_of_views():
    # a saved view would be a forward output aliasing an input or another output (which a
    # code generator must give their own tensor objects); its base is saved instead and
    # the backward takes the view again
    def fn(x, w):
        return (x.t() * w).sin()

    recorder = saved_by(_kiln_partition, fn, randn(8, 16), randn(8))
    assert recorder.saved
    assert not any(isinstance(n.target, torch._ops.OpOverload) and n.target.is_view
                   for n in recorder.saved)
