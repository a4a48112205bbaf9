"""The persistent frame cache (kiln/capture/persist.py, frame_store.py): a frame compiled by
one process is loaded by the next without tracing, and only where every assumption it made
still holds; otherwise it is compiled as usual, with the same results as eager."""

from __future__ import annotations

import importlib
import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import kiln
from kiln.cache import fresh_cache
from kiln.counters import counters


@pytest.fixture
def frame_cache():
    with fresh_cache() as root, kiln.config.patch(fx_graph_cache=True, frame_cache=True):
        yield root


class Net(nn.Module):
    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.lin = nn.Linear(width, width)
        self.norm = nn.LayerNorm(width)
        self.drop = nn.Dropout(0.0)
        self.scale = 2.0

    def forward(self, x):
        return self.drop(torch.relu(self.norm(self.lin(x)))) * self.scale


def _step(model, x):
    out = model(x)
    out.sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    return out.detach(), grads


def _hits():
    return counters["frames"]["persisted_hit"]


def test_hit_after_reset_has_eager_results(frame_cache):
    torch.manual_seed(0)
    model, x = Net(), torch.randn(4, 8)
    expected = _step(model, x)
    first = _step(kiln.compile(model), x)
    assert counters["frames"]["persisted_saved"] == 1
    kiln.reset()
    counters.clear()
    again = _step(kiln.compile(model), x)
    assert _hits() == 1
    assert counters["frames"]["total"] == 0  # nothing traced
    for got in (first, again):
        torch.testing.assert_close(got[0], expected[0])
        for g, e in zip(got[1], expected[1]):
            torch.testing.assert_close(g, e)


def test_another_instance_of_the_class_is_a_hit_with_its_own_parameters(frame_cache):
    torch.manual_seed(0)
    x = torch.randn(4, 8)
    _step(kiln.compile(Net()), x)
    kiln.reset()
    other = Net()
    with torch.no_grad():
        other.lin.weight.mul_(3.0)
    other.scale = 2.0
    got = _step(kiln.compile(other), x)
    assert _hits() == 1
    expected = _step(other, x)
    torch.testing.assert_close(got[0], expected[0])


@pytest.mark.parametrize("change", ["width", "attribute", "hook", "eval", "requires_grad"])
def test_a_changed_assumption_is_a_miss(frame_cache, change):
    torch.manual_seed(0)
    _step(kiln.compile(Net()), torch.randn(4, 8))
    kiln.reset()
    width = 16 if change == "width" else 8
    model, x = Net(width), torch.randn(4, width)
    if change == "attribute":
        model.scale = 3.0
    elif change == "hook":
        model.norm.register_forward_hook(lambda m, i, o: o + 1)
    elif change == "eval":
        model.eval()
    elif change == "requires_grad":
        model.lin.bias.requires_grad_(False)
    expected = model(x)
    got = kiln.compile(model)(x)
    assert _hits() == 0
    assert counters["frames"]["persisted_miss"] + counters["frames"]["total"] >= 1
    torch.testing.assert_close(got, expected)


def test_a_guard_failure_after_a_hit_recompiles_with_torch_reasons(frame_cache):
    def fn(x, y):
        return torch.sin(x) + y

    x, y = torch.randn(4, 3), torch.randn(4, 3)
    kiln.compile(fn)(x, y)
    kiln.reset()
    reasons = []
    compiled = kiln.optimize("kiln", guard_fail_fn=lambda f: reasons.append(f.reason))(fn)
    compiled(x, y)
    assert _hits() == 1
    x5, y5 = torch.randn(5, 3), torch.randn(5, 3)
    torch.testing.assert_close(compiled(x5, y5), fn(x5, y5))
    assert reasons == ["tensor 'L['x']' size mismatch at index 0. expected 4, actual 5"]
    # the sizes the first process saw came with the entry: the recompile was dynamic, so a
    # third size needs no compile (as in the first process)
    x6, y6 = torch.randn(6, 3), torch.randn(6, 3)
    torch.testing.assert_close(compiled(x6, y6), fn(x6, y6))
    assert len(reasons) == 1


def test_an_entry_whose_guard_fails_loads_no_graph(frame_cache):
    def fn(x):
        return torch.tanh(x) * 3

    kiln.compile(fn, dynamic=False)(torch.randn(4))
    kiln.reset()
    counters.clear()
    kiln.compile(fn, dynamic=False)(torch.randn(5))
    assert counters["frames"]["persisted_miss"] == 1
    # the size-4 entry's graphs were not loaded (a load counts as a cache hit)
    assert counters["aot_autograd"]["autograd_cache_hit"] == 0
    assert counters["codegen"]["fxgraph_cache_hit"] == 0


def test_grad_mode_is_guarded(frame_cache):
    def fn(x):
        return x.cos() * 2

    x = torch.randn(3, requires_grad=True)
    kiln.compile(fn)(x)
    kiln.reset()
    with torch.no_grad():
        out = kiln.compile(fn)(x)
    assert _hits() == 0 and not out.requires_grad
    torch.testing.assert_close(out, fn(x).detach())


def test_closures_and_globals(frame_cache):
    offset = torch.ones(3)

    def fn(x):
        return torch.tanh(x) + offset + SCALE

    x = torch.randn(3)
    kiln.compile(fn)(x)
    kiln.reset()
    torch.testing.assert_close(kiln.compile(fn)(x), fn(x))
    assert _hits() == 1
    kiln.reset()
    global SCALE
    SCALE = 5.0
    try:
        torch.testing.assert_close(kiln.compile(fn)(x), fn(x))
        assert _hits() == 1  # the global's guard failed: compiled again
    finally:
        SCALE = 1.0


SCALE = 1.0


def test_a_frame_with_a_graph_break_is_not_persisted_but_its_resume_function_is(frame_cache):
    def broken(x):
        x = x + 1
        kiln.graph_break()
        return x * 2

    x = torch.randn(3)
    kiln.compile(broken)(x)
    # the frame with the break is not persisted; its resume function, a frame of its own
    # without one, is
    assert counters["frames"]["persisted_saved"] == 1
    kiln.reset()
    counters.clear()
    torch.testing.assert_close(kiln.compile(broken)(x), broken(x))
    assert _hits() == 1 and counters["frames"]["total"] == 1


def test_dynamic_entries_serve_new_sizes_in_a_warm_process(frame_cache):
    def fn(x, y):
        return (torch.sin(x) * y.shape[0] + y.sum(0)).relu()

    compiled = kiln.compile(fn)
    for n in (4, 5):  # the second size recompiles with symbolic sizes (automatic dynamic)
        compiled(torch.randn(n, 3), torch.randn(n + 1, 3))
    assert counters["frames"]["persisted_saved"] == 2
    kiln.reset()
    counters.clear()
    compiled = kiln.compile(fn)
    for n in (7, 4, 9, 2):
        x, y = torch.randn(n, 3), torch.randn(n + 1, 3)
        torch.testing.assert_close(compiled(x, y), fn(x, y))
    assert _hits() == 1 and counters["frames"]["total"] == 0
    # another dtype fails the entries' guards: compiled as usual
    x, y = torch.randn(6, 3, dtype=torch.float64), torch.randn(6, 3, dtype=torch.float64)
    torch.testing.assert_close(compiled(x, y), fn(x, y))
    assert counters["frames"]["total"] == 1 and counters["frames"]["persisted_miss"] == 1


def test_marked_dynamic_sizes(frame_cache):
    def fn(x):
        return x.cos() + x.shape[0]

    x = torch.randn(8, 2)
    kiln.mark_dynamic(x, 0)
    kiln.compile(fn)(x)
    kiln.reset()
    counters.clear()
    for n in (3, 8, 11):
        x = torch.randn(n, 2)
        kiln.mark_dynamic(x, 0)
        torch.testing.assert_close(kiln.compile(fn)(x), fn(x))
    assert _hits() == 1 and counters["frames"]["total"] == 0


def test_mutated_inputs_and_a_call_aliasing_them(frame_cache):
    def fn(x, acc):
        acc.add_(x)
        return (acc * 2).sum() + x.sum()

    def run(compiled, x, acc):
        return compiled(x, acc), acc.clone()

    kiln.compile(fn)(torch.ones(4), torch.zeros(4))
    kiln.reset()
    counters.clear()
    compiled = kiln.compile(fn)
    x, acc = torch.randn(4), torch.randn(4)
    expected = run(fn, x, acc.clone())
    torch.testing.assert_close(run(compiled, x, acc), expected)
    assert _hits() == 1 and counters["frames"]["total"] == 0
    # x and acc views of the same memory (x sees the mutation): the loaded forward cannot
    # run that, its guard sends the call to a compile (whose runtime runs such calls
    # eagerly), with eager's result
    base = torch.randn(6)
    reference = base.clone()
    out = compiled(base[:4], base[:4])
    torch.testing.assert_close(out, fn(reference[:4], reference[:4]))
    torch.testing.assert_close(base, reference)
    assert counters["frames"]["total"] == 1


def test_off_with_the_fx_graph_cache_or_the_setting(frame_cache):
    def fn(x):
        return x.exp()

    with kiln.config.patch(fx_graph_cache=False):
        kiln.compile(fn)(torch.randn(3))
    with kiln.config.patch(frame_cache=False):
        kiln.compile(fn)(torch.randn(3))
    assert counters["frames"]["persisted_saved"] == 0


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage_payload"])
def test_a_damaged_entry_is_a_logged_miss(frame_cache, damage, caplog):
    def fn(x):
        return x.sigmoid() + 1

    x = torch.randn(5)
    kiln.compile(fn)(x)
    (path,) = [p for p in (frame_cache / "frames").rglob("*") if p.is_file()]
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        path.write_bytes(data[:-10] + bytes([data[-10] ^ 0xFF]) + data[-9:])
    else:
        from kiln.cache.store import write_entry

        write_entry(path, b"not a pickle")
    kiln.reset()
    with caplog.at_level(logging.WARNING, logger="kiln.cache"):
        torch.testing.assert_close(kiln.compile(fn)(x), fn(x))
    assert _hits() == 0
    assert "discarding" in caplog.text
    assert counters["frames"]["persisted_saved"] == 2  # replaced


def test_an_edited_helper_module_is_a_miss(frame_cache, tmp_path, monkeypatch):
    helper = tmp_path / "kiln_persist_helper.py"
    helper.write_text("def f(x):\n    return x * 2\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("kiln_persist_helper")

    def fn(x):
        return module.f(x) + 1

    x = torch.randn(3)
    kiln.compile(fn)(x)
    kiln.reset()
    helper.write_text("def f(x):\n    return x * 3\n")
    os.utime(helper, ns=(1, 1))  # a different mtime even on a coarse clock
    importlib.reload(module)
    torch.testing.assert_close(kiln.compile(fn)(x), x * 3 + 1)
    assert _hits() == 0
    sys.modules.pop("kiln_persist_helper", None)


CHILD = textwrap.dedent("""
    import json, sys
    import torch
    import kiln
    from kiln.counters import counters
    torch.manual_seed(0)
    sys.path.insert(0, {root!r})
    from kiln_persist_model import Model
    model, x = Model(), torch.randn(4, 8)
    out = kiln.compile(model)(x)
    out.sum().backward()
    print(json.dumps({{"out": out.tolist(), "grad": model.lin.weight.grad.tolist(),
                      "hits": counters["frames"]["persisted_hit"],
                      "dynamo": any(m.startswith("torch._dynamo") for m in sys.modules)}}))
""")

MODEL = textwrap.dedent("""
    import torch
    import torch.nn as nn

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(8, 8)

        def forward(self, x):
            return torch.nn.functional.gelu(self.lin(x)) * {factor}
""")


def _child(root: Path, cache: Path) -> dict:
    env = {**os.environ, "KILN_CACHE_DIR": str(cache),
           "PYTHONPATH": os.pathsep.join([str(Path(kiln.__file__).parents[1]),
                                          os.environ.get("PYTHONPATH", "")])}
    env.pop("KILN_FRAME_CACHE", None)
    out = subprocess.run([sys.executable, "-c", CHILD.format(root=str(root))], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_new_process_starts_warm_without_tracing(tmp_path):
    """The warm start of issue 7: the second process loads the frame without tracing (so
    without importing torch._dynamo), with the first one's results; an edit of the model's
    file makes the third compile again, with the edited code's results."""
    root, cache = tmp_path / "src", tmp_path / "cache"
    root.mkdir()
    (root / "kiln_persist_model.py").write_text(MODEL.format(factor=2))
    cold = _child(root, cache)
    warm = _child(root, cache)
    assert (cold["hits"], warm["hits"]) == (0, 1)
    assert cold["dynamo"] and not warm["dynamo"]
    assert warm["out"] == cold["out"] and warm["grad"] == cold["grad"]
    (root / "kiln_persist_model.py").write_text(MODEL.format(factor=3))
    edited = _child(root, cache)
    assert edited["hits"] == 0
    torch.testing.assert_close(torch.tensor(edited["out"]), torch.tensor(cold["out"]) * 1.5)


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("name", ["resnet18", "gpt2_block", "gpt2_block_sdpa", "gpt2",
                                  "lstm_tagger"])
def test_models_loaded_from_persisted_frames_equal_eager(frame_cache, name, mode):
    """Each model of the suite: compiled, then after kiln.reset() compiled again for a fresh
    copy, loaded from the persisted frame without tracing; both have eager's outputs,
    gradients and buffers (ResNet-18's BatchNorm statistics in train mode: mutated inputs)."""
    import copy

    from benchmarks.models import MODELS

    model, make_inputs = MODELS[name]()
    model.train(mode == "train")
    reference, warm_model = copy.deepcopy(model), copy.deepcopy(model)
    inputs = make_inputs(1)

    def run(module, compiled):
        torch.manual_seed(1234)
        out = compiled(*inputs)
        weights = torch.linspace(-1.0, 1.0, out.numel(), dtype=out.dtype).view(out.shape)
        ((out * weights).sum() + out.square().mean()).backward()
        return out.detach(), {k: p.grad for k, p in module.named_parameters()}, \
            module.state_dict()

    expected = run(reference, reference)
    cold = run(model, kiln.compile(model))
    assert counters["frames"]["persisted_saved"] == 1
    kiln.reset()
    counters.clear()
    warm = run(warm_model, kiln.compile(warm_model))
    assert _hits() == 1 and counters["frames"]["total"] == 0
    for got in (cold, warm):
        torch.testing.assert_close(got[0], expected[0])
        for key, grad in expected[1].items():
            torch.testing.assert_close(got[1][key], grad, msg=lambda m, k=key: f"{k}: {m}")
        for key, value in expected[2].items():
            torch.testing.assert_close(got[2][key], value, msg=lambda m, k=key: f"{k}: {m}")


@pytest.mark.parametrize("name", ["gpt2_block", "gpt2"])
def test_new_sequence_lengths_in_a_warm_process(frame_cache, name):
    """Two lengths make the model's graph dynamic; after kiln.reset() the persisted dynamic
    entry serves other lengths without tracing, with eager's outputs and gradients."""
    import copy

    from benchmarks.models import MODELS

    model, _ = MODELS[name]()
    reference = copy.deepcopy(model)

    def inputs(seq, seed):
        g = torch.Generator().manual_seed(seed)
        if name == "gpt2_block":
            return (torch.randn(2, seq, 64, generator=g),)
        return (torch.randint(0, 256, (2, seq), generator=g),)

    compiled = kiln.compile(model)
    for seed, seq in enumerate([16, 12]):
        torch.manual_seed(0)
        compiled(*inputs(seq, seed)).sum().backward()
    kiln.reset()
    counters.clear()
    compiled = kiln.compile(model)
    for seed, seq in enumerate([8, 20, 5]):
        model.zero_grad()
        reference.zero_grad()
        torch.manual_seed(seed)
        out = compiled(*inputs(seq, seed))
        out.sum().backward()
        torch.manual_seed(seed)
        expected = reference(*inputs(seq, seed))
        expected.sum().backward()
        torch.testing.assert_close(out, expected)
        for (key, p), q in zip(model.named_parameters(), reference.parameters()):
            torch.testing.assert_close(p.grad, q.grad, msg=lambda m, k=key: f"{k}: {m}")
    assert _hits() == 1 and counters["frames"]["total"] == 0
