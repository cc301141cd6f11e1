"""Weight-only quantization: quantized Linear layers (a module swap), compressed-tensors checkpoints read and
written with the `compressed-tensors` library, and `stepaudio quantize`.

Only `linear` is torch-only; the rest imports `compressed_tensors` (the `quant` extra), so nothing here is
imported by `import stepaudio`.
"""
