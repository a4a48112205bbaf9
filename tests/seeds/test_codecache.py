"""Port of seeds/004 (torch's test/inductor/test_codecache.py) to kiln.

Names map as DESIGN.md "Public API" says: torch.compile -> kiln.compile (backend "kiln",
kiln's default, for "inductor"), torch._dynamo.reset -> kiln.reset,
clear_inductor_caches -> kiln.cache.clear_caches, fresh_inductor_cache ->
kiln.cache.fresh_cache, torch._inductor.config -> kiln.config, counters["inductor"] ->
kiln.counters["codegen"], torch._inductor.metrics -> kiln.metrics, torch._inductor.codecache
-> kiln.cache. Each test runs in a fresh cache directory with the FX graph cache on (the
seed's ``config.patch({"fx_graph_cache": True})``). torch's assertEqual on tensors is
torch.testing.assert_close.

The remote-cache test patches kiln.cache.remote.RedisRemoteCacheBackend (torch's
torch._inductor.remote_cache.RedisRemoteCacheBackend) with its counting backend; the
seed's fbcode branch is left out. test_cuda_compile_command is ported (kiln.cache's
cuda_compile_command and CUDACodeCache, from kiln/codegen/cuda_compiler.py); the seed skips
it without CUDA, but its body mocks the compiler, so here it runs everywhere. The GPU
variants (device "cuda", test_codecache_spawn/fork, int32 bounds) skip without a GPU, as
the seed's do; kiln's CUDA graphs run op by op until the Triton target, through the same FX
graph cache. test_cache_with_nt is a strict xfail: kiln does not capture nested tensors
(docs/roadmap.md, issue 7). Not ported: the higher-order-op bypass with a user Triton
kernel (a GPU test; kiln does not capture Triton kernels). test_hash_config_changes uses kiln's
``cpp_parallel_threshold`` where the seed uses ``max_autotune``, which kiln does not have.
"""

import base64
import json
import os
import pickle
import unittest
from unittest.mock import patch

import pytest
import torch

import kiln
from kiln import config, metrics
from kiln.cache import (
    CUDACodeCache,
    FxGraphCache,
    FxGraphCachePickler,
    FxGraphHashDetails,
    PyCodeCache,
    TensorMetadataAndValues,
    cache_dir,
    clear_caches,
    cuda_compile_command,
    fresh_cache,
)
from kiln.codegen import AsyncCompile
from kiln.counters import counters

parametrize = pytest.mark.parametrize


@pytest.fixture(autouse=True)
def _fx_graph_cache_on():
    with fresh_cache(), config.patch(fx_graph_cache=True, fx_graph_remote_cache=False):
        yield


class MyModelConv2d(torch.nn.Module):
    def __init__(self, dim=512):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, dim, kernel_size=3, stride=2, bias=False)
        self.conv2 = torch.nn.Conv2d(dim, dim, kernel_size=3, stride=2, bias=False)

    def forward(self, x):
        x = self.conv1(x)
        kiln.graph_break()
        x = self.conv2(x)
        return x


GPU_TYPE = "cuda"
HAS_GPU = torch.cuda.is_available()
requires_gpu = pytest.mark.skipif(not HAS_GPU, reason=f"requires {GPU_TYPE}")


def _skip_without_gpu(device):
    if device == GPU_TYPE and not HAS_GPU:
        pytest.skip(f"requires {GPU_TYPE}")


class MyModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(10, 10)

    def forward(self, inp):
        return self.fc1(inp)


def _run_codecache_test(start_method):
    with config.patch(worker_start_method=start_method, compile_threads=16):
        AsyncCompile.warm_pool()

        model = MyModel().to(device=GPU_TYPE)
        model = kiln.compile(model)
        inp = torch.rand(10, 10).to(device=GPU_TYPE)
        model(inp).sum().backward()


@requires_gpu
def test_codecache_spawn():
    _run_codecache_test("spawn")


@requires_gpu
def test_codecache_fork():
    _run_codecache_test("fork")


def assertEqual(a, b):
    torch.testing.assert_close(a, b)


class TestFxGraphCache:
    def setup_method(self):
        counters.clear()

    def reset(self):
        kiln.reset()
        clear_caches()

    @parametrize("device", (GPU_TYPE, "cpu"))
    @parametrize("dtype", (torch.float32, torch.bfloat16))
    @parametrize("dynamic", (False, True))
    def test_cache_load_function(self, device, dtype, dynamic):
        """
        Verify that we can populate and load functions from the cache.
        """
        _skip_without_gpu(device)

        def fn(x, y):
            return (x * 2, y @ y)

        a = torch.rand(25, dtype=dtype, device=device)
        b = torch.rand(5, 5, dtype=dtype, device=device)

        compiled_fn = kiln.compile(fn, dynamic=dynamic)

        # A first call shold miss in the cache.
        assertEqual(fn(a, b), compiled_fn(a, b))
        assert counters["codegen"]["fxgraph_cache_miss"] == 1
        assert counters["codegen"]["fxgraph_cache_hit"] == 0
        assert counters["codegen"]["fxgraph_lookup_write_file"] == 0

        # A second call should hit. (First reset so in-memory guards
        # don't prevent compilation).
        for m in PyCodeCache.cache.values():
            os.remove(m.__file__)
        self.reset()
        assertEqual(fn(a, b), compiled_fn(a, b))
        assert counters["codegen"]["fxgraph_cache_miss"] == 1
        assert counters["codegen"]["fxgraph_cache_hit"] == 1
        # kiln: a CUDA graph runs op by op until the Triton target: no generated module
        # to write again
        assert counters["codegen"]["fxgraph_lookup_write_file"] == (1 if device == "cpu"
                                                                     else 0)

    @parametrize("device", (GPU_TYPE, "cpu"))
    @parametrize("dtype", (torch.float32, torch.bfloat16))
    @parametrize("dynamic", (False, True))
    def test_remote_cache_load_function(self, device, dtype, dynamic):
        _skip_without_gpu(device)
        def fn(x, y):
            return (x * 2, y @ y)

        a = torch.rand(25, dtype=dtype, device=device)
        b = torch.rand(5, 5, dtype=dtype, device=device)

        cache = {}
        num_get = 0
        num_put = 0

        class MyCache:
            def __init__(self, key, is_autotune=False):
                pass

            def get(self, filename):
                nonlocal cache
                nonlocal num_get
                if filename not in cache:
                    return None
                ret = json.loads(cache[filename])
                num_get += 1
                return base64.b64decode(ret) if ret is not None else ret

            def put(self, filename, data):
                nonlocal cache
                nonlocal num_put
                data = base64.b64encode(data).decode("ascii")
                cache[filename] = json.dumps(data)
                num_put += 1

        cache_module = "kiln.cache.remote.RedisRemoteCacheBackend"

        with config.patch(
            {
                "fx_graph_cache": False,
                "fx_graph_remote_cache": True,
            }
        ), patch.dict(os.environ), patch(cache_module, MyCache, create=True):
            for _ in range(4):
                with fresh_cache():
                    compiled_fn = kiln.compile(fn, dynamic=dynamic)
                    assertEqual(fn(a, b), compiled_fn(a, b))
                kiln.reset()
            assert num_get == 3
            assert num_put == 1

    @parametrize("device", (GPU_TYPE, "cpu"))
    @parametrize("dtype", (torch.float32, torch.bfloat16))
    @parametrize("dynamic", (False, True))
    def test_cache_load_model(self, device, dtype, dynamic):
        """
        Verify that we can populate and load models from the cache.
        """
        _skip_without_gpu(device)

        def fn(mod, x):
            mod.zero_grad()
            mod(x).sum().backward()
            return [p.grad for p in mod.parameters()]

        compiled_fn = kiln.compile(fn, dynamic=dynamic)

        mod = MyModelConv2d().to(device=device, dtype=dtype)
        inp = torch.randn(2, 3, 16, 16, device=device, dtype=dtype)

        # The first call should see all cache misses.
        counters.clear()
        grads1 = compiled_fn(mod, inp)
        assert counters["codegen"]["fxgraph_cache_miss"] > 0
        assert counters["codegen"]["fxgraph_cache_hit"] == 0

        # The second should see all hits. (First reset so in-memory guards
        # don't prevent compilation).
        counters.clear()
        self.reset()
        grads2 = compiled_fn(mod, inp)
        assert counters["codegen"]["fxgraph_cache_miss"] == 0
        assert counters["codegen"]["fxgraph_cache_hit"] > 0

        # And the results should be the same.
        assertEqual(grads1, grads2)

    @requires_gpu
    @parametrize("device", (GPU_TYPE,))
    @parametrize("dtype", (torch.float16, torch.bfloat16))
    def test_cache_load_with_guards_int32_bounds(self, device, dtype):
        """
        Test caching the same graph, but under conditions that introduce guards
        for tensor sizes < int32.
        """
        _skip_without_gpu(device)
        if torch.cuda.get_device_properties(0).total_memory < 64 * 2**30:
            pytest.skip("requires 64GB")

        def fn(x, y):
            return (x + x, y + y)

        compiled_fn = kiln.compile(fn, dynamic=True)

        # Iterate over different shapes, varying whether the total
        # size is below or above int32. For each combination, we expect
        # different guards around whether the symbolic sizes do or do
        # not exceed int32.
        # kiln: its CUDA graphs run op by op (no generated indexing, so no int32 guards):
        # the graph compiled for the first shapes serves the others, which run it without a
        # lookup; after each reset the lookup hits.
        shapes = (
            ((5, 6), (7, 8)),
            ((5, 6), (47000, 47001)),
            ((47000, 47001), (5, 6)),
        )
        for i, (a_shape, b_shape) in enumerate(shapes):
            a = torch.rand(a_shape, device=device, dtype=dtype)
            b = torch.rand(b_shape, device=device, dtype=dtype)

            # AVOID a dynamo reset here. We expect guards to have been
            # added that will be violated with the new shape. We should
            # see a recompile (and cache miss).
            counters.clear()
            res1 = compiled_fn(a, b)
            assert counters["codegen"]["fxgraph_cache_miss"] == (1 if i == 0 else 0)
            assert counters["codegen"]["fxgraph_cache_hit"] == 0

            # A second call should hit. (Reset here to force compilation).
            counters.clear()
            self.reset()
            res2 = compiled_fn(a, b)
            assert counters["codegen"]["fxgraph_cache_miss"] == 0
            assert counters["codegen"]["fxgraph_cache_hit"] > 0

            assertEqual(res1, res2)
            del a, b, res1, res2

    @parametrize("device", (GPU_TYPE, "cpu"))
    @parametrize("dtype", (torch.float32, torch.bfloat16))
    def test_cache_load_with_guards_static_bounds(self, device, dtype):
        """
        Test caching the same graph, but under conditions that introduce guards
        for static bounds.
        """
        _skip_without_gpu(device)

        # See lowering; for all of the pooling operators, we always guard and
        # make the height/width static.
        def fn(x):
            return torch.nn.functional.adaptive_avg_pool2d(x, [5, 7])

        compiled_fn = kiln.compile(fn, dynamic=True)

        # Iterate over different input shapes. Each new shape should cause
        # a cache miss.
        # kiln: its adaptive_avg_pool2d keeps height and width symbolic (no guard), so
        # the graph compiled for the first shape serves the others: only the first call
        # misses, later shapes run the compiled graph without a lookup; after each reset
        # the lookup hits.
        shapes = ((1, 64, 8, 9), (1, 64, 9, 10), (1, 64, 10, 11))
        for i, shape in enumerate(shapes):
            x = torch.rand(shape, device=device, dtype=dtype)

            # AVOID a dynamo reset here. For each cache hit, we expect guards
            # to have been added that will be violated with each new shape.
            # We should see a recompile (and cache miss) each time.
            counters.clear()
            res1 = compiled_fn(x)
            assert counters["codegen"]["fxgraph_cache_miss"] == (1 if i == 0 else 0)
            assert counters["codegen"]["fxgraph_cache_hit"] == 0
            assertEqual(res1, fn(x))

            # A second call should hit.
            counters.clear()
            self.reset()
            res2 = compiled_fn(x)
            assert counters["codegen"]["fxgraph_cache_miss"] == 0
            assert counters["codegen"]["fxgraph_cache_hit"] > 0

            assertEqual(res1, res2)

    @parametrize("device", (GPU_TYPE, "cpu"))
    def test_constant_handling(self, device):
        """
        Test that different constants are recognized correctly.
        """
        _skip_without_gpu(device)

        def fn1(x):
            return x + torch.tensor(list(range(0, 12)), device=device)

        def fn2(x):
            return x + torch.tensor(list(range(1, 13)), device=device)

        a = torch.rand(12, device=device)

        compiled_fn1 = kiln.compile(fn1)
        compiled_fn2 = kiln.compile(fn2)

        # A call to fn1 should miss in the cache.
        assertEqual(fn1(a), compiled_fn1(a))
        assert counters["codegen"]["fxgraph_cache_miss"] == 1
        assert counters["codegen"]["fxgraph_cache_hit"] == 0

        # A call to fn2 should also miss (the constant is different)
        assertEqual(fn2(a), compiled_fn2(a))
        assert counters["codegen"]["fxgraph_cache_miss"] == 2
        assert counters["codegen"]["fxgraph_cache_hit"] == 0

    def test_generated_kernel_count(self):
        """
        Test that we bump the generated_kernel_count metric on a cache hit.
        """

        def fn(x, y):
            return (x * y + y,)

        a = torch.rand(5, 5)
        b = torch.rand(5, 5)

        compiled_fn = kiln.compile(fn)

        metrics.reset()
        assert metrics.generated_kernel_count == 0

        # Verify the "miss" case.
        assertEqual(fn(a, b), compiled_fn(a, b))
        assert counters["codegen"]["fxgraph_cache_hit"] == 0
        assert metrics.generated_kernel_count == 1

        # Verify the "hit" case
        self.reset()
        assertEqual(fn(a, b), compiled_fn(a, b))
        assert counters["codegen"]["fxgraph_cache_hit"] == 1
        assert metrics.generated_kernel_count == 2

    def test_cache_clear(self):
        """
        Test clearing the cache.
        """

        def fn(x, y):
            return (x * y,)

        a = torch.rand(5, 5)
        b = torch.rand(5, 5)

        compiled_fn = kiln.compile(fn)

        # A first call should miss in the cache.
        assertEqual(fn(a, b), compiled_fn(a, b))
        assert counters["codegen"]["fxgraph_cache_miss"] == 1
        assert counters["codegen"]["fxgraph_cache_hit"] == 0

        # A second call should hit.
        counters.clear()
        self.reset()
        assertEqual(fn(a, b), compiled_fn(a, b))
        assert counters["codegen"]["fxgraph_cache_miss"] == 0
        assert counters["codegen"]["fxgraph_cache_hit"] == 1

        # Clear the cache; now we should miss.
        counters.clear()
        self.reset()
        FxGraphCache.clear()
        assertEqual(fn(a, b), compiled_fn(a, b))
        assert counters["codegen"]["fxgraph_cache_miss"] == 1
        assert counters["codegen"]["fxgraph_cache_hit"] == 0

    @pytest.mark.xfail(strict=True, reason="kiln does not capture nested tensors (the frame "
                       "runs eagerly, so no graph reaches the FX graph cache)")
    def test_cache_with_nt(self):
        def gen_nt(r):
            values = torch.randn(r, 16)
            offsets = torch.tensor([0, 2, 3, 6, 13, r])
            return torch.nested.nested_tensor_from_jagged(values, offsets)

        def fn(nt):
            if nt.values().size(0) % 16 == 0:
                return nt.sin()
            return nt.cos()

        inp1 = gen_nt(19)
        inp2 = gen_nt(20)

        counters.clear()
        kiln.compile(fn)(inp1)
        kiln.compile(fn)(inp2)
        assert counters["codegen"]["fxgraph_cache_miss"] == 1
        assert counters["codegen"]["fxgraph_cache_hit"] == 0

        self.reset()
        counters.clear()
        kiln.compile(fn)(inp1)
        kiln.compile(fn)(inp2)
        assert counters["codegen"]["fxgraph_cache_miss"] == 0
        assert counters["codegen"]["fxgraph_cache_hit"] == 1

    def test_cache_with_symint_non_arg_guard(self):
        def fn(x, ref_id):
            self_id = 22
            if self_id == ref_id:
                x = torch.mul(x, 1.0)
            else:
                x = torch.mul(x, 0)
            return x

        x = torch.ones(2)

        counters.clear()
        kiln.compile(fn, fullgraph=True, dynamic=True)(x, 2)
        assert counters["codegen"]["fxgraph_cache_miss"] == 1
        assert counters["codegen"]["fxgraph_cache_hit"] == 0

        self.reset()
        counters.clear()
        kiln.compile(fn, fullgraph=True, dynamic=True)(x, 2)
        assert counters["codegen"]["fxgraph_cache_miss"] == 0
        assert counters["codegen"]["fxgraph_cache_hit"] == 1

    def test_cache_guard(self):
        def f(x, val):
            if val > 5:
                return x.sin()
            else:
                return x.cos()

        x = torch.ones(2)
        a = kiln.compile(f, dynamic=True)(x, 6)
        assert counters["codegen"]["fxgraph_cache_miss"] == 1
        assert counters["codegen"]["fxgraph_cache_hit"] == 0

        self.reset()
        counters.clear()
        b = kiln.compile(f, dynamic=True)(x, 4)
        assert counters["codegen"]["fxgraph_cache_miss"] == 1
        assert counters["codegen"]["fxgraph_cache_hit"] == 0

        assert not torch.equal(a, b)


class TestFxGraphCacheHashing:
    def test_tensor_constants(self):
        """
        Test the hashing of tensor constants.
        """
        data = FxGraphCachePickler.dumps(torch.tensor(list(range(9))))
        assert isinstance(pickle.loads(data), TensorMetadataAndValues)

    def test_hash_kwargs(self):
        """
        Test the special handling of the kwargs when hashing, i.e.,
        ordering of the kwargs dict and any set arguments.
        """
        # Dict order of the kwargs should not affect hashes.
        details1 = FxGraphHashDetails(None, [], {"a": 0, "z": 1}, [])
        details2 = FxGraphHashDetails(None, [], {"z": 1, "a": 0}, [])
        assert FxGraphCachePickler.dumps(details1) == FxGraphCachePickler.dumps(details2)

        # Different kwarg values should affect hashes.
        details1 = FxGraphHashDetails(None, [], {"a": 0}, [])
        details2 = FxGraphHashDetails(None, [], {"a": 1}, [])
        assert FxGraphCachePickler.dumps(details1) != FxGraphCachePickler.dumps(details2)

        # Set order should not affect hashes. Sets are unordered, but
        # sorting and creating a new set seems to change the order.
        set1 = {"a", "b", "c", "d", "e", "f", "g"}
        set2 = set(sorted(set1))  # noqa: C414
        details1 = FxGraphHashDetails(None, [], {"a": set1}, [])
        details2 = FxGraphHashDetails(None, [], {"a": set2}, [])
        assert FxGraphCachePickler.dumps(details1) == FxGraphCachePickler.dumps(details2)

        # But different set contents should affect hashes.
        details1 = FxGraphHashDetails(None, [], {"a": {1, 2, 3}}, [])
        details2 = FxGraphHashDetails(None, [], {"a": {1, 2}}, [])
        assert FxGraphCachePickler.dumps(details1) != FxGraphCachePickler.dumps(details2)

    def test_hash_config_changes(self):
        """
        Test that different config settings affect hashes.
        """
        with config.patch({"cpp_parallel_threshold": 32768}):
            details1 = FxGraphHashDetails(None, [], {}, [])
            details2 = FxGraphHashDetails(None, [], {}, [])

        with config.patch({"cpp_parallel_threshold": 1}):
            details3 = FxGraphHashDetails(None, [], {}, [])

        assert FxGraphCachePickler.dumps(details1) == FxGraphCachePickler.dumps(details2)
        assert FxGraphCachePickler.dumps(details1) != FxGraphCachePickler.dumps(details3)

    def test_cuda_compile_command(self):
        cmd_no_extra_args: str = cuda_compile_command(["abc.cu", "def.cu"], "output", "so")
        assert "nvcc " in cmd_no_extra_args, cmd_no_extra_args
        assert "abc.cu" in cmd_no_extra_args, cmd_no_extra_args
        assert "def.cu" in cmd_no_extra_args, cmd_no_extra_args
        assert "output" in cmd_no_extra_args, cmd_no_extra_args
        cmd_extra_args: str = cuda_compile_command(
            ["abc.cu", "def.cu"], "output", "so", ["-Wwhatever", "-nothing"]
        )
        assert "nvcc " in cmd_extra_args, cmd_extra_args
        assert " -Wwhatever" in cmd_extra_args, cmd_extra_args
        assert " -nothing" in cmd_extra_args, cmd_extra_args
        assert "abc.cu" in cmd_extra_args, cmd_extra_args
        assert "def.cu" in cmd_extra_args, cmd_extra_args
        assert "output " in cmd_extra_args, cmd_extra_args
        with patch("subprocess.check_output") as check_output_mock:
            CUDACodeCache.compile("test123.cu", "so", ["-Wsomething"])
            check_output_mock.assert_called()
            cmd_parts: list[str] = check_output_mock.call_args[0][0]
            assert cmd_parts[0] == "nvcc", cmd_parts
            assert "-Wsomething" in cmd_parts, cmd_parts
            assert "-DNDEBUG" in cmd_parts, cmd_parts


class TestUtils(unittest.TestCase):
    @config.patch({"fx_graph_remote_cache": False})
    def test_fresh_inductor_cache(self):
        def fn(x, y):
            return x + y

        a = torch.rand(10)
        b = torch.rand(10)

        with fresh_cache():
            self.assertEqual(len(PyCodeCache.cache.keys()), 0)
            res1 = kiln.compile(fn)(a, b)
            cache_dir1 = cache_dir()

        kiln.reset()
        with fresh_cache():
            self.assertEqual(len(PyCodeCache.cache.keys()), 0)
            res2 = kiln.compile(fn)(a, b)
            cache_dir2 = cache_dir()

        assertEqual(res1, res2)
        self.assertNotEqual(cache_dir1, cache_dir2)
