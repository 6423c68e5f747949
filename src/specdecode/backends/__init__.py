"""Model adapters: each exposes one framework's models as a `specdecode.protocol.CausalLM`.

- `hf.HFModel`: transformers (decoder-only and encoder-decoder; CPU and GPU; bf16, fp16, fp32).
- `llamacpp.LlamaCppModel`: a GGUF file on llama.cpp's own kernels (CPU; the GGUF's quantisation).

Adding a backend is one file here with a class implementing the protocol, plus its name in
`specdecode.models.load_model`.
"""
