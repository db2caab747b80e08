"""The embedding inference server: FastAPI over ONNX Runtime (or PyTorch as a baseline).

Imports nothing from embench or Airflow; embench imports this package's runtime so that the
parity gate checks exactly the code that serves."""

__version__ = "0.1.0"
