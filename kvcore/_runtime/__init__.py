"""What a kernel computes with the scales: quantize and dequantize a KV cache."""
