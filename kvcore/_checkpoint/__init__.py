"""Reading a checkpoint: safetensors headers, tensors, the quantization config. No nn.Module here."""
