"""Stage 1 of TinyLLM: data -> teacher rationales -> multi-task student -> MLflow run."""
