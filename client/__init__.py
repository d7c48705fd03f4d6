"""The parts of the MLLM client (llm.py): the answer cache file and structured output (JSON schema checks)."""
