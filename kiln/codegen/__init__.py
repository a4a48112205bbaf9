"""kiln's code generator (backend "kiln", issue 6): aten graphs → decompositions to a core
set → loop-level IR → fused kernels (C++ on CPU, Triton on GPU) → a Python wrapper. See
docs/roadmap.md for what exists so far."""
