"""``python -m onnxprune.cli``: the ``onnxprune`` command."""

from onnxprune.cli import main

main()
