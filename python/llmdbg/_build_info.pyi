# Generated at build time by cpp/bindings/CMakeLists.txt and installed next to _core.
TORCH_VERSION: str
TORCH_CUDA_VERSION: str | None
LLMDBG_VERSION: str
