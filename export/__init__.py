"""Stage 2 of TinyLLM: the trained student as ONNX and GGUF, each checked against torch."""
