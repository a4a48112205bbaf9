"""Whole models through kiln.compile(fullgraph=True): one graph, equal to eager (outputs,
buffers and gradients), no recompiles on new inputs of the same shape, exactly one recompile
for train -> eval, and the state_dict layout of torch.compile's OptimizedModule. Outputs,
buffers and gradients are checked with the "eager" backend (the captured graph) and with
"aot_eager" (kiln's AOT autograd: functionalized aten graphs, forward and backward).

The models are the benchmark suite's (benchmarks/models.py). Each test compiles a module and
compares it with an identical deep copy run eagerly. Train mode keeps dropout on; the RNG is
seeded before each of the two runs, so eager and compiled draw the same masks (the "eager"
backend runs the captured graph's dropout calls in the order eager does, and AOT's forward
graph keeps them in that order).
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

import kiln
from benchmarks.models import MODELS

MODEL_NAMES = ["resnet18", "gpt2_block", "gpt2_block_sdpa", "gpt2", "lstm_tagger"]
MODES = ["train", "eval"]
BACKENDS = ["eager", "aot_eager", "kiln"]


def _setup(name: str, mode: str, backend: str = "eager"
           ) -> tuple[nn.Module, nn.Module, kiln.testing.CompileCounter, nn.Module, object]:
    """(eager reference, original module, counter, compiled module, make_inputs)."""
    model, make_inputs = MODELS[name]()
    model.train(mode == "train")
    reference = copy.deepcopy(model)
    cnt = kiln.testing.CompileCounterWithBackend(backend)
    compiled = kiln.compile(model, backend=cnt, fullgraph=True)
    return reference, model, cnt, compiled, make_inputs


def _run(module: nn.Module, inputs: tuple[torch.Tensor, ...], seed: int = 1234) -> torch.Tensor:
    torch.manual_seed(seed)
    return module(*inputs)


def _assert_same_state(reference: nn.Module, model: nn.Module) -> None:
    """Parameters and buffers (BatchNorm running statistics) are equal."""
    ref_state, state = reference.state_dict(), model.state_dict()
    assert list(ref_state) == list(state)
    for key in ref_state:
        torch.testing.assert_close(state[key], ref_state[key], msg=lambda m, key=key: f"{key}: {m}")


def _loss(out: torch.Tensor) -> torch.Tensor:
    # Not out.sum(): log_softmax's gradient of a plain sum is ~0, which would hide errors.
    weights = torch.linspace(-1.0, 1.0, out.numel(), dtype=out.dtype).view(out.shape)
    return (out * weights).sum() + out.square().mean()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_one_graph_equal_to_eager(name: str, mode: str, backend: str) -> None:
    reference, model, cnt, compiled, make_inputs = _setup(name, mode, backend)
    inputs = make_inputs(1)
    expected = _run(reference, inputs)
    actual = _run(compiled, inputs)
    assert cnt.frame_count == 1
    assert cnt.op_count > 0
    assert kiln.counters["aot_autograd"]["not_ok"] == 0
    torch.testing.assert_close(actual, expected)
    _assert_same_state(reference, model)  # BatchNorm's running stats in train mode


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_new_inputs_same_shape_do_not_recompile(name: str, mode: str) -> None:
    reference, model, cnt, compiled, make_inputs = _setup(name, mode)
    for seed in (1, 2, 3):
        inputs = make_inputs(seed)
        expected = _run(reference, inputs, seed)
        actual = _run(compiled, inputs, seed)
        torch.testing.assert_close(actual, expected)
    assert cnt.frame_count == 1
    _assert_same_state(reference, model)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_train_eval_switch(name: str, backend: str) -> None:
    reference, model, cnt, compiled, make_inputs = _setup(name, "train", backend)
    counts = []
    # train: compile; eval: recompile once; back to train and eval: reuse both entries
    for step, mode in enumerate(["train", "eval", "train", "eval", "train"]):
        training = mode == "train"
        compiled.train(training)
        reference.train(training)
        assert model.training is training and compiled.training is training
        inputs = make_inputs(step)
        expected = _run(reference, inputs, step)
        actual = _run(compiled, inputs, step)
        torch.testing.assert_close(actual, expected, msg=lambda m, s=step, md=mode:
                                   f"step {s} ({md}): {m}")
        counts.append(cnt.frame_count)
    assert counts == [1, 2, 2, 2, 2]
    _assert_same_state(reference, model)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_gradients_equal_to_eager(name: str, mode: str, backend: str) -> None:
    reference, model, cnt, compiled, make_inputs = _setup(name, mode, backend)
    inputs = make_inputs(1)
    float_inputs = [x.is_floating_point() for x in inputs]
    ref_inputs = tuple(x.clone().requires_grad_(f) for x, f in zip(inputs, float_inputs))
    inputs = tuple(x.clone().requires_grad_(f) for x, f in zip(inputs, float_inputs))

    _loss(_run(reference, ref_inputs)).backward()
    out = _run(compiled, inputs)
    assert out.requires_grad and out.grad_fn is not None
    _loss(out).backward()
    assert cnt.frame_count == 1
    assert kiln.counters["aot_autograd"]["ok"] == (backend in ("aot_eager", "kiln"))
    assert kiln.counters["aot_autograd"]["not_ok"] == 0

    ref_params = dict(reference.named_parameters())
    params = dict(model.named_parameters())
    assert list(params) == list(ref_params)
    for key, param in params.items():
        expected = ref_params[key].grad
        assert expected is not None, key
        assert param.grad is not None, f"{key}: no gradient through the compiled module"
        torch.testing.assert_close(param.grad, expected, msg=lambda m, key=key: f"{key}: {m}")
    for x, ref_x, f in zip(inputs, ref_inputs, float_inputs):
        if f:
            torch.testing.assert_close(x.grad, ref_x.grad)
    _assert_same_state(reference, model)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_state_dict_keys_like_torch_compile(name: str) -> None:
    model, _ = MODELS[name]()
    original_keys = list(model.state_dict())
    compiled = kiln.compile(model)
    assert isinstance(compiled, kiln.OptimizedModule)
    assert compiled._orig_mod is model
    state = compiled.state_dict()
    assert list(state) == [f"_orig_mod.{k}" for k in original_keys]
    # torch.compile builds its wrapper lazily: no compilation happens here
    assert list(state) == list(torch.compile(model, backend="eager").state_dict())
    # the values are the module's own tensors, and the state loads back into it
    for key, value in model.state_dict().items():
        assert state[f"_orig_mod.{key}"].data_ptr() == value.data_ptr()
    fresh, _ = MODELS[name](seed=1)
    fresh_compiled = kiln.compile(fresh)
    fresh_compiled.load_state_dict(state)
    _assert_same_state(model, fresh)


def _tokens_or_embeddings(name: str, seq: int, seed: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    if name == "gpt2_block":
        return (torch.randn(2, seq, 64, generator=g),)
    vocab = 256 if name == "gpt2" else 100
    return (torch.randint(0, vocab, (2, seq), generator=g),)


@pytest.mark.parametrize("name", ["gpt2_block", "gpt2", "lstm_tagger"])
def test_new_sequence_lengths_recompile_at_most_once(name: str) -> None:
    reference, model, cnt, compiled, _ = _setup(name, "eval")
    counts = []
    for seed, seq in enumerate([16, 12, 8, 5]):
        inputs = _tokens_or_embeddings(name, seq, seed)
        torch.testing.assert_close(_run(compiled, inputs), _run(reference, inputs))
        counts.append(cnt.frame_count)
    assert counts == [1, 2, 2, 2]


@pytest.mark.parametrize("name, aot_ok", [("gpt2_block", 2), ("lstm_tagger", 1)])
def test_new_sequence_lengths_train_through_aot(name: str, aot_ok: int) -> None:
    """Training through aot_eager with automatic dynamic shapes: the second length makes
    the graph dynamic, one compile then serves every length, and outputs and gradients
    equal eager's (dropout on). The LSTM's dynamic graph runs without AOT (tracing would
    unroll it for one length)."""
    reference, model, cnt, compiled, _ = _setup(name, "train", "aot_eager")
    counts = []
    for seed, seq in enumerate([16, 12, 8, 5]):
        inputs = _tokens_or_embeddings(name, seq, seed)
        float_inputs = [x.is_floating_point() for x in inputs]
        ref_inputs = tuple(x.clone().requires_grad_(f) for x, f in zip(inputs, float_inputs))
        inputs = tuple(x.clone().requires_grad_(f) for x, f in zip(inputs, float_inputs))
        expected, actual = _run(reference, ref_inputs, seed), _run(compiled, inputs, seed)
        torch.testing.assert_close(actual, expected)
        _loss(expected).backward()
        _loss(actual).backward()
        for (key, param), ref_param in zip(model.named_parameters(), reference.parameters()):
            torch.testing.assert_close(param.grad, ref_param.grad,
                                       msg=lambda m, key=key, s=seq: f"{key} (seq {s}): {m}")
        model.zero_grad()
        reference.zero_grad()
        counts.append(cnt.frame_count)
    assert counts == [1, 2, 2, 2]
    assert kiln.counters["aot_autograd"]["ok"] == aot_ok
    assert kiln.counters["aot_autograd"]["not_ok"] == 2 - aot_ok
