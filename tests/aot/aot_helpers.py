"""Shared machinery of the differential AOT autograd corpus (tests/aot/test_corpus_*.py).

Each corpus case is a small function and a maker that builds its inputs from a seeded
``torch.Generator``. The maker runs once per side, with the same seed, so eager and compiled
get identical, independent inputs (what a deep copy would give, and it also works for inputs
that are views or non-leaf tensors). The function runs eagerly and through
``kiln.compile(fn, backend=CompileCounterWithBackend(backend))`` for each backend of
``COMPILE_BACKENDS`` (``"aot_eager"``, and ``"kiln"``, whose forward and backward graphs run
as generated C++ kernels), or, for the second path, ``kiln.aot.aot_function(fn,
kiln.aot.nop)`` (no capture), ``calls`` times in a row on the same inputs, each call from
``torch.manual_seed(0)``. After each call must agree:

- outputs (values, dtype, shape; ``requires_grad``; whether ``grad_fn`` is None);
- inputs (mutations applied; ``requires_grad``; modules' parameters, buffers and mode);
- grad mode left behind, and the global RNG state (the same random numbers consumed);
- aliasing: which outputs are inputs or other outputs (``is``) and which share storage with
  inputs or other outputs; aliases keep eager's size, stride and storage offset;
- backward: a fixed random weighting of the outputs that require grad, backpropagated; the
  ``.grad`` of every leaf (leaf tensor inputs and their bases, module parameters, extra leaves
  the maker names) must agree.

After the last call every output is updated in place under ``no_grad``, one at a time, and
inputs and outputs compared again: a write through an aliased output must land where eager's
lands and nowhere else. Where eager raises, the compiled function must raise the same type
(cases that expect it say ``raises=``). AOT falling back to running the captured graph
without AOT (a warning from the backend) fails a case unless it says ``fallback=True``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
import torch.utils._pytree as pytree

import kiln
import kiln.aot
from kiln.testing import CompileCounterWithBackend

# the backends every case runs through under kiln.compile (test_compile's ``backend``)
COMPILE_BACKENDS = ("aot_eager", "kiln")


class Gen:
    """Input factory over one seeded generator."""

    def __init__(self, seed: int) -> None:
        self.g = torch.Generator().manual_seed(seed)

    def randn(self, *shape: int, rg: bool = False, dtype: torch.dtype = torch.float32
              ) -> torch.Tensor:
        return torch.randn(*shape, generator=self.g).to(dtype).requires_grad_(rg)

    def randint(self, high: int, *shape: int, dtype: torch.dtype = torch.int64) -> torch.Tensor:
        return torch.randint(0, high, shape, generator=self.g, dtype=dtype)

    def mask(self, *shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=self.g) > 0.5


def seeded_module(ctor: Callable[..., torch.nn.Module], *args: Any, **kwargs: Any
                  ) -> torch.nn.Module:
    """A module built from a fixed RNG state (the same parameters on both sides)."""
    with torch.random.fork_rng():
        torch.manual_seed(1234)
        return ctor(*args, **kwargs)


@dataclasses.dataclass
class Inputs:
    """What a maker may return instead of a plain tuple: the arguments, and extra leaves
    (hidden behind non-leaf inputs) whose ``.grad`` must agree."""
    args: tuple[Any, ...]
    leaves: tuple[torch.Tensor, ...] = ()


@dataclasses.dataclass
class Case:
    fn: Callable[..., Any]
    make: Callable[[Gen], Any]
    id: str
    aot: bool | str = True      # run through aot_function too; "module": args[0] via aot_module
    graphs: int | None = None   # expected compiled graph count under kiln.compile
    calls: int = 2
    grad: bool = True           # grad mode the function is called under
    raises: type[BaseException] | None = None
    fallback: bool = False      # the backend may run the graph without AOT
    xfail: str | None = None       # kiln.compile path
    xfail_aot: str | None = None   # aot_function path


def case(fn: Callable[..., Any], make: Callable[[Gen], Any], **kwargs: Any) -> Case:
    return Case(fn, make, kwargs.pop("id", fn.__name__), **kwargs)


def _param(c: Case, reason: str | None) -> Any:
    marks = [pytest.mark.xfail(strict=True, reason=f"kiln: {reason}")] if reason else []
    return pytest.param(c, id=c.id, marks=marks)


def compile_params(cases: list[Case]) -> list[Any]:
    return [_param(c, c.xfail) for c in cases]


def aot_params(cases: list[Case]) -> list[Any]:
    return [_param(c, c.xfail_aot) for c in cases if c.aot]


# --- flattening --------------------------------------------------------------------------------

def _build(c: Case) -> Inputs:
    made = c.make(Gen(0))
    return made if isinstance(made, Inputs) else Inputs(tuple(made))


def input_tensors(args: Any) -> list[torch.Tensor]:
    """Tensors among the (nested) arguments, with modules' parameters and buffers."""
    out: list[torch.Tensor] = []
    for leaf in pytree.tree_leaves(args):
        if isinstance(leaf, torch.Tensor):
            out.append(leaf)
        elif isinstance(leaf, torch.nn.Module):
            out += [*leaf.parameters(), *leaf.buffers()]
    return out


def _leaves(inputs: Inputs) -> list[torch.Tensor]:
    found: list[torch.Tensor] = []
    for t in [*input_tensors(inputs.args), *inputs.leaves]:
        for cand in (t, t._base):
            if cand is not None and cand.is_leaf and cand.requires_grad and \
                    not any(cand is f for f in found):
                found.append(cand)
    return found


def _modules(args: Any) -> list[torch.nn.Module]:
    return [m for m in pytree.tree_leaves(args) if isinstance(m, torch.nn.Module)]


# --- comparisons -------------------------------------------------------------------------------

def _grad_fn_state(t: torch.Tensor) -> str:
    """Whether ``t`` has a grad_fn; autograd refuses to say for some views updated in place."""
    try:
        return "none" if t.grad_fn is None else "grad_fn"
    except RuntimeError:
        return "invalid (a view updated in place)"


def assert_same(expected: Any, actual: Any, where: str, grad_fn: bool = True) -> None:
    if isinstance(expected, torch.Tensor):
        assert isinstance(actual, torch.Tensor), f"{where}: expected a tensor, got {actual!r}"
        torch.testing.assert_close(actual.detach(), expected.detach(), equal_nan=True,
                                   msg=lambda m: f"{where}: {m}")
        assert actual.requires_grad == expected.requires_grad, (
            f"{where}: requires_grad {actual.requires_grad}, eager {expected.requires_grad}")
        e_fn, a_fn = _grad_fn_state(expected), _grad_fn_state(actual)
        assert a_fn == e_fn or not grad_fn, f"{where}: grad_fn {a_fn}, eager {e_fn}"
        return
    assert type(actual) is type(expected), (
        f"{where}: type {type(actual).__name__}, eager {type(expected).__name__}")
    assert actual == expected, f"{where}: {actual!r} != eager {expected!r}"


def _same_storage(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.numel() == 0 or b.numel() == 0:
        return False
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


def _aliasing(outs: list[Any], ins: list[torch.Tensor]) -> list[tuple[str, bool, bool]]:
    """For each (output, earlier output or input) pair: (name, is, shares storage)."""
    rel = []
    for j, o in enumerate(outs):
        if not isinstance(o, torch.Tensor):
            continue
        others = [(f"input {i}", t) for i, t in enumerate(ins)]
        others += [(f"output {k}", t) for k, t in enumerate(outs[:j])
                   if isinstance(t, torch.Tensor)]
        rel += [(f"output {j} / {name}", o is t, _same_storage(o, t)) for name, t in others]
    return rel


def _geometry(t: torch.Tensor) -> tuple[Any, ...]:
    return tuple(t.shape), t.stride(), t.storage_offset()


def compare_state(exp_out: list[Any], act_out: list[Any], exp_in: Inputs, act_in: Inputs,
                  where: str, grad_fn: bool = True) -> None:
    assert len(act_out) == len(exp_out), f"{where}: {len(act_out)} outputs, eager {len(exp_out)}"
    for j, (e, a) in enumerate(zip(exp_out, act_out)):
        assert_same(e, a, f"{where}: output {j}", grad_fn)
    e_ins, a_ins = input_tensors(exp_in.args), input_tensors(act_in.args)
    for i, (e, a) in enumerate(zip(e_ins, a_ins)):
        assert_same(e, a, f"{where}: input {i} after the call", grad_fn)
    for e, a in zip(_modules(exp_in.args), _modules(act_in.args)):
        assert a.training == e.training, f"{where}: module training flag differs"
    exp_rel, act_rel = _aliasing(exp_out, e_ins), _aliasing(act_out, a_ins)
    for (name, e_is, e_share), (_, a_is, a_share) in zip(exp_rel, act_rel):
        assert a_is == e_is, f"{where}: {name}: `is` {a_is}, eager {e_is}"
        assert a_share == e_share, f"{where}: {name}: shares storage {a_share}, eager {e_share}"
    for j, (e, a) in enumerate(zip(exp_out, act_out)):
        if isinstance(e, torch.Tensor) and any(_same_storage(e, t) for t in e_ins):
            assert _geometry(a) == _geometry(e), (
                f"{where}: output {j} (an alias of an input) has (size, stride, offset) "
                f"{_geometry(a)}, eager {_geometry(e)}")


# --- running -----------------------------------------------------------------------------------

@dataclasses.dataclass
class Outcome:
    outs: list[Any] | None = None
    grad_after: bool = True
    rng: torch.Tensor | None = None
    error: BaseException | None = None


def _call(fn: Callable[..., Any], args: tuple[Any, ...], grad: bool) -> Outcome:
    grad_before = torch.is_grad_enabled()
    torch.manual_seed(0)
    try:
        with torch.set_grad_enabled(grad):
            result = fn(*args)
            after = torch.is_grad_enabled()
        return Outcome(pytree.tree_leaves(result), after, torch.get_rng_state())
    except Exception as e:  # noqa: BLE001 - compared with eager's
        return Outcome(error=e)
    finally:
        torch.set_grad_enabled(grad_before)


def _same_error(exp: BaseException | None, act: BaseException | None, where: str) -> bool:
    """Whether both sides raised (then of the same type); fails if only one did."""
    if exp is None and act is None:
        return False
    if exp is None:
        raise AssertionError(f"{where}: eager ran, compiled raised {act!r}") from act
    assert act is not None, f"{where}: eager raised {exp!r}, compiled did not"
    assert type(act) is type(exp), f"{where}: compiled raised {act!r}, eager {exp!r}"
    return True


def _backward(outs: list[Any]) -> BaseException | None:
    diff = [o for o in outs if isinstance(o, torch.Tensor) and o.requires_grad]
    if not diff:
        return None
    g = torch.Generator().manual_seed(99)
    weights = [torch.randn(o.shape, generator=g).to(o.dtype) for o in diff]
    try:
        torch.autograd.backward(diff, weights)
    except Exception as e:  # noqa: BLE001 - compared with eager's
        return e
    return None


def _compare_grad(e: torch.Tensor, a: torch.Tensor, where: str) -> None:
    """``.grad`` of a leaf (an input's, a parameter made inside) or of a tensor that retains
    its grad."""
    assert a.is_leaf or a.retains_grad, f"{where}: .grad not kept (eager keeps it)"
    if e.grad is None or a.grad is None:
        assert a.grad is None and e.grad is None, f"{where}: .grad {a.grad}, eager {e.grad}"
    else:
        torch.testing.assert_close(a.grad, e.grad, msg=lambda m: f"{where} .grad: {m}")


def _poke(t: torch.Tensor) -> None:
    if t.dtype == torch.bool:
        t.logical_not_()
    else:
        t.add_(1)


def _try(fn: Callable[[], Any]) -> BaseException | None:
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - compared with eager's
        return e
    return None


def _poke_outputs(exp_out: list[Any], act_out: list[Any], exp_in: Inputs, act_in: Inputs
                  ) -> None:
    """Update each output in place, in grad mode (as a user would), or under no_grad where
    eager refuses that (views of leaves, multi-output views); compare everything after."""
    for j, (e, a) in enumerate(zip(exp_out, act_out)):
        if not isinstance(e, torch.Tensor):
            continue
        where = f"in-place update of output {j}"
        e_err, a_err = _try(lambda: _poke(e)), _try(lambda: _poke(a))
        if _same_error(e_err, a_err, f"{where} (grad mode)"):
            with torch.no_grad():
                e_err, a_err = _try(lambda: _poke(e)), _try(lambda: _poke(a))
            if _same_error(e_err, a_err, f"{where} (no_grad)"):
                continue
        # (grad_fn not compared: autograd refuses to show it for some views updated in place)
        compare_state(exp_out, act_out, exp_in, act_in, f"after the {where}", grad_fn=False)


class _FallbackLog(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def _watch_fallback() -> Iterator[_FallbackLog]:
    handler = _FallbackLog()
    logger = logging.getLogger("kiln.backends")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


def differential(c: Case, make_compiled: Callable[[Case, Inputs], Callable[..., Any]]) -> None:
    exp_in, act_in = _build(c), _build(c)
    compiled = make_compiled(c, act_in)
    exp_leaves, act_leaves = _leaves(exp_in), _leaves(act_in)
    with _watch_fallback() as fallback:
        for call in range(1, c.calls + 1):
            where = f"call {call}"
            exp = _call(c.fn, exp_in.args, c.grad)
            act = _call(compiled, act_in.args, c.grad)
            if _same_error(exp.error, act.error, where):
                assert c.raises is not None and isinstance(exp.error, c.raises), (
                    f"{where}: eager raised {exp.error!r}; the case does not say raises=")
                return
            assert c.raises is None, f"{where}: expected {c.raises.__name__}, nothing raised"
            compare_state(exp.outs, act.outs, exp_in, act_in, where)
            assert act.grad_after == exp.grad_after, (
                f"{where}: grad mode after the call {act.grad_after}, eager {exp.grad_after}")
            assert torch.equal(act.rng, exp.rng), f"{where}: RNG state after the call differs"
            if _same_error(_backward(exp.outs), _backward(act.outs), f"{where}: backward"):
                continue
            for k, (e, a) in enumerate(zip(exp_leaves, act_leaves)):
                _compare_grad(e, a, f"{where}: leaf {k}")
            for j, (e, a) in enumerate(zip(exp.outs, act.outs)):
                if isinstance(e, torch.Tensor) and (e.is_leaf or e.retains_grad):
                    _compare_grad(e, a, f"{where}: output {j}")
        _poke_outputs(exp.outs, act.outs, exp_in, act_in)
    if not c.fallback:
        assert not fallback.messages, f"AOT fell back: {fallback.messages}"


def _via_compile(c: Case, inputs: Inputs, backend: str) -> Callable[..., Any]:
    cnt = CompileCounterWithBackend(backend)
    compiled = kiln.compile(c.fn, backend=cnt)
    if c.graphs is None:
        return compiled

    def counted(*args: Any) -> Any:
        result = compiled(*args)
        assert cnt.frame_count == c.graphs, (
            f"{cnt.frame_count} graphs compiled, expected {c.graphs}")
        return result
    return counted


def _via_aot(c: Case, inputs: Inputs) -> Callable[..., Any]:
    if c.aot == "module":
        compiled_mod = kiln.aot.aot_module(inputs.args[0], kiln.aot.nop)
        return lambda mod, *rest: c.fn(compiled_mod, *rest)
    return kiln.aot.aot_function(c.fn, kiln.aot.nop)


def check_compile(c: Case, backend: str = "aot_eager") -> None:
    """The case through ``kiln.compile(backend=backend)`` (one of ``COMPILE_BACKENDS``),
    against eager; the same checks and expected graph count for every backend."""
    differential(c, lambda c, inputs: _via_compile(c, inputs, backend))


def check_aot(c: Case) -> None:
    """The case through ``kiln.aot.aot_function(fn, nop)`` (no capture), against eager."""
    differential(c, _via_aot)
