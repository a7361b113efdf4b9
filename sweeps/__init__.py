"""Shipped sweep files (package data): found at run time with importlib.resources."""
