"""OpenCLExecutionProvider over pyopencl (being written)."""
