"""``python -m onnxprune``: the ``onnxprune`` command."""

from onnxprune.cli import main

main()
