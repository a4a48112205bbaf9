"""kiln's code generator (backend "kiln", issue 6): aten graphs → decompositions to a core
set → loop-level IR → fused kernels (C++ on CPU, Triton on GPU) → a Python wrapper. See
docs/roadmap.md for what exists so far. CUDA C++ sources are built with nvcc by
cuda_compiler.py (``cuda_compile_command``, ``CUDACodeCache``)."""

from kiln.codegen.async_compile import AsyncCompile
from kiln.codegen.cuda_compiler import CUDACodeCache, cuda_compile_command

__all__ = ["AsyncCompile", "CUDACodeCache", "cuda_compile_command"]
