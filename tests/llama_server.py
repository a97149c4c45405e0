"""llama-cpp-python's OpenAI-compatible server, loading its model with llama.cpp's extra buffer types
on or off like the engine (``python -m tests.llama_server true|false <server arguments>``)."""

from __future__ import annotations

import sys

from cascade.engines.llamacpp import extra_buffer_types

if __name__ == "__main__":
    enabled = sys.argv.pop(1) == "true"
    from llama_cpp.server.__main__ import main

    with extra_buffer_types(enabled):
        main()
