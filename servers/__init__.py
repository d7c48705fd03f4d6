"""Local OpenAI-compatible servers, never imported by the method: a scripted fake for the tests
(fake_mllm.py), a simulated MLLM of known accuracy that answers from gold (simulated_mllm.py, with
simulated_writer.py for synthesis) for the tests, the bench and the demo, and the demo's launcher
(demo.py: `make demo`)."""
