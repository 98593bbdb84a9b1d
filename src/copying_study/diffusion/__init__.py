"""Diffusion models: loading (local folder / Hugging Face cache / the tiny in-code model), prompt encoding and
text-embedding noise (``models``), and the finetuning loop (``train``). Sampling and the copy guard live in
``sample`` and ``guard``."""
