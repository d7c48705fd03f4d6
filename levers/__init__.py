"""Levers beyond the paper that refineg.py uses by default; the method reads and runs without them."""
