"""Stage 3 of TinyLLM: the student (torch / ONNX / GGUF) against its teachers."""
