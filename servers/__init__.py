"""Local OpenAI-compatible servers for the tests and the bench, never used by a run: a scripted fake
(fake_mllm.py) and a simulated MLLM of known accuracy that answers from gold (simulated_mllm.py)."""
