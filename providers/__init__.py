"""engineroom's built-in execution providers (each found by the core through its entry point only)."""
