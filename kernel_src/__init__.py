"""HIP kernel sources (package data): found at run time with importlib.resources."""
