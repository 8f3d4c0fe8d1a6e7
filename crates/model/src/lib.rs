//! Model stage: Llama-family architectures, checkpoint loading (safetensors, GGUF) and adapter injection.
